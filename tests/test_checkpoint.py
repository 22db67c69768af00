"""Checkpoint and result files: atomic, ordered, never destroying an earlier one."""

import os

import pytest
import torch

import lib.checkpoint as checkpoint
from lib.checkpoint import BEST, LATEST, atomic_write, load_checkpoint, save_checkpoint
from lib.errors import CheckpointError


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


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
