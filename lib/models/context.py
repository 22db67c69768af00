"""Region context modules: self-attention and SASE (self-attention + squeeze-excitation).

Two SASE forms share the masked self-attention block:

- ``SASE`` (ours): ``x * gate``, gate from the masked mean of ``x``, reduction 16, biased FCs.
- ``SeedSASE`` (the seed's ``SEAttention(d, S=8)``): ``LN(x) * gate + x``, gate from the masked
  mean of ``LN(x)``, reduction 8, bias-free FCs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masking import masked_mean

ATTENTION_HEADS = 8  # heads of the region self-attention (the embedding width must divide)


class SelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over regions with a key-padding mask, residual.

    ``x + s * MHA(LN(x))``. ``layer_scale`` is the initial value of the learnable per-channel
    scale ``s`` (LayerScale): starting at 0.1 keeps the block close to the identity, so region
    identity survives early hard-negative training. ``layer_scale=None`` drops ``s`` (plain
    residual); with ``dropout=0`` that is CHAN's and the seed's ``SelfAttention``, which run
    without a padding mask where this block always masks padded keys.
    """

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, dropout: float = 0.1,
                 layer_scale: float | None = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.scale = None if layer_scale is None else nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, R, D), (B, R)
        h = self.norm(x)
        out, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)  # (B, R, D)
        return x + (out if self.scale is None else self.scale * out)


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


class SeedSqueezeExcitation(nn.Module):
    """The seed's ``SENet3D``: ``LN(x) * sigmoid(W2 relu(W1 mean_r LN(x))) + x``, no FC biases.

    The seed averages over all regions, padding included; here the mean runs over valid regions
    only, so a padded region never changes a valid one.
    """

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.norm = nn.LayerNorm(dim)
        self.gate = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                  nn.Linear(hidden, dim, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)  # (B, R, D)
        gate = self.gate(masked_mean(h, mask))  # (B, D)
        return h * gate.unsqueeze(1) + x  # (B, R, D)


class SASE(nn.Module):
    """SASE: masked multi-head self-attention over regions, then squeeze-and-excitation."""

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, dropout: float = 0.1,
                 layer_scale: float | None = 0.1, reduction: int = 16):
        super().__init__()
        self.attention = SelfAttentionBlock(dim, heads, dropout, layer_scale)
        self.excitation = SqueezeExcitation(dim, reduction)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.excitation(self.attention(x, mask), mask)


class SeedSASE(nn.Module):
    """The seed's SASE (``SEAttention(d, S=8)``): its ``SelfAttention``, then its SE.

    The defaults are the seed's block (8 heads, no dropout, plain residual, reduction 8); the
    attention keeps a key-padding mask, which the seed's call omits.
    """

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, dropout: float = 0.0,
                 layer_scale: float | None = None, reduction: int = 8):
        super().__init__()
        self.attention = SelfAttentionBlock(dim, heads, dropout, layer_scale)
        self.excitation = SeedSqueezeExcitation(dim, reduction)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.excitation(self.attention(x, mask), mask)


SASE_VARIANTS = {"ours": SASE, "seed": SeedSASE}
