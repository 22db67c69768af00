"""What a result depends on besides the code's flags: versions, device, threads, seed, commit.

Two runs with the same flags and seed give bit-identical results on CPU only when this record
matches too. On this project's CPU machines the trained weights changed with the number of
intra-op threads (``torch.get_num_threads()``) and with MKL's kernel choice (``MKL_CBWR``, which
MKL otherwise picks per processor model), so toy figures from one machine need not come back on
another; see README ("Reproducibility"). Every run folder and metrics file carries the record.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "numpy", "transformers", "tokenizers", "nltk", "timm", "torchvision")
REPOSITORY = Path(__file__).resolve().parents[1]


def describe_environment(device: torch.device | str = "cpu", seed: int | None = None) -> dict:
    """A JSON-ready record of the software, hardware and settings behind a result."""
    device = torch.device(device)
    record = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name)},
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
    }
    if seed is not None:
        record["seed"] = seed
    return record


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPOSITORY, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"
