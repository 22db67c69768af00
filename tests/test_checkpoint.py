"""Checkpoint and result files: atomic, ordered, never destroying an earlier one."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lib.checkpoint as checkpoint
from lib.checkpoint import (
    BEST,
    LATEST,
    WriteError,
    atomic_write,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from lib.errors import CheckpointError


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(WriteError, match=f"could not write {target} \\(disk full; .* MiB free"
                                         f".*the previous file is intact"):
        atomic_write(target, crash)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_disk_full_during_a_checkpoint_save(tmp_path):
    """A real short write: the child process may write files of at most 64 KiB (ulimit -f)."""
    save_checkpoint({"model": {"w": torch.zeros(4)}, "config": {}, "epoch": 1}, tmp_path,
                    is_best=False)
    before = (tmp_path / LATEST).read_bytes()
    script = (
        "import resource, sys, torch\n"
        "from lib.checkpoint import save_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        f"    save_checkpoint({{'model': {{'w': torch.zeros(10**6)}}, 'config': {{}}}}, "
        f"{str(tmp_path)!r}, is_best=False)\n"
        "except Exception as err:\n"
        "    sys.exit(f'{type(err).__name__}: {err}')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"WriteError: could not write {tmp_path / LATEST} (File too "
                                  f"large; ")
    assert "the previous file is intact and no temporary file is left" in done.stderr
    assert (tmp_path / LATEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


def test_permission_denied_names_the_file(tmp_path, monkeypatch):
    def refuse(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint.os, "open", refuse)
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'm.json'} \\(Permission "
                                         f"denied.*no earlier file existed"):
        atomic_write(tmp_path / "m.json", lambda f: f.write(b"{}"))
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_killed_saves_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".checkpoint.pth.{dead}.0badc0de.tmp"
    live = tmp_path / f".checkpoint.pth.{os.getpid()}.12345678.tmp"
    other = tmp_path / "notes.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_best_is_written_before_the_record_that_names_it(tmp_path, monkeypatch):
    save_checkpoint({"model": {}, "config": {}, "epoch": 1, "best": {"epoch": 0}}, tmp_path,
                    is_best=True)
    real_save = checkpoint.atomic_save

    def disk_full_on_best(obj, path):
        if path.name == BEST:
            raise OSError("No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", disk_full_on_best)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "config": {}, "epoch": 2, "best": {"epoch": 1}}, tmp_path,
                        is_best=True)
    # checkpoint.pth must not claim epoch 1 is the best while model_best.pth holds epoch 0
    assert load_checkpoint(tmp_path / LATEST)["best"] == {"epoch": 0}
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 1
    monkeypatch.setattr(checkpoint, "atomic_save", real_save)
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}, "epoch": 2}, tmp_path,
                    is_best=False)
    assert load_checkpoint(tmp_path / LATEST)["epoch"] == 2
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 1


def test_old_global_coding_checkpoints_are_refused(tmp_path):
    old = {"model": {}, "config": {"coding_type": "global"}}  # no version: written before 2
    torch.save(old, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="old.pth: a global-coding .* retrain it"):
        load_checkpoint(tmp_path / "old.pth")
    torch.save({**old, "config": {"coding_type": "VHACoding"}}, tmp_path / "vha.pth")
    assert load_checkpoint(tmp_path / "vha.pth")["config"]["coding_type"] == "VHACoding"
    save_checkpoint(old, tmp_path, is_best=False)
    assert load_checkpoint(tmp_path / LATEST)["version"] == checkpoint.VERSION


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content, message", [
    ("text", "not a PyTorch checkpoint (it starts with b'epoc')"),
    ("truncated", "truncated or unreadable checkpoint"),
    ("vse", "a VSE∞ or CHAN checkpoint (its options are a pickled argparse Namespace)"),
    ("code", "holds pickled objects other than tensors"),
])
def test_foreign_checkpoints_are_explained(tmp_path, monkeypatch, content, message):
    import argparse

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.pth"
    if content == "text":
        path.write_text("epoch 3, rsum 500")
    elif content == "truncated":
        torch.save({"model": {"w": torch.zeros(100)}, "config": {}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "vse":  # what VSE∞ and CHAN save: options as an argparse Namespace
        torch.save({"model": [{"w": torch.zeros(2)}], "opt": argparse.Namespace(lr=2e-4),
                    "epoch": 3, "best_rsum": 500.0}, path)
    else:
        torch.save({"model": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {message}")):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()  # nothing in the file was run
