"""Region context modules: self-attention and SASE (self-attention + squeeze-excitation)."""

from __future__ import annotations

import torch
from torch import nn

from ..masking import masked_mean

ATTENTION_HEADS = 8  # heads of the region self-attention (the embedding width must divide)


class SelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over regions with a key-padding mask, residual.

    The attention branch is scaled per channel (LayerScale, initialised at 0.1) so that the
    block starts close to the identity and region identity survives early hard-negative training.
    """

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        return x + self.scale * out


class SqueezeExcitation(nn.Module):
    """Channel gating from the masked mean over valid regions (padding never enters the squeeze)."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.gate = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        squeezed = masked_mean(x, mask)  # (B, D)
        return x * self.gate(squeezed).unsqueeze(1)  # (B, R, D)


class SASE(nn.Module):
    """SASE: masked multi-head self-attention over regions, then squeeze-and-excitation."""

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS):
        super().__init__()
        self.attention = SelfAttentionBlock(dim, heads)
        self.excitation = SqueezeExcitation(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.excitation(self.attention(x, mask), mask)
