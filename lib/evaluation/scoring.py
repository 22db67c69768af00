"""Encode a split once and score every image against every caption in bounded memory.

Layout: image regions stay padded ``(N_img, R, D)`` (R <= 36); caption tokens are *packed*
``(T, D)`` with per-caption offsets, so no memory or FLOPs go to padding. Scores are computed in
blocks sized here from the free memory of the device; what a block computes is the coding's
business (``lib/similarity/codings.py``):

* a coding with a packed kernel (VHA, the published setting, and global) scores a block of
  images against the packed tokens of a contiguous caption range; for VHA the FLOPs are those of
  the plain product;
* any other coding (THA, VSA, mixed) is scored by its padded reference on ``(images, captions,
  R, L)`` blocks over captions sorted by length, so each block is padded only to its own
  longest caption.

Scores are float32 in every precision: ``bf16`` halves the storage of the embeddings, but the
products of bfloat16 inputs are kept in float32 (``lib.precision.float32_products``), since
bfloat16 scores would tie far more often than real-valued ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..errors import EvaluationError
from ..masking import length_mask
from ..precision import autocast, matmul_mode, storage_dtype, with_index
from ..similarity import padded_scores

CPU_BLOCK_ELEMENTS = 2**24  # elements of the largest intermediate on CPU (~64 MB of float32)
MIN_BLOCK_ELEMENTS = 2**16  # the smallest blocks an out-of-memory retry goes down to
log = logging.getLogger(__name__)


@dataclass
class PackedSequences:
    """Variable-length sequences stored back to back: ``data[offsets[i]:offsets[i]+lengths[i]]``."""

    data: torch.Tensor  # (T, D)
    lengths: torch.Tensor  # (N,)

    def __post_init__(self):
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths  # (N,) start of each

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_padded(cls, padded: torch.Tensor, lengths: torch.Tensor) -> PackedSequences:
        mask = length_mask(lengths.to(padded.device), padded.shape[1])
        return cls(padded[mask], lengths.to(padded.device))

    def to_padded(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather sequences ``indices`` into ``(n, L_max, D)`` zero-padded, plus lengths."""
        lengths = self.lengths[indices]
        mask = length_mask(lengths)  # (n, L_max)
        starts = self.offsets[indices]
        rows = starts[:, None] + torch.arange(mask.shape[1], device=mask.device)
        out = self.data.new_zeros(*mask.shape, self.data.shape[1])
        out[mask] = self.data[rows[mask]]
        return out, lengths


@dataclass
class EncodedSplit:
    images: torch.Tensor  # (N_img, R, D)
    img_lens: torch.Tensor  # (N_img,)
    captions: PackedSequences  # (T, D) tokens of N_cap captions


@torch.no_grad()
def encode_split(model, image_loader, caption_loader, device: torch.device,
                 precision: str = "fp32", progress: bool = True) -> EncodedSplit:
    """Run both encoders once over a split; embeddings are stored in the scoring precision."""
    model.eval()
    dtype = storage_dtype(precision)
    images, img_lens, tokens, cap_lens = [], [], [], []
    with autocast(precision, device):
        for batch in tqdm(image_loader, desc="encode images", disable=not progress, leave=False):
            batch = batch.to(device, non_blocking=True)
            emb, lens = model.encode_images(batch.images, batch.img_lens)
            images.append(emb.to(dtype))
            img_lens.append(lens)
        for batch in tqdm(caption_loader, desc="encode captions", disable=not progress,
                          leave=False):
            batch = batch.to(device, non_blocking=True)
            emb, lens = model.encode_captions(batch.captions, batch.cap_lens)
            packed = PackedSequences.from_padded(emb.to(dtype), lens)
            tokens.append(packed.data)
            cap_lens.append(lens)
    width = max(x.shape[1] for x in images)
    images = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1])) for x in images])
    return EncodedSplit(images, torch.cat(img_lens),
                        PackedSequences(torch.cat(tokens), torch.cat(cap_lens)))


def block_budget(device: torch.device, fraction: float = 0.25) -> int:
    """How many float32 elements one scoring intermediate may hold on ``device``.

    On CUDA: ``fraction`` of the free memory, where a cap set with
    ``torch.cuda.set_per_process_memory_fraction`` counts as the card's size. ``cuda`` without
    an index means the current device.
    """
    device = with_index(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cap = torch.cuda.get_per_process_memory_fraction(device) * total
        free = min(free, cap - torch.cuda.memory_reserved(device))
        return max(2**20, int(free * fraction) // 4)
    return CPU_BLOCK_ELEMENTS


@torch.no_grad()
def score_matrix(sim, images: torch.Tensor, img_lens: torch.Tensor, captions: PackedSequences,
                 precision: str = "fp32", max_elements: int | None = None,
                 progress: bool = False) -> torch.Tensor:
    """``(N_img, N_cap)`` float32 scores of ``sim`` (a :class:`lib.similarity.Similarity`)."""
    device = images.device
    budget = max_elements or block_budget(device)
    dtype = storage_dtype(precision)
    images, captions = images.to(dtype), PackedSequences(captions.data.to(dtype), captions.lengths)
    coding, pooling = sim.coding(), sim.pooling()
    score = _packed_scores if coding.packed_scores is not None else _padded_scores
    with matmul_mode(precision):
        while True:
            try:
                return score(coding, pooling, images, img_lens, captions, budget, progress)
            except torch.OutOfMemoryError:
                budget = _smaller_budget(budget, device)


def _smaller_budget(budget: int, device: torch.device) -> int:
    """After running out of device memory: a quarter of the block size, or a clear error when
    the blocks are already at their floor (the embeddings themselves do not fit)."""
    if budget <= MIN_BLOCK_ELEMENTS:
        raise EvaluationError(f"out of memory on {device} even with blocks of {budget} "
                              f"elements; free the device or evaluate with --device cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.warning("out of memory on %s while scoring; retrying with blocks of %d elements "
                "instead of %d", device, max(MIN_BLOCK_ELEMENTS, budget // 4), budget)
    return max(MIN_BLOCK_ELEMENTS, budget // 4)


def _packed_scores(coding, pooling, images, img_lens, captions, budget, progress):
    """Blocks of ``img_step`` images x a caption range of at most ``tokens_per_block`` tokens,
    sized for a ``(images, R, tokens)`` intermediate; the image step leaves room for at least 64
    tokens (a few captions) per block."""
    n_img, n_reg, _ = images.shape
    out = torch.empty(n_img, len(captions), device=images.device)
    region_mask = length_mask(img_lens, n_reg)  # (N_img, R)
    img_step = min(n_img, max(1, budget // (n_reg * 64)))
    tokens_per_block = max(int(captions.lengths.max()), budget // (img_step * n_reg))
    ranges = _caption_ranges(captions.lengths, tokens_per_block)
    bar = tqdm(total=len(ranges) * -(-n_img // img_step), desc="scoring", disable=not progress,
               leave=False)
    for c0, c1 in ranges:
        t0 = int(captions.offsets[c0])
        lens = captions.lengths[c0:c1]
        tokens = captions.data[t0:t0 + int(lens.sum())]  # (T, D)
        for i0 in range(0, n_img, img_step):
            rows = slice(i0, i0 + img_step)
            out[rows, c0:c1] = coding.packed_scores(images[rows], region_mask[rows], tokens, lens,
                                                    pooling)
            bar.update()
    bar.close()
    return out


def _caption_ranges(lengths: torch.Tensor, max_tokens: int) -> list[tuple[int, int]]:
    """Contiguous caption ranges whose token counts stay within ``max_tokens``."""
    ends = torch.cumsum(lengths, 0).tolist()
    ranges, start, base = [], 0, 0
    for i, end in enumerate(ends):
        if end - base > max_tokens and i > start:
            ranges.append((start, i))
            start, base = i, ends[i - 1]
    ranges.append((start, len(ends)))
    return ranges


def _padded_scores(coding, pooling, images, img_lens, captions, budget, progress):
    """The coding's padded reference on blocks of captions sorted by length."""
    images = images.float()  # blocks are scored in float32 whatever the storage
    n_img, n_reg, _ = images.shape
    n_cap = len(captions)
    out = torch.empty(n_img, n_cap, device=images.device)
    # ~4 live (images, captions, R, L) intermediates in the soft coding
    budget = max(1, budget // 4)
    order = torch.argsort(captions.lengths, descending=True, stable=True)
    max_len = int(captions.lengths.max())
    img_step = min(n_img, max(1, budget // (n_reg * max_len)))
    bar = tqdm(total=n_cap, desc="scoring", disable=not progress, leave=False)
    start = 0
    while start < n_cap:
        longest = int(captions.lengths[order[start]])
        cap_step = max(1, budget // (img_step * n_reg * longest))
        idx = order[start:start + cap_step]
        caps, lens = captions.to_padded(idx)  # (n_cap, L, D)
        caps = caps.float()
        for i0 in range(0, n_img, img_step):
            rows = slice(i0, i0 + img_step)
            out[rows, idx] = padded_scores(coding, pooling, images[rows], img_lens[rows], caps,
                                           lens, max_elements=budget)
        bar.update(len(idx))
        start += len(idx)
    bar.close()
    return out
