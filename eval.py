"""Evaluate a checkpoint or saved score matrices with the published VSE∞/CHAN protocol.

    python eval.py --model_path runs/f30k_asdg/model_best.pth --data_path data/f30k
    python eval.py --model_path runs/coco_asdg/model_best.pth --data_path data/coco --fold5
    python eval.py --results a.npy b.npy [--fold5]        # ensemble: mean of the score matrices

The split defaults to COCO's testall (5K) when the data folder has one, else test (F30K 1K).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

from lib.checkpoint import atomic_write, load_checkpoint, load_weights
from lib.config import dataset_kind, saved_model_config
from lib.data import SPLITS, Vocabulary, build_tokenizer, dataset_name, eval_loaders
from lib.environment import describe_environment
from lib.errors import DataError, UserError, user_message
from lib.evaluation import (
    encode_split,
    fold_metrics,
    format_metrics,
    recall_metrics,
    score_matrix,
    score_split,
)
from lib.evaluation.cxc import cxc_metrics, load_cxc
from lib.models import build_model
from lib.precision import PRECISIONS, resolve, resolve_device

DEFAULT_SPLIT = {"coco": "testall", "f30k": "test"}
FOLD_IMAGES = 1000  # COCO 1K protocol: --fold5 cuts the 5K matrix into folds of this size


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_argument_group("what to evaluate (one of)")
    src.add_argument("--model_path", help="checkpoint (model_best.pth or checkpoint.pth)")
    src.add_argument("--results", nargs="+", help="saved score files (.npy) to evaluate/ensemble")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("f30k", "coco", "toy"),
                   help="sets the default split (f30k/toy: test, coco: testall); without it, "
                   "testall when the data folder has one, else test")
    g.add_argument("--data_path", help="dataset folder holding precomp/ (default: the training "
                   "data_path stored in the checkpoint)")
    g.add_argument("--split", choices=SPLITS, help="split to evaluate (default: see --dataset)")
    g.add_argument("--batch_size", type=int, default=128, help="encoding batch size")
    g.add_argument("--workers", type=int, default=2, help="data loader workers")
    g = p.add_argument_group("protocol and output")
    g.add_argument("--fold5", action="store_true",
                   help="COCO 1K: mean over 5 folds of 1,000 images (default: whole split)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="precision of encoding and scoring (see docs/PERFORMANCE.md)")
    g.add_argument("--device", help="cuda | cpu (default: cuda when available)")
    g.add_argument("--save_results", help="write {'npts': N_img, 'sims': (N_img, N_cap)} here "
                   "(a pickled dict, as VSE∞ writes: load only results files you trust)")
    g.add_argument("--cxc", metavar="FOLDER",
                   help="also report Crisscrossed Captions recalls (COCO 5K testall) from this "
                   "annotation folder (testall_ids.txt, testall_capids.txt, cxc_it.json, "
                   "cxc_i2i.json, cxc_t2t.json); image-image and caption-caption recalls need "
                   "a global-coding (vse) model")
    g.add_argument("--evaluate_cxc", action="store_true",
                   help="VSE∞'s name: --cxc <data_path>/cxc_annots")
    g.add_argument("--metrics_out", help="write the metrics as JSON here")
    g.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def load_results(paths: list[str]) -> np.ndarray:
    """Mean score matrix of saved results (an ensemble when several).

    A file holds what ``--save_results`` writes (``{"npts": N_img, "sims": (N_img, N_cap)}``,
    the format of VSE∞ and CHAN) or a plain ``(N_img, N_cap)`` float array saved with
    ``np.save``.
    """
    matrices = []
    for path in paths:
        sims = _read_score_matrix(Path(path))
        if matrices and sims.shape != matrices[0].shape:
            raise DataError(f"{path}: shape {sims.shape} differs from {paths[0]}'s "
                            f"{matrices[0].shape}; an ensemble needs the same split")
        matrices.append(sims)
    return np.mean(matrices, axis=0)


def _read_score_matrix(path: Path) -> np.ndarray:
    expected = ("expected a .npy file written by eval.py --save_results (a dict with 'npts' and "
                "'sims') or a plain (N_img, N_cap) score matrix")
    try:
        with path.open("rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise DataError(f"{path}: not a .npy file; {expected}")
        saved = np.load(path, allow_pickle=True)
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err}); {expected}") from None
    except (ValueError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"{path}: truncated or unreadable ({err}); {expected}") from None
    if saved.dtype == object and saved.shape == ():
        saved = saved.item()
        if not isinstance(saved, dict) or not {"npts", "sims"} <= set(saved):
            raise DataError(f"{path}: holds a {type(saved).__name__} without 'npts' and 'sims'; "
                            f"{expected}")
        sims, npts = np.asarray(saved["sims"], dtype=np.float32), int(saved["npts"])
    else:
        sims = np.asarray(saved, dtype=np.float32)
        npts = sims.shape[0] if sims.ndim == 2 else -1
    if sims.ndim != 2 or sims.shape[0] != npts:
        raise DataError(f"{path}: scores of shape {sims.shape} (npts {npts}); {expected}")
    return sims


def default_split(data_path: str, dataset: str | None, trained_on: str = "") -> str:
    """The split of the published protocol: COCO 5K ``testall``, else ``test``.

    ``--dataset`` decides when given; otherwise a folder with a ``testall`` split is COCO, and
    so is any folder when the checkpoint was trained on COCO (a missing ``testall`` is then an
    error, not a silent 1K evaluation on ``test``).
    """
    if dataset:
        return DEFAULT_SPLIT.get(dataset, "test")
    has_testall = (Path(data_path) / "precomp" / "testall_caps.txt").is_file()  # any layout
    return "testall" if has_testall or trained_on.removesuffix("_precomp") == "coco" else "test"


def load_model(model_path: str, device: torch.device):
    """The model of a checkpoint (its model config and vocabulary are stored inside), that
    config, the training run's flags (data location, tokenizer settings) and the vocabulary.
    No pretrained file (BERT weights, GloVe, ``--backbone_path``) is read: the checkpoint's
    weights replace them."""
    ckpt = load_checkpoint(model_path)
    cfg = saved_model_config(ckpt, model_path)
    vocab = Vocabulary(ckpt["vocab"]) if ckpt.get("vocab") else None
    model = build_model(cfg, len(vocab) if vocab else None, pretrained=False)
    load_weights(model, ckpt["model"], model_path)
    return model.to(device), cfg, Namespace(**ckpt["config"]), vocab


def cxc_folder(args, data_path: str | None) -> Path | None:
    """The CxC annotation folder asked for, if any."""
    if args.cxc:
        return Path(args.cxc)
    if args.evaluate_cxc:
        if not data_path:
            raise DataError("--evaluate_cxc reads <data_path>/cxc_annots: give --data_path or "
                            "--cxc FOLDER")
        return Path(data_path) / "cxc_annots"
    return None


def score_checkpoint(args, device: torch.device):
    """Scores of a checkpoint on its split, the CxC annotations when asked for (read before any
    scoring), and one vector per image and caption when the model has a global embedding."""
    model, cfg, flags, vocab = load_model(args.model_path, device)
    data_path = args.data_path or flags.data_path
    if args.dataset:
        dataset_name(data_path, args.dataset)  # a contradicting folder name is an error
    split = args.split or default_split(data_path, args.dataset, flags.data_name)
    images, captions, opened = eval_loaders(data_path, split, cfg.img_dim,
                                            build_tokenizer(flags, vocab), args.batch_size,
                                            args.workers, dataset_kind(cfg), cfg.image_size)
    if args.fold5 and opened.num_images != 5 * FOLD_IMAGES:  # refuse before any scoring
        raise DataError(f"--fold5 needs the 5 x {FOLD_IMAGES} = {5 * FOLD_IMAGES} images of COCO "
                        f"testall, but {data_path} split {split} has {opened.num_images}")
    folder = cxc_folder(args, data_path)
    annots = load_cxc(folder, opened.num_images, opened.num_captions) if folder else None
    precision = resolve(args.precision, device)
    start = time.perf_counter()
    vectors = None
    if annots is not None and cfg.coding_type == "global":
        encoded = encode_split(model, images, captions, device, precision, not args.no_progress)
        sims = score_matrix(model.sim, encoded.images, encoded.img_lens, encoded.captions,
                            precision)
        vectors = (encoded.images[:, 0], encoded.captions.data)  # one unit vector each
    else:
        sims = score_split(model, images, captions, device, precision, not args.no_progress)
    logging.info("%s, split %s: %d images x %d captions scored in %.1f s (%s, %s)", data_path,
                 split, *sims.shape, time.perf_counter() - start, device, precision)
    return sims, annots, vectors  # the scores stay on the device: ranking runs there


def format_cxc(metrics: dict) -> str:
    names = dict.fromkeys(key.rsplit("_", 1)[0] for key in metrics)  # cxc_i2t, ... in order
    return "\n".join(f"CxC {name.removeprefix('cxc_')}: " + " ".join(
        f"{metrics[f'{name}_r{k}']:.1f}" for k in (1, 5, 10)) + " (R@1, R@5, R@10)"
        for name in names)


def main(argv: list[str] | None = None) -> dict:
    args = eval_parser().parse_args(argv)
    if bool(args.model_path) == bool(args.results):
        raise SystemExit("error: give exactly one of --model_path or --results")
    device = resolve_device(args.device)
    if args.results:
        sims = torch.from_numpy(load_results(args.results)).to(device)
        folder, vectors = cxc_folder(args, args.data_path), None
        annots = load_cxc(folder, *sims.shape) if folder else None
    else:
        sims, annots, vectors = score_checkpoint(args, device)
    metrics = fold_metrics(sims, FOLD_IMAGES) if args.fold5 else recall_metrics(sims)
    print(("5-fold mean (1K)\n" if args.fold5 else "") + format_metrics(metrics))
    if annots is not None:
        crisscrossed = cxc_metrics(sims, annots, *(vectors or (None, None)))
        print(format_cxc(crisscrossed))
        metrics = {**metrics, **crisscrossed}
    if args.save_results:
        results = {"npts": sims.shape[0], "sims": sims.cpu().numpy()}
        atomic_write(args.save_results, lambda f: np.save(f, results))
        print(f"score matrix written to {args.save_results}")
    if args.metrics_out:
        record = {**metrics, "environment": describe_environment(device)}
        text = (json.dumps(record, indent=2) + "\n").encode()
        atomic_write(args.metrics_out, lambda f: f.write(text))
        print(f"metrics written to {args.metrics_out}")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except (UserError, FileNotFoundError) as err:
        sys.exit(f"error: {user_message(err)}")
