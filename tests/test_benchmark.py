import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark_eval  # noqa: E402


def test_benchmark_reports_scoring_floor_and_ratio(capsys):
    benchmark_eval.main(["--n_img", "6", "--dim", "32", "--device", "cpu", "--repeats", "1",
                         "--precision", "fp32"])
    out = capsys.readouterr().out
    assert "6 images x 36 regions, 30 captions" in out
    seconds = {k: float(v) for k, v in re.findall(r"^(scoring|ranking|total|floor) .*?([\d.]+) s",
                                                  out, flags=re.M)}
    assert set(seconds) == {"scoring", "ranking", "total", "floor"}
    assert seconds["total"] >= seconds["scoring"]
    ratio = float(re.search(r"ratio total / floor: ([\d.]+)", out).group(1))
    assert ratio > 0 and "peak host memory" in out
    error = float(re.search(r"float32 CPU reference\| on a corner: ([\d.e+-]+)", out).group(1))
    assert error < 1e-5


def test_training_benchmark_reports_every_figure(capsys):
    import benchmark_train

    results = benchmark_train.main(["--small", "--device", "cpu", "--modes", "eager", "--images",
                                    "24", "--batch_size", "16", "--workers", "0,1", "--steps",
                                    "1", "--warmup", "1", "--profile_steps", "1"])
    out = capsys.readouterr().out
    assert "24 images x 36 x 2048, 120 captions" in out
    for label in ("(a) data pipeline, 0 worker(s)", "(a) data pipeline, 1 worker(s)",
                  "(b) model step, eager", "(c) end to end, eager", "(d) GPU busy, eager",
                  "host operators, eager"):
        assert label in out, label
    assert "n/a (no GPU)" in out
    assert set(results["data"]) == {0, 1} and min(results["data"].values()) > 0
    eager = results["eager"]
    assert eager["step_s"] > 0 and eager["e2e"] > 0 and eager["ops"] > 100
