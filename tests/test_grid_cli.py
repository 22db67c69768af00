"""Raw images through the command lines: train.py and eval.py with a backbone grid encoder.

Data: the scikit-image photos in the Flickr30K layout (``fixtures_images.py``), 8 training
images (40 captions), 2 dev, 2 test. Backbones: EfficientNet-Lite0 with its real packaged
ImageNet weights for the end-to-end run, a torchvision ResNet-18 with random weights saved to a
file elsewhere (fast enough for several short runs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fixtures_images import CAPTIONS, SPLITS, file_name, image_id, write_f30k_images

import eval as eval_cli
import train as train_cli
from lib.checkpoint import BEST, LATEST, VERSION, load_checkpoint
from lib.config import model_config, parse_train_args, saved_model_config
from lib.data.vocab import build_vocab
from lib.errors import DataError
from lib.models import build_model

REPO = Path(__file__).resolve().parents[1]
TRUNK = "img_enc.backbone.net."  # state-dict prefix of the trunk (torchvision names after it)


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory) -> Path:
    """``root/f30k`` (raw images), ``root/vocab`` (BiGRU) and ``root/resnet18.pth``."""
    root = tmp_path_factory.mktemp("grid")
    write_f30k_images(root / "f30k")
    (root / "vocab").mkdir()
    captions = [c for name in SPLITS["train"] for c in CAPTIONS[name]]
    build_vocab(captions, min_count=1).save(root / "vocab" / "f30k_precomp_vocab.json")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18.pth")
    return root


def _grid_args(root: Path, run: Path, *extra: str, weights: Path | None = None) -> list[str]:
    """A small BiGRU + ResNet-18 grid run at 64 px (a 2 x 2 grid) with 2-D APPM."""
    return ["--data_path", str(root / "f30k"), "--text_enc_type", "bigru", "--embed_size", "32",
            "--word_dim", "32", "--batch_size", "8", "--workers", "0", "--no_progress",
            "--precomp_enc_type", "backbone", "--backbone", "resnet18", "--backbone_path",
            str(weights or root / "resnet18.pth"), "--image_size", "64", "--fusion", "appm",
            "--fusion_dim", "8", "--aspp_rates", "1,2", "--model_name", str(run), *extra]


def _cli(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


def _trunk(state: dict) -> dict:
    return {k[len(TRUNK):]: v for k, v in state.items() if k.startswith(TRUNK)}


def test_warmup_freezes_the_backbone_then_trains_it_and_resume_is_exact(grid_root, tmp_path):
    """Epoch 0 (warm-up) leaves every trunk tensor as the file gave it; epoch 1 trains the trunk
    but never its BatchNorm statistics; 1 + 1 resumed epochs equal 2 straight ones."""
    weights = torch.load(grid_root / "resnet18.pth", weights_only=True)
    split, straight = tmp_path / "split", tmp_path / "straight"
    warmup = ("--embedding_warmup_epochs", "1")
    train_cli.main(_grid_args(grid_root, split, *warmup, "--num_epochs", "1"))
    first = load_checkpoint(split / LATEST)["model"]
    trunk = _trunk(first)
    assert trunk.keys() == {k for k in weights if not k.startswith("fc.")}
    assert all(torch.equal(trunk[k], weights[k]) for k in trunk)
    assert _trained_groups(split) == {1.0}  # the head trained: Adam moments; the trunk none

    train_cli.main(_grid_args(grid_root, split, *warmup, "--num_epochs", "2", "--resume",
                              str(split / LATEST)))
    trunk = _trunk(load_checkpoint(split / LATEST)["model"])
    assert _trained_groups(split) == {1.0, 0.01}
    assert not torch.equal(trunk["layer4.1.conv2.weight"], weights["layer4.1.conv2.weight"])
    assert not torch.equal(trunk["bn1.weight"], weights["bn1.weight"])  # affine trains
    for key in [k for k in trunk if "running_" in k]:
        assert torch.equal(trunk[key], weights[key]), key  # statistics stay frozen

    train_cli.main(_grid_args(grid_root, straight, *warmup, "--num_epochs", "2"))
    a, b = load_checkpoint(straight / LATEST), load_checkpoint(split / LATEST)
    assert a["epoch"] == b["epoch"] == 2 and a["best"] == b["best"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def _trained_groups(run: Path) -> set[float]:
    """``lr_factor`` of the optimizer groups whose parameters have Adam moments."""
    optimizer = load_checkpoint(run / LATEST)["optimizer"]
    return {g["lr_factor"] for g in optimizer["param_groups"]
            if any(i in optimizer["state"] for i in g["params"])}


def test_backbone_parameters_are_in_the_optimizer_at_their_factor_while_frozen(grid_root,
                                                                              tmp_path):
    args = parse_train_args(_grid_args(grid_root, tmp_path, "--learning_rate", "1e-3",
                                       "--backbone_lr_factor", "0.05"))
    model = build_model(model_config(args), vocab_size=50)
    model.img_enc.freeze_backbone(True)
    optimizer = train_cli.build_optimizer(model, args)
    trunk = {id(p) for p in model.img_enc.backbone.parameters()}
    groups = {g["lr_factor"]: g for g in optimizer.param_groups}
    assert set(groups) == {1.0, 0.05}
    assert {id(p) for p in groups[0.05]["params"]} == trunk
    assert groups[0.05]["lr"] == pytest.approx(5e-5) and groups[1.0]["lr"] == 1e-3
    everything = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())


def test_checkpoint_evaluates_without_the_backbone_file(grid_root, tmp_path):
    """eval.py rebuilds the grid model from the checkpoint alone: --backbone_path is not read."""
    weights = tmp_path / "copy.pth"
    shutil.copy(grid_root / "resnet18.pth", weights)
    run = tmp_path / "run"
    train_cli.main(_grid_args(grid_root, run, "--num_epochs", "1", weights=weights))
    weights.unlink()
    metrics = eval_cli.main(["--model_path", str(run / BEST), "--split", "test",
                             "--no_progress"])
    assert 0 < metrics["rsum"] <= 600


def test_checkpoint_config_from_before_the_grid_flags_loads(grid_root, tmp_path):
    """A model config saved before the raw-image fields existed takes their defaults."""
    cfg = model_config(parse_train_args(_grid_args(grid_root, tmp_path))).to_dict()
    region = {**cfg, "precomp_enc_type": "basic", "img_dim": 256}
    older = {k: v for k, v in region.items()
             if k not in ("backbone", "backbone_path", "image_size", "cell_drop_rate")}
    saved = saved_model_config({"model_config": older, "config": {}, "version": VERSION},
                               "old.pth")
    assert (saved.precomp_enc_type, saved.img_dim, saved.backbone, saved.image_size) == \
        ("basic", 256, "resnet152", None)


def _parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_raw_image_flag_combinations_are_refused_at_parse_time(grid_root, tmp_path, capsys):
    base = ["--text_enc_type", "bigru", "--precomp_enc_type", "backbone"]
    weights = ["--backbone_path", str(grid_root / "resnet18.pth")]
    assert "needs --backbone_path FILE" in _parse_error(capsys, *base)
    assert f"--backbone_path {tmp_path / 'no.pth'}: no such file" in _parse_error(
        capsys, *base, "--backbone_path", str(tmp_path / "no.pth"))
    assert "--img_dim is the width of region features" in _parse_error(
        capsys, *base, *weights, "--img_dim", "2048")
    assert "--image_size 448 contradicts --input_scale_factor 2.0" in _parse_error(
        capsys, *base, *weights, "--image_size", "448", "--input_scale_factor", "2")
    assert "only torchvision ResNet-family" in _parse_error(
        capsys, *base, *weights, "--backbone", "mobilenet_v3_small")
    assert "not a torchvision classification model nor a timm" in _parse_error(
        capsys, *base, *weights, "--backbone", "no_such_net")
    assert "--cell_drop_rate must be in [0, 1)" in _parse_error(
        capsys, *base, *weights, "--cell_drop_rate", "1")
    assert "--embedding_warmup_epochs, --image_size: raw-image settings" in _parse_error(
        capsys, "--text_enc_type", "bigru", "--image_size", "256",
        "--embedding_warmup_epochs", "1")
    args = parse_train_args([*base, *weights])
    assert args.image_size == 512 and args.backbone == "resnet152"  # VSE∞'s grid setting


def test_missing_backbone_file_stops_before_anything_is_written(grid_root, tmp_path):
    run = tmp_path / "run"
    done = _cli("train.py", *_grid_args(grid_root, run, weights=tmp_path / "none.pth"))
    assert done.returncode == 2 and "none.pth: no such file" in done.stderr
    assert not run.exists()


def test_missing_or_unreadable_image_is_one_line_naming_the_file(grid_root, tmp_path):
    data = tmp_path / "f30k"
    shutil.copytree(grid_root / "f30k", data)
    args = _grid_args(grid_root, tmp_path / "run", "--num_epochs", "1", "--workers", "1",
                      "--vocab_path", str(grid_root / "vocab"))
    args[1] = str(data)
    broken = data / "flickr30k-images" / file_name("rocket")  # found when a worker decodes it
    broken.write_bytes(b"not a jpeg")
    done = _cli("train.py", *args)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot read image {broken} (image row 2, "
                                  f"id_mapping.json entry \"{image_id('rocket')}\": "
                                  f"\"{file_name('rocket')}\"): ")
    missing = data / "flickr30k-images" / file_name("coffee")  # found when the split opens
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(
            f"image not found: {missing} (image row 1, id_mapping.json entry "
            f"\"{image_id('coffee')}\": \"{file_name('coffee')}\"); 1 of the 8 images of "
            f"split 'train' are missing")):
        train_cli.main([*args, "--overwrite"])


def test_lite0_grid_trains_and_evaluates_through_the_scripts(grid_root, lite0_path, tmp_path):
    """``FEATURES=grid`` in scripts/train.sh and eval.sh (train.py and eval.py underneath), with
    EfficientNet-Lite0's real ImageNet weights at 96 px (a 3 x 3 grid of 1,280-d cells): one
    warm-up epoch, one with the backbone trained, then the test split scored."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "DATASET": "f30k", "CONFIG": "chan",
           "DATA_PATH": str(grid_root / "f30k"), "FEATURES": "grid",
           "BACKBONE": "tf_efficientnet_lite0", "BACKBONE_PATH": lite0_path, "RUN": str(run),
           "OMP_NUM_THREADS": "1"}
    small = ["--text_enc_type", "bigru", "--embed_size", "32", "--word_dim", "32",
             "--batch_size", "8", "--workers", "1", "--input_scale_factor", "0.375",
             "--num_epochs", "2", "--no_progress"]
    done = subprocess.run(["sh", str(REPO / "scripts" / "train.sh"), *small], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "epoch 0: backbone frozen (warm-up)" in log and "epoch 1: backbone trained" in log
    ckpt = load_checkpoint(run / LATEST)
    cfg = ckpt["model_config"]
    assert (cfg["precomp_enc_type"], cfg["backbone"], cfg["image_size"], cfg["img_dim"]) == \
        ("backbone", "tf_efficientnet_lite0", 96, None)  # 256 x 0.375, VSE∞'s scale
    assert sorted(g["lr_factor"] for g in ckpt["optimizer"]["param_groups"]) == [0.01, 1.0]

    done = subprocess.run(["sh", str(REPO / "scripts" / "eval.sh")],
                          env={**env, "BACKBONE_PATH": ""}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encode images" in done.stderr  # progress shown
    assert "2 images x 10 captions scored" in done.stderr
    metrics = json.loads((run / "metrics_test.json").read_text())
    assert {"r1", "r1i", "rsum"} <= set(metrics) and 0 < metrics["rsum"] <= 600
    saved = np.load(run / "sims_test.npy", allow_pickle=True).item()
    assert saved["npts"] == 2 and saved["sims"].shape == (2, 10)
    assert np.isfinite(saved["sims"]).all() and np.abs(saved["sims"]).max() <= 1 + 1e-5
