"""Numeric precision in one place: autocast for the model, matmul mode for scoring.

``fp32``: exact float32 everywhere. ``tf32``: float32 storage, TF32 tensor-core matmuls on CUDA
(same as fp32 on CPU). ``bf16``: bfloat16 autocast for the model and bfloat16 storage of the
evaluation embeddings, but scores are float32 (:func:`float32_products`). ``auto`` resolves to
``bf16`` on CUDA and ``fp32`` on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
log = logging.getLogger(__name__)


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
    """Allow TF32 matmuls inside the block for ``tf32`` only; restore the setting after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def float32_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (2-D) with a float32 result, also for bfloat16 inputs.

    A bfloat16 result keeps 8 significant bits: cosines in [0.5, 1) would take only 128 values,
    so many scores would tie and R@K would depend on the tie rule. On CUDA, cuBLAS takes the
    bfloat16 inputs and writes float32 (``out_dtype``); elsewhere, or where that overload fails
    its one-time check, the inputs are upcast first, which gives the same products.
    """
    if a.dtype == b.dtype == torch.float32:
        return a @ b
    if a.is_cuda and a.dtype == b.dtype and cuda_out_dtype_works(a.device, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


@functools.cache
def cuda_out_dtype_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` runs on ``device`` and agrees with the
    upcast product, checked once per device on a small transposed operand (as scoring uses)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(64, 32, generator=g).to(device, dtype)
    b = torch.randn(48, 32, generator=g).to(device, dtype).t()  # a non-contiguous (32, 48) view
    try:
        fast = torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError) as err:
        log.warning("torch.mm(out_dtype=float32) is unavailable here (%s); bf16 scoring "
                    "upcasts its blocks instead", err)
        return False
    exact = a.double() @ b.double()
    ok = fast.dtype == torch.float32 and torch.allclose(fast.double(), exact, rtol=0, atol=1e-4)
    if not ok:
        log.warning("torch.mm(out_dtype=float32) disagrees with the float64 product on %s; "
                    "bf16 scoring upcasts its blocks instead", device)
    return ok


def autocast(precision: str, device: torch.device):
    """Autocast context for model forward passes (a no-op unless ``bf16``)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return matmul_mode(precision)


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` (e.g. ``cuda:1``) or, when not given, CUDA when available, else the CPU.

    This is where a device enters a run, so it is normalised here: see :func:`with_index`.
    """
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return with_index(device)


def with_index(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current device>``; other devices unchanged.

    torch.cuda's per-device memory queries (``get_per_process_memory_fraction``,
    ``set_per_process_memory_fraction``) refuse a CUDA device without an index.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
