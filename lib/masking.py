"""Padding masks shared by the encoders and the similarity functions."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(N,) lengths -> (N, max_len) bool mask, True at real (non-padded) positions."""
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Unit-normalise along ``dim``; an all-zero vector (padding) stays zero."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (N, K, D)`` over the positions where ``mask (N, K)`` is True: ``(N, D)``."""
    total = x.masked_fill(~mask.unsqueeze(-1), 0).sum(1)  # padding never enters, even inf/NaN
    return total / mask.sum(1, keepdim=True).clamp_min(1).to(x.dtype)
