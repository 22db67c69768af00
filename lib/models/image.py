"""Image encoders for pre-computed region features: ``(B, R, img_dim)`` -> ``(B, R, D)``.

Every step is padding-aware: position-wise layers run on the packed valid regions only (so
BatchNorm statistics never see padding), attention uses a key-padding mask, and padded outputs are
zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masking import l2norm, length_mask
from .context import ATTENTION_HEADS, SASE, SelfAttentionBlock

IMAGE_ENCODERS = ("basic", "selfattention", "sase")


class PackedMLP(nn.Module):
    """Linear-BN-ReLU-Linear applied to valid positions only (VSE∞'s residual MLP, masked)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = self.net(x[mask])  # (N_valid, out_dim)
        out = valid.new_zeros(*mask.shape, valid.shape[-1])
        out[mask] = valid
        return out


class PrecompImageEncoder(nn.Module):
    """FC projection (+ residual MLP for ``basic``), optional context and fusion, L2 norm."""

    def __init__(self, img_dim: int, embed_size: int, enc_type: str = "basic",
                 no_imgnorm: bool = False, fusion: nn.Module | None = None,
                 heads: int = ATTENTION_HEADS):
        super().__init__()
        if enc_type not in IMAGE_ENCODERS:
            raise ValueError(f"unknown --precomp_enc_type {enc_type!r}; "
                             f"choose from {', '.join(IMAGE_ENCODERS)}")
        self.fc = nn.Linear(img_dim, embed_size)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.mlp = PackedMLP(img_dim, embed_size // 2, embed_size) if enc_type == "basic" else None
        self.fusion = fusion
        self.context = {"basic": None, "selfattention": SelfAttentionBlock,
                        "sase": SASE}[enc_type]
        if self.context is not None:
            self.context = self.context(embed_size, heads)
        self.normalize = not no_imgnorm

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = length_mask(lengths, images.shape[1])  # (B, R)
        x = self.fc(images)  # (B, R, D)
        if self.mlp is not None:
            x = x + self.mlp(images, mask)
        if self.fusion is not None:
            x = self.fusion(x, mask)
        if self.context is not None:
            x = self.context(x, mask)
        if self.normalize:
            x = l2norm(x)
        return x.masked_fill(~mask.unsqueeze(-1), 0)
