"""Checkpoints that never destroy an earlier one.

Each file is written to a temporary name in the same folder, flushed, then ``os.replace``d over
the target, so a crash mid-save leaves the previous checkpoint intact. The whole run config,
the vocabulary (BiGRU) and the RNG states travel inside the checkpoint, so ``eval.py`` needs only
the checkpoint and ``--resume`` continues exactly where training stopped.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .errors import CheckpointError, WriteError

LATEST, BEST = "checkpoint.pth", "model_best.pth"
TEMP_SUFFIX = ".tmp"
# Bumped when the same weights would compute something else. 2: the global (VSE∞) coding pools
# unnormalised region/token features (1 normalised each of them first). 3: --precomp_enc_type
# basic is CHAN's single FC layer; earlier checkpoints' "basic" (FC + MLP) reads as basic_mlp.
VERSION = 3


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it over
    ``path``: readers see the old file or the complete new one, never a partial one.

    A failed write (disk full, no permission, file too large) removes the temporary file and
    raises a :class:`WriteError` naming ``path`` and the cause; ``path`` itself is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # created like any other file (mode 0666 minus the umask), unlike mkstemp's 0600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            recorder = _ErrorRecordingFile(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error else err
        raise WriteError(_write_failure(path, cause)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself survive a power loss


class _ErrorRecordingFile:
    """A binary file whose failed ``write`` is remembered: ``torch.save`` replaces the
    ``OSError`` (e.g. "No space left on device") with an opaque ``RuntimeError``."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _write_failure(path: Path, err: Exception) -> str:
    """One line saying which file could not be written, why, and that the old one survives."""
    cause = err.strerror if isinstance(err, OSError) and err.strerror else \
        str(err).strip().splitlines()[0]
    try:
        free = shutil.disk_usage(path.parent).free
        cause += f"; {free / 2**20:.0f} MiB free on that disk"
    except OSError:
        pass
    kept = "the previous file is intact" if path.exists() else "no earlier file existed"
    return (f"could not write {path} ({cause}); {kept} and no temporary file is left; free "
            f"space or fix the folder's permissions, then resume")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files that a killed save left in ``folder`` (their process is gone)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name.rsplit(".", 3)[-3]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every platform can open or sync a folder
        pass


def atomic_save(obj, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, folder: str | Path, is_best: bool) -> None:
    """Write ``model_best.pth`` (when ``is_best``), then ``checkpoint.pth``.

    The best file goes first: ``checkpoint.pth`` records which epoch is best, so it must never
    name a best epoch whose weights a crash kept from reaching ``model_best.pth``.
    """
    latest, best = Path(folder) / LATEST, Path(folder) / BEST
    state = {**state, "version": VERSION}
    if not is_best:
        atomic_save(state, latest)
        return
    atomic_save(state, best)
    with best.open("rb") as src:  # copy the bytes just written instead of serialising again
        atomic_write(latest, lambda dst: shutil.copyfileobj(src, dst))


def carry_best(src_folder: str | Path, dst_folder: str | Path) -> bool:
    """Copy ``model_best.pth`` of a run resumed into another folder, so that folder holds the
    run's best model even when no later epoch beats it. Returns whether a copy was made."""
    src, dst = Path(src_folder) / BEST, Path(dst_folder) / BEST
    if dst.exists() or not src.is_file():
        return False
    with src.open("rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out))
    return True


def load_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """``model.load_state_dict`` with a one-line :class:`CheckpointError` naming ``path`` on
    mismatch. Weights saved from a DDP-wrapped model (keys starting ``module.``) load too: the
    prefix is removed from ``state_dict`` in place. ``train.py`` saves the unwrapped model's."""
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit the model built from its "
                              f"config ({first_line}); was the file edited or written by "
                              f"another version?") from None


ZIP_MAGIC, LEGACY_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save's zip format, and the pickle


def _unreadable(path: Path, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in one line."""
    text = str(err)
    if "argparse.Namespace" in text or "Namespace" in text and "GLOBAL" in text:
        return (f"{path}: a VSE∞ or CHAN checkpoint (its options are a pickled argparse "
                f"Namespace); its weights use those projects' module names and layout, so it "
                f"cannot be loaded here: train with this code, or evaluate it with its own")
    if "Unsupported global" in text or "weights_only" in text:
        return (f"{path}: holds pickled objects other than tensors and plain values, which are "
                f"not loaded (loading never runs code from a file); not a checkpoint of "
                f"train.py")
    return f"{path}: truncated or unreadable checkpoint ({text.splitlines()[0]})"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((ZIP_MAGIC, LEGACY_MAGIC)):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head!r}); "
                              f"expected a model_best.pth or checkpoint.pth written by train.py")
    try:  # weights only: loading never runs code stored in the file
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt/foreign files
        raise CheckpointError(_unreadable(path, err)) from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a CHAN-ASDG checkpoint (expected a dict with "
                              f"'model' and 'config')")
    if ckpt.get("version", 1) < 2 and ckpt["config"].get("coding_type") == "global":
        raise CheckpointError(f"{path}: a global-coding (vse) checkpoint from before version "
                              f"2, whose pooling normalised each region and token first; this "
                              f"version would score it differently, so retrain it")
    return ckpt
