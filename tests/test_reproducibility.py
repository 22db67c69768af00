"""Two fresh CPU runs give identical results, and every run records what they depend on."""

import json

import torch

import train as train_cli
from lib.checkpoint import LATEST, load_checkpoint
from lib.environment import describe_environment


def _args(tiny_toy, run):
    return ["--data_path", str(tiny_toy / "toy"), "--text_enc_type", "bigru", "--embed_size",
            "64", "--word_dim", "32", "--batch_size", "32", "--workers", "0", "--num_epochs",
            "2", "--model_name", str(run), "--no_progress", "--seed", "7"]


def test_two_fresh_runs_are_identical(tiny_toy, tmp_path):
    best_a = train_cli.main(_args(tiny_toy, tmp_path / "a"))
    best_b = train_cli.main(_args(tiny_toy, tmp_path / "b"))
    assert best_a == best_b
    a, b = (load_checkpoint(tmp_path / run / LATEST)["model"] for run in ("a", "b"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["seed"] == 7 and env["torch_threads"] == torch.get_num_threads()
    assert env == json.loads((tmp_path / "b" / "environment.json").read_text())


def test_environment_record():
    env = describe_environment("cpu", seed=3)
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["device"].startswith("cpu (") and env["seed"] == 3
    assert env["git_commit"] is None or len(env["git_commit"].split("+")[0]) == 40
    json.dumps(env)  # JSON-ready
