"""Crisscrossed Captions (CxC) evaluation on COCO 5K, following VSE∞'s ``eval_cxc``.

CxC adds human similarity judgements to the COCO 5K test split. The annotation folder holds:

* ``testall_ids.txt`` -- one COCO image id per caption (25,000 lines; every 5th line names the
  image of that row of the score matrix), ``testall_capids.txt`` -- one caption id per caption;
* ``cxc_it.json`` -- ``{"i2t": {image_id: [[caption_id, score], ...]}, "t2i": {caption_id:
  [[image_id, score], ...]}}``: every listed item is a positive of that query;
* ``cxc_i2i.json`` / ``cxc_t2t.json`` -- ``{id: [[id, score], ...]}``: positives are items with
  a score of at least 2.5 (images) or 3.0 (captions); a caption's other four captions of its
  image are positives too.

Inter-modal recall (i2t, t2i) uses the model's score matrix, so it works for every coding.
Intra-modal recall (i2i, t2t) needs one vector per image and caption; it is computed only for
models with a global embedding (``--coding_type global``). As in VSE∞: a query's rank is the rank
of its best-ranked positive; an inter-modal query with no positive in the split counts as a miss;
an image query without positives is skipped; the self-similarity on the diagonal is set to 0.
Ties follow the stable rule of :mod:`lib.evaluation.metrics`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError

IMAGE_THRESHOLD, TEXT_THRESHOLD = 2.5, 3.0
ROW_BLOCK = 1024
MISS = torch.iinfo(torch.long).max  # rank of a query none of whose positives is in the split


@dataclass
class CxCAnnotations:
    image_ids: list[str]  # (N_img,) one per row of the score matrix
    caption_ids: list[str]  # (N_cap,) one per column
    i2t: dict
    t2i: dict
    i2i: dict
    t2t: dict


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"CxC annotation missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CxC JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of id -> [[id, score], ...]")
    return data


def _read_ids(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DataError(f"CxC annotation missing: {path}") from None


def load_cxc(folder: str | Path, num_images: int, num_captions: int) -> CxCAnnotations:
    """Read a CxC annotation folder and check it against the evaluated split's size."""
    folder = Path(folder)
    image_lines = _read_ids(folder / "testall_ids.txt")
    caption_ids = _read_ids(folder / "testall_capids.txt")
    if len(image_lines) != num_captions or len(caption_ids) != num_captions:
        raise DataError(f"{folder}: testall_ids.txt and testall_capids.txt need one line per "
                        f"caption ({num_captions}), found {len(image_lines)} and "
                        f"{len(caption_ids)}; CxC is defined on COCO testall (5K)")
    per_image = num_captions // num_images
    it = _read_json(folder / "cxc_it.json")
    if not {"i2t", "t2i"} <= set(it):
        raise DataError(f"{folder / 'cxc_it.json'}: expected the keys 'i2t' and 't2i'")
    return CxCAnnotations(image_lines[::per_image], caption_ids, it["i2t"], it["t2i"],
                          _read_json(folder / "cxc_i2i.json"), _read_json(folder / "cxc_t2t.json"))


def best_positive_ranks(scores: torch.Tensor, positives: list[list[int]]) -> torch.Tensor:
    """Per row of ``scores (Q, M)``, the stable descending rank of its best positive column;
    :data:`MISS` for a row without positives."""
    ranks = torch.full((len(scores),), MISS, dtype=torch.long)
    columns = torch.arange(scores.shape[1], device=scores.device)
    for start in range(0, len(scores), ROW_BLOCK):
        block = scores[start:start + ROW_BLOCK]  # (n, M)
        is_pos = torch.zeros_like(block, dtype=torch.bool)
        for row, cols in enumerate(positives[start:start + ROW_BLOCK]):
            is_pos[row, cols] = True
        best = block.masked_fill(~is_pos, float("-inf")).amax(1, keepdim=True)  # (n, 1)
        # the first column holding the best positive score: ties before it rank ahead
        first = torch.where(is_pos & (block == best), columns, scores.shape[1]).amin(1,
                                                                                 keepdim=True)
        ahead = (block > best) | ((block == best) & (columns < first))
        found = is_pos.any(1).cpu()
        ranks[start:start + ROW_BLOCK][found] = ahead.sum(1).cpu()[found]
    return ranks


def _recalls(ranks: torch.Tensor) -> tuple[float, float, float]:
    return tuple(100.0 * float((ranks < k).double().mean()) for k in (1, 5, 10))


def _inter_positives(query_ids, data_ids, annot, source: str) -> list[list[int]]:
    index = {item: i for i, item in enumerate(data_ids)}
    positives = []
    for query in query_ids:
        if query not in annot:
            raise DataError(f"{source}: no entry for query id {query}")
        positives.append([index[str(p[0])] for p in annot[query] if str(p[0]) in index])
    return positives


def cxc_inter(sims: torch.Tensor, query_ids, data_ids, annot, source="cxc_it.json") -> tuple:
    """R@1/5/10 of ``sims (Q, M)`` rows (queries) against CxC inter-modal positives."""
    return _recalls(best_positive_ranks(sims, _inter_positives(query_ids, data_ids, annot,
                                                               source)))


def cxc_intra(vectors: torch.Tensor, ids: list[str], annot: dict, text: bool) -> tuple:
    """R@1/5/10 of image-image or caption-caption retrieval with one vector per item."""
    threshold = TEXT_THRESHOLD if text else IMAGE_THRESHOLD
    index = {item: i for i, item in enumerate(ids)}
    sims = vectors.float() @ vectors.float().t()  # (N, N)
    sims.fill_diagonal_(0)
    positives, keep = [], []
    for i, item in enumerate(ids):
        pos = [index[str(p[0])] for p in annot.get(item, [])
               if p[1] >= threshold and str(p[0]) in index]
        if text:  # the other captions of the same image
            group = i // 5 * 5
            pos = [j for j in range(group, group + 5) if j != i] + pos
        if pos:
            positives.append(pos)
            keep.append(i)
    return _recalls(best_positive_ranks(sims[keep], positives))


def cxc_metrics(sims: torch.Tensor, annots: CxCAnnotations,
                image_vectors: torch.Tensor | None = None,
                caption_vectors: torch.Tensor | None = None) -> dict:
    """CxC recalls as ``{"cxc_i2t_r1": ..., "cxc_t2i_r10": ...}``; i2i/t2t with vectors."""
    out = {}
    for name, matrix, queries, data, annot in (
            ("i2t", sims, annots.image_ids, annots.caption_ids, annots.i2t),
            ("t2i", sims.t(), annots.caption_ids, annots.image_ids, annots.t2i)):
        out.update(zip((f"cxc_{name}_r{k}" for k in (1, 5, 10)),
                       cxc_inter(matrix, queries, data, annot), strict=True))
    if image_vectors is not None and caption_vectors is not None:
        for name, vectors, ids, annot, text in (
                ("i2i", image_vectors, annots.image_ids, annots.i2i, False),
                ("t2t", caption_vectors, annots.caption_ids, annots.t2t, True)):
            out.update(zip((f"cxc_{name}_r{k}" for k in (1, 5, 10)),
                           cxc_intra(vectors, ids, annot, text), strict=True))
    return out
