"""scripts/ablate.py end to end on the tiny toy set: 2 variants x 2 seeds, 1 epoch each."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import ablate  # noqa: E402

EXTRA = ("--text_enc_type bigru --embed_size 64 --word_dim 32 --batch_size 50 --num_epochs 1 "
         "--workers 0 --no_progress")


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two
    threads contend (about 8x slower measured here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _argv(root: Path, out: Path, extra: str = EXTRA) -> list[str]:
    return ["--data_path", str(root / "toy"), "--data_name", "toy", "--vocab_path",
            str(root / "vocab"), "--out", str(out), "--variants", "chan", "vse",
            "--seeds", "2", "--extra", extra]


def _run_files(out: Path, variant: str, name: str) -> list[dict]:
    return [json.loads((out / "runs" / variant / f"seed{seed}" / name).read_text())
            for seed in (2022, 2023)]


def test_ablation_table_matches_runs_and_a_rerun_resumes(tiny_toy, tmp_path, monkeypatch,
                                                          one_thread):
    out = tmp_path / "ablation"
    report = ablate.main(_argv(tiny_toy, out))
    assert json.loads((out / "ablation.json").read_text()) == report
    table = (out / "ablation.md").read_text()
    assert [row["variant"] for row in report["rows"]] == ["chan", "vse"]
    for row in report["rows"]:
        tests = _run_files(out, row["variant"], "metrics_test.json")
        summaries = _run_files(out, row["variant"], "train_summary.json")
        (a, b), (d1, d2) = [m["rsum"] for m in tests], [s["dev_rsum"] for s in summaries]
        assert row["seeds"] == [2022, 2023]
        assert row["rsum_mean"] == pytest.approx((a + b) / 2, abs=0.005)
        assert row["rsum_std"] == pytest.approx(abs(a - b) / 2, abs=0.005)
        assert row["r1_i2t_mean"] == pytest.approx((tests[0]["r1"] + tests[1]["r1"]) / 2,
                                                   abs=0.005)
        assert row["r1_t2i_mean"] == pytest.approx((tests[0]["r1i"] + tests[1]["r1i"]) / 2,
                                                   abs=0.005)
        assert row["dev_rsum_mean"] == pytest.approx((d1 + d2) / 2, abs=0.005)
        assert row["best_epochs"] == [0, 0] and row["train_seconds_mean"] > 0
        assert f"| {row['variant']} | 2 | {(a + b) / 2:.1f} ± {abs(a - b) / 2:.1f} |" in table
        assert all(0 < m["rsum"] <= 600 for m in tests)
    seeds = [s["train_argv"] for s in _run_files(out, "vse", "train_summary.json")]
    assert seeds[0][:4] == ["--config", "vse", "--text_enc_type", "bigru"]
    assert [argv[argv.index("--seed") + 1] for argv in seeds] == ["2022", "2023"]

    # a rerun trains nothing; a run whose metrics are gone is only evaluated again
    (out / "runs" / "chan" / "seed2023" / "metrics_test.json").unlink()
    calls = []
    real_run = ablate.run_cli

    def recording_run(main, argv, log_file):
        calls.append(main.__module__)
        return real_run(main, argv, log_file)

    monkeypatch.setattr(ablate, "run_cli", recording_run)
    assert ablate.main(_argv(tiny_toy, out)) == report
    assert calls == ["eval"]

    # the same folders with other training flags: refused, not silently mixed
    with pytest.raises(SystemExit, match="trained with other flags"):
        ablate.main(_argv(tiny_toy, out, EXTRA.replace("--embed_size 64", "--embed_size 32")))
    assert calls == ["eval"]
