"""The reference scoring of padded embeddings, and its public form :func:`pairwise_sims`."""

from __future__ import annotations

import torch

from ..masking import length_mask
from .codings import CODINGS, Coding, coding_class
from .poolings import Pooling, pooling_class

DEFAULT_CHUNK_ELEMENTS = 2**25  # bounds the (images, captions, R, L) block held at once


def pairwise_sims(img_emb: torch.Tensor, img_lens: torch.Tensor, cap_emb: torch.Tensor,
                  cap_lens: torch.Tensor, coding: str = "VHACoding",
                  pooling: str = "MeanPooling", alpha: float = 0.1, belta: float = 0.1, *,
                  max_elements: int = DEFAULT_CHUNK_ELEMENTS,
                  **learned: torch.Tensor | float) -> torch.Tensor:
    """Score every image against every caption.

    Args:
        img_emb: ``(N_img, R, D)`` region embeddings, padded; img_lens: ``(N_img,)`` valid counts.
        cap_emb: ``(N_cap, L, D)`` token embeddings, padded; cap_lens: ``(N_cap,)`` valid counts.
        coding, pooling: registered names (:data:`CODINGS`, :data:`POOLINGS`); see the package
            docstring. alpha: VSA softmax temperature; belta: LSE/Softmax pooling temperature.
        max_elements: the caption dimension is processed in chunks so that one
            ``(N_img, chunk, R, L)`` block holds at most this many elements.
        learned: values of a coding's learnable scalars, e.g. ``mix_logit`` (MixedCoding's
            weight, as a logit; a tensor to learn it). ``max_elements`` and these are
            keyword-only, so no value meant for one is silently taken for another.

    Returns:
        ``(N_img, N_cap)`` scores. Differentiable (training uses it on a batch).
    """
    coding_cls, pooling_cls = coding_class(coding), pooling_class(pooling)
    _check(img_emb, cap_emb, learned)
    return padded_scores(coding_cls(alpha, **learned), pooling_cls(belta), img_emb, img_lens,
                         cap_emb, cap_lens, max_elements)


def _check(img_emb, cap_emb, learned):
    if img_emb.dim() != 3 or cap_emb.dim() != 3 or img_emb.shape[-1] != cap_emb.shape[-1]:
        raise ValueError(f"expected (N_img, R, D) and (N_cap, L, D) embeddings, got "
                         f"{tuple(img_emb.shape)} and {tuple(cap_emb.shape)}")
    unknown = set(learned) - {key for cls in CODINGS.values() for key in cls.learnable}
    if unknown:
        raise TypeError(f"pairwise_sims() got unexpected keyword arguments {sorted(unknown)}")


def padded_scores(coding: Coding, pooling: Pooling, img_emb: torch.Tensor,
                  img_lens: torch.Tensor, cap_emb: torch.Tensor, cap_lens: torch.Tensor,
                  max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """:func:`pairwise_sims` for a configured coding and pooling: ``(N_img, N_cap)`` scores,
    computed on chunks of captions each trimmed to its longest caption.

    When one chunk holds every caption (a training batch) nothing is trimmed: trimming needs the
    longest length on the host (a device sync) and gives each batch its own shape, while the
    masks already keep padding out of every score.
    """
    img_lens, cap_lens = img_lens.to(img_emb.device), cap_lens.to(cap_emb.device)
    n_img, n_reg = img_emb.shape[:2]
    region_mask = length_mask(img_lens, n_reg)  # (N_img, R)
    per_caption = max(1, n_img * n_reg * cap_emb.shape[1])
    step = max(1, max_elements // per_caption)
    if step >= cap_emb.shape[0]:
        token_mask = length_mask(cap_lens, cap_emb.shape[1])  # (N_cap, L)
        return coding.padded_scores(img_emb, region_mask, cap_emb, token_mask, pooling)
    blocks = []
    for start in range(0, cap_emb.shape[0], step):
        lens = cap_lens[start:start + step]
        caps = cap_emb[start:start + step, : int(lens.max())]  # trim padding shared by the chunk
        token_mask = length_mask(lens, caps.shape[1])  # (chunk, L)
        blocks.append(coding.padded_scores(img_emb, region_mask, caps, token_mask, pooling))
    return torch.cat(blocks, dim=1)
