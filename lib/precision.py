"""Numeric precision in one place: autocast for the model, matmul mode for scoring.

``fp32``: exact float32 everywhere. ``tf32``: float32 storage, TF32 tensor-core matmuls on CUDA
(same as fp32 on CPU). ``bf16``: bfloat16 autocast / storage. ``auto`` resolves to ``bf16`` on CUDA
and ``fp32`` on CPU.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def resolve(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def storage_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


@contextlib.contextmanager
def matmul_mode(precision: str):
    """Allow TF32 matmuls inside the block for ``tf32``; restore the previous setting after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def autocast(precision: str, device: torch.device):
    """Autocast context for model forward passes (a no-op unless ``bf16``)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return matmul_mode(precision)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
