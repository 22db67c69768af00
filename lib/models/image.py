"""Image encoders for pre-computed region features: ``(B, R, img_dim)`` -> ``(B, R, D)``.

Every step is padding-aware: position-wise layers run on the packed valid regions only (so
BatchNorm statistics never see padding), attention uses a key-padding mask, and padded outputs are
zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masking import l2norm, length_mask, masked_batch_norm
from .context import ATTENTION_HEADS, SASE_VARIANTS, SelfAttentionBlock

# basic: one FC layer (CHAN); basic_mlp: FC + residual MLP (VSE∞'s "basic")
IMAGE_ENCODERS = ("basic", "basic_mlp", "selfattention", "sase")


class PackedMLP(nn.Module):
    """Linear-BN-ReLU-Linear of VSE∞'s residual MLP, as if applied to the valid positions only:
    BatchNorm's statistics come from them (:func:`masked_batch_norm`), padded outputs are zero."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        linear, bn, relu, out = self.net
        h = relu(masked_batch_norm(bn, linear(x), mask))  # (B, R, hidden)
        return out(h).masked_fill(~mask.unsqueeze(-1), 0)  # (B, R, out_dim)


class PrecompImageEncoder(nn.Module):
    """FC projection (+ residual MLP), optional fusion and context, L2 norm.

    ``basic`` is CHAN's encoder: one FC layer (its MLP is ``nn.Identity()``); ``basic_mlp`` is
    VSE∞'s ``basic``: the FC plus a residual MLP (Linear-BN-ReLU-Linear). ``mlp=True`` adds that
    MLP to the other encoders too.
    ``sase_variant``: ``"ours"`` or ``"seed"`` squeeze-excitation for ``sase`` (see
    ``context.py``). ``attn_dropout`` and ``layer_scale`` configure the self-attention block of
    ``selfattention`` and of both SASE variants; the seed's and CHAN's blocks are
    ``attn_dropout=0.0, layer_scale=None``.
    """

    def __init__(self, img_dim: int, embed_size: int, enc_type: str = "basic",
                 no_imgnorm: bool = False, fusion: nn.Module | None = None,
                 heads: int = ATTENTION_HEADS, mlp: bool = False,
                 sase_variant: str = "ours", attn_dropout: float = 0.1,
                 layer_scale: float | None = 0.1):
        super().__init__()
        if enc_type not in IMAGE_ENCODERS:
            raise ValueError(f"unknown --precomp_enc_type {enc_type!r}; "
                             f"choose from {', '.join(IMAGE_ENCODERS)}")
        if sase_variant not in SASE_VARIANTS:
            raise ValueError(f"unknown SASE variant {sase_variant!r}; "
                             f"choose from {', '.join(SASE_VARIANTS)}")
        self.fc = nn.Linear(img_dim, embed_size)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        mlp = mlp or enc_type == "basic_mlp"
        self.mlp = PackedMLP(img_dim, embed_size // 2, embed_size) if mlp else None
        self.fusion = fusion
        context = {"basic": None, "basic_mlp": None, "selfattention": SelfAttentionBlock,
                   "sase": SASE_VARIANTS[sase_variant]}[enc_type]
        self.context = None if context is None else context(
            embed_size, heads, dropout=attn_dropout, layer_scale=layer_scale)
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
