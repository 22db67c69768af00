"""Structural rules of the package: one error type for the user, layers that import downwards."""

import subprocess
import sys
from pathlib import Path

import pytest

import lib.data
from lib.errors import CheckpointError, DataError, EvaluationError, RunFolderError, UserError

REPO = Path(__file__).resolve().parents[1]


def _imported_after(module: str) -> set[str]:
    """``lib`` modules loaded by importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('lib')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          check=True)
    return set(done.stdout.split())


def test_every_user_facing_error_is_a_user_error():
    for error in (DataError, CheckpointError, RunFolderError, EvaluationError):
        assert issubclass(error, UserError)
    assert lib.data.DataError is DataError  # the historical import keeps working
    assert issubclass(DataError, ValueError) and issubclass(EvaluationError, ValueError)


@pytest.mark.parametrize("module,forbidden", [
    ("lib.models", ("lib.data", "lib.evaluation", "lib.engine")),
    ("lib.models.backbone", ("lib.data", "lib.evaluation", "lib.engine")),
    ("lib.similarity", ("lib.data", "lib.models", "lib.evaluation")),
])
def test_layers_import_downwards_only(module, forbidden):
    loaded = _imported_after(module)
    assert module in loaded
    assert not {m for m in loaded if m.startswith(forbidden)}, loaded
