"""eval.py refuses bad inputs early and in one line, and accepts plain score matrices."""

import numpy as np
import pytest

import eval as eval_cli
import train as train_cli
from lib.checkpoint import BEST
from lib.data import DataError
from lib.evaluation import recall_metrics


def _scores(n_img=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n_img, 5 * n_img)).astype(np.float32)


def test_a_plain_score_matrix_is_accepted(tmp_path):
    sims = _scores()
    np.save(tmp_path / "plain.npy", sims)
    np.save(tmp_path / "saved.npy", {"npts": 4, "sims": sims}, allow_pickle=True)
    expected = recall_metrics(sims)
    assert eval_cli.main(["--results", str(tmp_path / "plain.npy")]) == pytest.approx(expected)
    both = eval_cli.main(["--results", str(tmp_path / "plain.npy"), str(tmp_path / "saved.npy")])
    assert both == pytest.approx(expected)


@pytest.mark.parametrize("content, message", [
    (b"rsum 500\n", "not a .npy file"),
    (None, "cannot read it"),
    ("vector", r"scores of shape \(20,\)"),
    ("dict", "holds a dict without 'npts' and 'sims'"),
    ("truncated", "truncated or unreadable"),
])
def test_bad_results_files_are_named(tmp_path, content, message):
    path = tmp_path / "r.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "vector":
        np.save(path, np.zeros(20, np.float32))
    elif content == "dict":
        np.save(path, {"scores": 1}, allow_pickle=True)
    elif content == "truncated":
        np.save(path, {"npts": 4, "sims": _scores()}, allow_pickle=True)
        path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=f"{path}: {message}"):
        eval_cli.main(["--results", str(path)])


def test_fold5_is_refused_before_scoring(tiny_toy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_cli.main(["--data_path", str(tiny_toy / "toy"), "--text_enc_type", "bigru",
                    "--embed_size", "64", "--word_dim", "32", "--batch_size", "32",
                    "--workers", "0", "--num_epochs", "1", "--model_name", str(run),
                    "--no_progress"])

    def must_not_score(*args, **kwargs):
        raise AssertionError("scored before checking the protocol")

    monkeypatch.setattr(eval_cli, "score_split", must_not_score)
    with pytest.raises(DataError, match="--fold5 needs the 5 x 1000 = 5000 images .* has 20"):
        eval_cli.main(["--model_path", str(run / BEST), "--split", "test", "--fold5",
                       "--no_progress"])


def test_outputs_are_named(tmp_path, capsys):
    np.save(tmp_path / "plain.npy", _scores())
    eval_cli.main(["--results", str(tmp_path / "plain.npy"), "--metrics_out",
                   str(tmp_path / "m.json"), "--save_results", str(tmp_path / "s.npy")])
    out = capsys.readouterr().out
    assert f"metrics written to {tmp_path / 'm.json'}" in out
    assert f"score matrix written to {tmp_path / 's.npy'}" in out
