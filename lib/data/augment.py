"""Train-time augmentation of a whole batch at once, each draw a pure function of its position.

Every random number is a hash of (seed, epoch, stream, caption index, position): a counter-based
generator, vectorised with numpy over the batch. A caption's augmentation therefore does not
depend on which batch or worker process it lands in, nor on the number of workers, and a resumed
run draws what an uninterrupted one would have drawn.

The distributions are those of the per-item generators they replace (``tokenizers.py``):
region drop keeps each region with probability ``1 - drop`` and at least one; caption
augmentation selects a word with probability ``P_SELECT`` and masks (``P_MASK``), replaces with
random tokens (``P_RANDOM``) or deletes it, all sub-tokens of a word together. The draws
themselves differ from the per-item ``torch.Generator`` streams, so the same seed gives other
augmented batches than before.
"""

from __future__ import annotations

import numpy as np

from .tokenizers import P_MASK, P_RANDOM, P_SELECT

# independent streams of draws
REGION_STREAM, WORD_STREAM, RANDOM_TOKEN_STREAM = 1, 2, 3
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that mixes every input bit into every
    output bit (arrays wrap around on overflow, which is the intended arithmetic)."""
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, stream: int, items: np.ndarray,
             positions: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1), one per broadcast element of ``items`` x ``positions``."""
    key = np.full(1, seed % 2**64, np.uint64)
    for part in (epoch, stream):
        key = _splitmix(key ^ np.uint64(part % 2**64))
    h = _splitmix(key ^ np.asarray(items, np.int64).astype(np.uint64))
    h = _splitmix(h ^ np.asarray(positions, np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def region_order(seed: int, epoch: int, captions: np.ndarray, available: np.ndarray,
                 num_regions: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """Which regions each caption's image keeps: ``(B, R)`` region indices with the kept ones
    first (in their original order) and ``(B,)`` kept counts.

    ``available (B,)`` is each image's number of real regions. A region is kept when its draw is
    at least ``drop``; the available region with the largest draw is always kept, which changes
    nothing unless every draw fell below ``drop`` (then it picks one uniformly).
    """
    slots = np.arange(num_regions)
    real = slots[None, :] < available[:, None]  # (B, R)
    if drop == 0:
        return np.broadcast_to(slots, real.shape).copy(), available.astype(np.int64)
    u = np.where(real, uniforms(seed, epoch, REGION_STREAM, captions[:, None], slots), -1.0)
    keep = u >= drop  # (B, R)
    keep[np.arange(len(captions)), u.argmax(1)] = True
    return np.argsort(~keep, axis=1, kind="stable"), keep.sum(1)


def token_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For concatenated captions of ``lengths (B,)``: each token's caption ``(T,)`` and its
    position within the caption ``(T,)``."""
    caption = np.repeat(np.arange(len(lengths)), lengths)
    return caption, np.arange(len(caption)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def augment_tokens(seed: int, epoch: int, captions: np.ndarray, ids: np.ndarray,
                   word_starts: np.ndarray, lengths: np.ndarray, mask_id: int,
                   vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Word-level augmentation of concatenated captions: returns the new ids and ``(B,)``
    lengths. One draw per word (by its number in the caption) decides its action; a random
    replacement draws one token per sub-token (by its position in the caption)."""
    caption, position = token_positions(lengths)  # (T,), (T,)
    words_before = np.concatenate([[0], np.cumsum(word_starts)])[np.cumsum(lengths) - lengths]
    word = np.cumsum(word_starts) - 1 - words_before[caption]  # (T,) word number in its caption
    u = uniforms(seed, epoch, WORD_STREAM, captions[caption], word) / P_SELECT  # < 1: selected
    mask, random = u < P_MASK, (u >= P_MASK) & (u < P_MASK + P_RANDOM)
    keep = (u >= 1) | mask | random  # the other selected words are deleted
    drawn = uniforms(seed, epoch, RANDOM_TOKEN_STREAM, captions[caption], position)
    new = np.where(mask, mask_id, np.where(random, (drawn * vocab_size).astype(np.int64), ids))
    return new[keep], np.bincount(caption[keep], minlength=len(lengths))


def wrap_and_pad(ids: np.ndarray, lengths: np.ndarray, start_id: int, end_id: int, pad_id: int,
                 max_length: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated captions -> ``(B, L)`` rows ``start w1 .. wn end pad ..`` with each caption
    cut to ``max_length`` tokens (wrapping included) and ``L`` rounded up to ``multiple`` (a few
    shapes, so compiled code is reused), plus the ``(B,)`` wrapped lengths."""
    caption, position = token_positions(lengths)
    kept = np.minimum(lengths, max_length - 2)  # (B,)
    width = -(-(int(kept.max(initial=0)) + 2) // multiple) * multiple
    rows = np.full((len(lengths), width), pad_id, np.int64)
    rows[:, 0] = start_id
    inside = position < max_length - 2
    rows[caption[inside], position[inside] + 1] = ids[inside]
    rows[np.arange(len(lengths)), kept + 1] = end_id
    return rows, kept + 2
