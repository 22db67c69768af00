"""APPM multi-scale fusion: ASPP + PPM in a narrow bottleneck, added back residually.

Data flow for ``x: (B, N, D)`` with a validity mask ``(B, N)``::

    down   Linear D -> C (C = --fusion_dim, default 128)          (B, N, C)
    ASPP   [1x1 | 3-tap dilated r for r in --aspp_rates | global]  (B, N, C * (2 + #rates))
           -> 1x1 projection                                       (B, N, C)
    PPM    [input | pool to b bins -> 1x1 to 32 -> upsample]       (B, N, C + 32 * #bins)
           -> 1x1 projection                                       (B, N, C)
    up     Linear C -> D, scaled (LayerScale, init 0.1), residual  (B, N, D)

BUTD regions form a sequence in detector order, so the convolutions and pyramid pooling are 1-D
over it (``spatial_dims=1``); a backbone grid has a real layout and uses the same module with
``spatial_dims=2`` and ``shape=(H, W)``. Padding is handled exactly: inputs at padded positions
are zeroed before every convolution (so they read as the zero boundary a shorter sequence would
have), the global branch and the pyramid bins average valid positions only, normalisation is
per position (LayerNorm), and padded outputs are zero. No statistic crosses samples.

``SeedAPPM`` is the seed's form (its ``lib/modules.py`` ``ASPP`` and ``PPM`` as wired, commented
out, in its ``EncoderImagePrecomp``)::

    down   Linear D -> C                                            (B, N, C)
    ASPP   [1x1 | 3-tap dilated r | global mean -> 1x1], each Conv-BN-ReLU
           -> concat -> 1x1 Conv-BN-ReLU -> Dropout 0.5, + input    (B, N, C)
    PPM    [input | pool to b bins -> 1x1 to 32, Conv-BN-ReLU -> linear upsample]
           -> concat -> 1x1 Conv-BN-ReLU (-> Dropout, 0 in the seed), + input  (B, N, C)
    up     Linear C -> D, + x                                       (B, N, D)

Its convolutions are masked as above, and every BatchNorm normalises the valid positions only
(they are packed into rows first), so padding changes neither the statistics in training nor any
valid output. BatchNorm still couples the samples of a training batch, as in the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..masking import masked_batch_norm


class _PositionNorm(nn.Module):
    """LayerNorm + ReLU over channels of a channels-first tensor (position-wise, batch-free)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S)
        return F.relu(self.norm(x.movedim(1, -1)).movedim(-1, 1))


def _conv(dims: int, c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Module:
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation,
               bias=False)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, *S), (B, *S) -> (B, C) mean over valid positions."""
    m = mask.unsqueeze(1).to(x.dtype)
    return (x * m).flatten(2).sum(-1) / m.flatten(2).sum(-1).clamp_min(1)


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims must be 1 (region sequence) or 2 (grid), "
                         f"got {spatial_dims}")
    return spatial_dims


def _channels_first(h: torch.Tensor, mask: torch.Tensor, dims: int,
                    shape: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, C)`` -> ``(B, C, N)`` with mask ``(B, N)``, or for grids ``(B, C, H, W)``
    with mask ``(B, H, W)``; grids must be complete and ``H * W == N``."""
    batch, n, _ = h.shape
    h = h.transpose(1, 2)  # (B, C, N)
    if dims == 1:
        return h, mask
    if shape is None or shape[0] * shape[1] != n:
        raise ValueError(f"a 2-D APPM needs shape=(H, W) with H*W={n}, got {shape}")
    if not bool(mask.all()):
        raise ValueError("a 2-D APPM expects complete grids (no padded cells)")
    return h.reshape(batch, -1, *shape), mask.view(batch, *shape)


def bin_matrices(lengths: torch.Tensor, size: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample 1-D adaptive average pooling and linear upsampling as matrices.

    Returns ``pool (B, bins, size)`` (rows average the positions of each bin of the valid prefix,
    bins as in ``adaptive_avg_pool1d``) and ``up (B, size, bins)`` (linear interpolation back to
    each valid position, ``align_corners=False``; zero rows at padded positions).
    """
    device = lengths.device
    n = lengths.clamp_min(1).to(torch.float32)[:, None]  # (B, 1)
    b = torch.arange(bins, device=device, dtype=torch.float32)[None]  # (1, bins)
    start = torch.floor(b * n / bins)  # (B, bins)
    end = torch.ceil((b + 1) * n / bins)
    pos = torch.arange(size, device=device, dtype=torch.float32)  # (size,)
    inside = (pos[None, None] >= start[..., None]) & (pos[None, None] < end[..., None])
    pool = inside.float() / (end - start).clamp_min(1)[..., None]  # (B, bins, size)
    src = ((pos[None] + 0.5) * bins / n - 0.5).clamp(0, bins - 1)  # (B, size)
    lo = src.floor()
    frac = src - lo
    hi = (lo + 1).clamp(max=bins - 1)
    slots = torch.arange(bins, device=device, dtype=torch.float32)
    # one-hot rows by comparison: F.one_hot checks its input's range on the host
    up = ((lo[..., None] == slots) * (1 - frac)[..., None]
          + (hi[..., None] == slots) * frac[..., None])  # (B, size, bins)
    up = up * (pos[None] < lengths[:, None]).float()[..., None]
    return pool, up


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3-tap branches and a global branch."""

    def __init__(self, channels: int, rates: tuple[int, ...], dims: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(_conv(dims, channels, channels), _PositionNorm(channels))]
            + [nn.Sequential(_conv(dims, channels, channels, 3, r), _PositionNorm(channels))
               for r in rates])
        self.global_branch = nn.Sequential(nn.Linear(channels, channels), nn.ReLU())
        self.project = nn.Sequential(_conv(dims, channels * (len(rates) + 2), channels),
                                     _PositionNorm(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, C, *S)
        m = mask.unsqueeze(1).to(x.dtype)
        outs = [branch(x) * m for branch in self.branches]
        pooled = self.global_branch(_masked_mean(x, mask))  # (B, C)
        outs.append(pooled.view(*pooled.shape, *([1] * (x.dim() - 2))).expand_as(x) * m)
        return self.project(torch.cat(outs, 1)) * m


class PPM(nn.Module):
    """Pyramid pooling: average over b bins, project to ``branch_channels``, upsample, concat."""

    def __init__(self, channels: int, bins: tuple[int, ...], dims: int,
                 branch_channels: int = 32):
        super().__init__()
        self.bins, self.dims = bins, dims
        self.branches = nn.ModuleList(
            nn.Sequential(_conv(dims, channels, branch_channels), nn.ReLU()) for _ in bins)
        self.project = nn.Sequential(
            _conv(dims, channels + branch_channels * len(bins), channels),
            _PositionNorm(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, C, *S)
        m = mask.unsqueeze(1).to(x.dtype)
        outs = [x]
        lengths = mask.sum(-1) if self.dims == 1 else None
        for bins, branch in zip(self.bins, self.branches, strict=True):
            if self.dims == 1:
                pool, up = bin_matrices(lengths, x.shape[-1], bins)
                pooled = branch(x @ pool.transpose(1, 2).to(x.dtype))  # (B, 32, bins)
                outs.append(pooled @ up.transpose(1, 2).to(x.dtype))  # (B, 32, N)
            else:
                pooled = branch(F.adaptive_avg_pool2d(x, bins))
                outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear",
                                          align_corners=False))
        return self.project(torch.cat(outs, 1)) * m


class APPM(nn.Module):
    """Bottleneck -> ASPP -> PPM -> projection back, added residually to the input."""

    def __init__(self, embed_size: int, fusion_dim: int = 128, rates: tuple[int, ...] = (6, 18),
                 bins: tuple[int, ...] = (1, 2, 4), spatial_dims: int = 1,
                 layer_scale: float | None = 0.1):
        super().__init__()
        self.dims = _check_dims(spatial_dims)
        self.down = nn.Linear(embed_size, fusion_dim)
        self.aspp = ASPP(fusion_dim, tuple(rates), spatial_dims)
        self.ppm = PPM(fusion_dim, tuple(bins), spatial_dims)
        self.up = nn.Linear(fusion_dim, embed_size)
        # LayerScale on the branch; None: plain residual
        self.scale = None if layer_scale is None else \
            nn.Parameter(torch.full((embed_size,), layer_scale))

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                shape: tuple[int, int] | None = None) -> torch.Tensor:
        """``x (B, N, D)``, ``mask (B, N)``; for grids ``shape=(H, W)`` with ``H * W == N``."""
        h = self.down(x) * mask.unsqueeze(-1)  # (B, N, C)
        h, m = _channels_first(h, mask, self.dims, shape)  # (B, C, *S), (B, *S)
        h = self.ppm(self.aspp(h, m), m)  # (B, C, *S)
        h = self.up(h.flatten(2).transpose(1, 2))  # (B, N, D)
        h = h if self.scale is None else self.scale * h
        return (x + h) * mask.unsqueeze(-1)


def packed_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BatchNorm of ``x (B, C, *S)`` over its valid positions ``mask (B, *S)`` only.

    The batch statistics and the running-stat updates are those of the valid positions packed
    into rows ``(n_valid, C)``, i.e. of a batch without padding (:func:`masked_batch_norm`).
    Padded positions come out zero.
    """
    return masked_batch_norm(bn, x.movedim(1, -1), mask).movedim(-1, 1)


class ConvBNReLU(nn.Module):
    """The seed's branch unit: bias-free convolution -> BatchNorm (valid positions) -> ReLU."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _conv(dims, c_in, c_out, kernel, dilation)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, *S)`` zero at padding, ``mask (B, *S)`` -> ``(B, C_out, *S)``."""
        return F.relu(packed_batch_norm(self.bn, self.conv(x), mask))


def _all_valid(x: torch.Tensor) -> torch.Tensor:
    """Mask ``(B, *S)`` marking every position of a pooled ``x (B, C, *S)`` as valid."""
    return torch.ones(x.shape[:1] + x.shape[2:], dtype=torch.bool, device=x.device)


class SeedASPP(nn.Module):
    """The seed's ASPP: Conv-BN-ReLU branches, projection, dropout, residual to the input."""

    def __init__(self, channels: int, rates: tuple[int, ...], dims: int, dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(dims, channels, channels)]
            + [ConvBNReLU(dims, channels, channels, 3, r) for r in rates])
        self.pool_branch = ConvBNReLU(dims, channels, channels)
        self.project = ConvBNReLU(dims, channels * (len(rates) + 2), channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, C, *S)`` zero at padding -> ``(B, C, *S)`` zero at padding."""
        outs = [branch(x, mask) for branch in self.branches]  # each (B, C, *S)
        pooled = _masked_mean(x, mask).view(*x.shape[:2], *([1] * (x.dim() - 2)))  # (B, C, 1..)
        pooled = self.pool_branch(pooled, _all_valid(pooled))  # BN statistics over the batch
        outs.append(pooled.expand_as(x))  # padded positions never reach the 1x1 projection
        return self.dropout(self.project(torch.cat(outs, 1), mask)) + x


class SeedPPM(nn.Module):
    """The seed's PPM: pooled Conv-BN-ReLU branches upsampled, concatenated with the input,
    projected (Conv-BN-ReLU, optional dropout) and added to the input."""

    def __init__(self, channels: int, bins: tuple[int, ...], dims: int,
                 branch_channels: int = 32, dropout: float = 0.0):
        super().__init__()
        self.bins, self.dims = bins, dims
        self.branches = nn.ModuleList(
            ConvBNReLU(dims, channels, branch_channels) for _ in bins)
        self.project = ConvBNReLU(dims, channels + branch_channels * len(bins), channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, C, *S)`` zero at padding -> ``(B, C, *S)`` zero at padding."""
        outs = [x] + [self._level(x, mask, bins, branch)
                      for bins, branch in zip(self.bins, self.branches, strict=True)]
        return self.dropout(self.project(torch.cat(outs, 1), mask)) + x

    def _level(self, x: torch.Tensor, mask: torch.Tensor, bins: int,
               branch: ConvBNReLU) -> torch.Tensor:
        """One pyramid level: pool the valid part to ``bins``, branch, upsample back."""
        if self.dims == 1:
            pool, up = bin_matrices(mask.sum(-1), x.shape[-1], bins)
            pooled = x @ pool.transpose(1, 2).to(x.dtype)  # (B, C, bins)
            out = branch(pooled, _all_valid(pooled))  # (B, C', bins)
            return out @ up.transpose(1, 2).to(out.dtype)  # (B, C', N), zero at padding
        pooled = F.adaptive_avg_pool2d(x, bins)  # (B, C, bins, bins)
        out = branch(pooled, _all_valid(pooled))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SeedAPPM(nn.Module):
    """The seed's APPM: ``x + up(PPM(ASPP(down(x))))``, BatchNorm and dropout inside.

    Same constructor order and forward as ``APPM``. ``aspp_dropout`` (0.5) follows the ASPP
    projection as in the seed; ``ppm_dropout`` defaults to 0 because the seed's ``PPM`` has no
    dropout (the 0.1 dropouts belong to its unused ``ASPP_PPM`` variant).
    """

    def __init__(self, embed_size: int, fusion_dim: int = 128, rates: tuple[int, ...] = (6, 18),
                 bins: tuple[int, ...] = (1, 2, 4), spatial_dims: int = 1,
                 branch_channels: int = 32, aspp_dropout: float = 0.5, ppm_dropout: float = 0.0):
        super().__init__()
        self.dims = _check_dims(spatial_dims)
        self.down = nn.Linear(embed_size, fusion_dim)
        self.aspp = SeedASPP(fusion_dim, tuple(rates), spatial_dims, aspp_dropout)
        self.ppm = SeedPPM(fusion_dim, tuple(bins), spatial_dims, branch_channels, ppm_dropout)
        self.up = nn.Linear(fusion_dim, embed_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                shape: tuple[int, int] | None = None) -> torch.Tensor:
        """``x (B, N, D)``, ``mask (B, N)``; for grids ``shape=(H, W)`` with ``H * W == N``."""
        pad = ~mask.unsqueeze(-1)  # (B, N, 1)
        h = self.down(x).masked_fill(pad, 0)  # (B, N, C)
        h, m = _channels_first(h, mask, self.dims, shape)  # (B, C, *S), (B, *S)
        h = self.ppm(self.aspp(h, m), m).flatten(2).transpose(1, 2)  # (B, N, C)
        return (x + self.up(h)).masked_fill(pad, 0)  # (B, N, D)


APPM_VARIANTS = {"ours": APPM, "seed": SeedAPPM}
