"""Padding masks shared by the encoders and the similarity functions."""

from __future__ import annotations

import torch

from .distributed import summed_over_ranks


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


SYNCED = "statistics_over_ranks"  # attribute marking a BatchNorm layer synchronised over ranks


def sync_batch_norms(model: torch.nn.Module) -> None:
    """Let every BatchNorm layer of ``model`` normalise with the statistics of all ranks'
    batches together. A mark, not torch's ``SyncBatchNorm``: that one has no CPU kernels, and
    the trained BatchNorm layers here are computed by :func:`masked_batch_norm` anyway."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, SYNCED, True)


def masked_batch_norm(bn: torch.nn.BatchNorm1d, x: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """BatchNorm of ``x (..., C)`` over the positions where ``mask (...)`` is True.

    Statistics and running-stat updates are those of the valid positions packed into rows, but
    nothing is packed: boolean indexing would make the host wait for the device to count the
    valid positions, and would give every batch another shape. Computed in float32 (as
    BatchNorm's statistics are under autocast); padded positions come out zero, and their
    values never enter, even inf/NaN.

    A layer marked by :func:`sync_batch_norms` (``--sync_bn`` under torchrun) takes its
    statistics over the valid positions of every rank's slice, i.e. of the global batch, with
    gradients through the sums.
    """
    padded = ~mask.unsqueeze(-1)  # (..., 1)
    values = x.float().masked_fill(padded, 0)
    if bn.training or not bn.track_running_stats:
        dims = tuple(range(x.dim() - 1))
        synced = getattr(bn, SYNCED, False)
        count = _total(mask.sum().to(torch.float32), synced)
        mean = _total(values.sum(dims), synced) / count  # (C,)
        var = _total((values - mean).masked_fill(padded, 0).square().sum(dims), synced) / count
        if bn.training and bn.track_running_stats:
            _update_running_stats(bn, mean, var, count)
    else:
        mean, var = bn.running_mean, bn.running_var
    out = (values - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    return out.masked_fill(padded, 0).to(x.dtype)


def _total(x: torch.Tensor, synced: bool) -> torch.Tensor:
    """``x``, summed over the ranks when ``synced`` (with gradients)."""
    return summed_over_ranks(x) if synced else x


@torch.no_grad()
def _update_running_stats(bn: torch.nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor,
                          count: torch.Tensor) -> None:
    """BatchNorm's update: a moving average (cumulative when ``momentum`` is None) of the mean
    and of the unbiased variance."""
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked
    bn.running_mean.lerp_(mean, momentum)
    bn.running_var.lerp_(var * count / (count - 1).clamp_min(1), momentum)
