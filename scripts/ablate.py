"""Ablation driver: train each variant for several seeds, evaluate on test, tabulate.

    python scripts/ablate.py --data_path data/compositional --out runs/ablate_compositional \\
        --extra "--text_enc_type bigru --img_dim 256 --embed_size 256 --word_dim 128 \\
                 --num_epochs 5 --lr_update 4"
    python scripts/ablate.py --data_path data/toy --variants chan asdg --seeds 3 --out runs/abl

Each (variant, seed) is one ``train.py`` run in ``OUT/runs/<variant>/seed<S>`` followed by
``eval.py`` on its ``model_best.pth``, both called in this process with their output in
``train.out`` / ``eval_<split>.out`` there. A run whose metrics file exists is not trained
again, and one whose training finished is only evaluated, so an interrupted ablation continues
where it stopped (a run cut off mid-training restarts from scratch, which keeps its train time
honest).
The table goes to stdout and to ``OUT/ablation.{json,md}``: per variant, test rsum as mean ± the
standard deviation over seeds (ddof 0; for two seeds half their difference), mean R@1 both ways,
mean best dev rsum, the best epoch of each seed and the mean wall time of ``train.py``
(validation included).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eval as eval_cli  # noqa: E402
import train as train_cli  # noqa: E402
from lib.checkpoint import BEST, atomic_write  # noqa: E402

# train.py flags of each variant; --extra flags come after them (and so override them).
# Each "+module" adds one of asdg's modules, in asdg's (the seed's) form, to chan.
VARIANTS = {
    "chan": ["--config", "chan"],
    "chan+APPM": ["--config", "chan", "--fusion", "appm", "--appm_variant", "seed"],
    "chan+SASE": ["--config", "chan", "--precomp_enc_type", "sase", "--sase_variant", "seed"],
    "chan+GNN": ["--config", "chan", "--text_gnn"],
    "asdg": ["--config", "asdg"],
    "asdg (ours)": ["--config", "asdg", "--appm_variant", "ours", "--sase_variant", "ours",
                    "--attn_dropout", "0.1", "--layer_scale", "0.1"],
    "asdg+LayerScale": ["--config", "asdg", "--layer_scale", "0.1"],
    "chan+GNN+LayerScale": ["--config", "chan", "--text_gnn", "--layer_scale", "0.1"],
    "chan_gru": ["--config", "chan_gru"],
    "vse": ["--config", "vse"],
}
DEFAULT_VARIANTS = ["chan", "chan+APPM", "chan+SASE", "chan+GNN", "asdg", "vse"]
SUMMARY = "train_summary.json"  # written by this driver once a run's training has finished


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True, help="dataset folder holding precomp/")
    p.add_argument("--data_name", help="train.py --data_name (default: the folder's name)")
    p.add_argument("--vocab_path", help="train.py --vocab_path (default: train.py's default)")
    p.add_argument("--out", required=True, type=Path,
                   help="gets runs/<variant>/seed<S>/, ablation.json and ablation.md")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                   metavar="NAME", help=f"variants to run, of: {' '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=2, help="seeds per variant")
    p.add_argument("--first_seed", type=int, default=2022, help="seeds are first_seed, +1, ...")
    p.add_argument("--extra", default="", help="flags for every train.py run, one string "
                   "(write --extra=--text_gnn when it holds a single flag)")
    p.add_argument("--split", default="test", help="split the best checkpoints are evaluated on")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    args.data_name = args.data_name or Path(args.data_path).name
    return args


def slug(variant: str) -> str:
    """A folder name for a variant ("chan+APPM" -> "chan_appm")."""
    return re.sub(r"[^a-z0-9]+", "_", variant.lower()).strip("_")


def train_argv(args, variant: str, seed: int, folder: Path) -> list[str]:
    data = ["--data_path", args.data_path, "--data_name", args.data_name]
    if args.vocab_path:
        data += ["--vocab_path", args.vocab_path]
    return [*VARIANTS[variant], *shlex.split(args.extra), *data, "--seed", str(seed),
            "--model_name", str(folder), "--no_progress"]


def run_cli(main, argv: list[str], log_file: Path):
    """Call a command line's ``main(argv)`` in this process (the interpreter and torch start
    once for the whole ablation) with its output in ``log_file``; returns what it returns and
    its wall time in seconds. A failure stops the ablation, naming the log."""
    start = time.perf_counter()
    with log_file.open("w") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            result = main(argv)
        except (Exception, SystemExit) as err:  # train/eval raise; argparse exits
            if not isinstance(err, SystemExit):  # argparse has printed its message
                traceback.print_exc()
            failure = err
        else:
            failure = None
    if failure is not None:
        tail = "\n".join(log_file.read_text().splitlines()[-15:])
        raise SystemExit(f"error: {main.__module__}.py failed ({failure!r}), log {log_file}:\n"
                         f"{tail}")
    return result, time.perf_counter() - start


def write_json(path: Path, data) -> None:
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def train_once(args, variant: str, seed: int, folder: Path) -> dict:
    """Train the run unless its training already finished; returns its train summary."""
    argv = train_argv(args, variant, seed, folder)
    summary_file = folder / SUMMARY
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if summary["train_argv"] != argv:
            raise SystemExit(f"error: {folder} was trained with other flags "
                             f"({shlex.join(summary['train_argv'])}); remove it or choose "
                             f"another --out")
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    print(f"training {variant}, seed {seed} (log: {folder / 'train.out'})", flush=True)
    # --overwrite: a run cut off mid-training left checkpoints that train.py would refuse
    best, seconds = run_cli(train_cli.main, [*argv, "--overwrite"], folder / "train.out")
    summary = {"train_argv": argv, "best_epoch": best["epoch"], "dev_rsum": best["rsum"],
               "train_seconds": round(seconds, 1)}
    write_json(summary_file, summary)
    return summary


def evaluate_once(args, folder: Path) -> dict:
    """Test metrics of the run's best checkpoint (read back when already computed)."""
    metrics_file = folder / f"metrics_{args.split}.json"
    if not metrics_file.is_file():
        print(f"evaluating {folder / BEST} on {args.split}", flush=True)
        run_cli(eval_cli.main, ["--model_path", str(folder / BEST), "--data_path",
                                args.data_path, "--split", args.split, "--metrics_out",
                                str(metrics_file), "--no_progress"],
                    folder / f"eval_{args.split}.out")
    metrics = json.loads(metrics_file.read_text())
    metrics.pop("environment", None)  # kept in the metrics file; the table compares recalls
    return metrics


def run_variant(args, variant: str) -> list[dict]:
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        folder = args.out / "runs" / slug(variant) / f"seed{seed}"
        summary = train_once(args, variant, seed, folder)
        runs.append({"seed": seed, "folder": str(folder), **summary,
                     args.split: evaluate_once(args, folder)})
    return runs


def summarise(variant: str, runs: list[dict], split: str) -> dict:
    """One table row: means (and the test rsum's spread) over the seeds of one variant."""
    def mean(values) -> float:
        return round(float(np.mean(values)), 2)

    rsum = [run[split]["rsum"] for run in runs]
    return {"variant": variant, "seeds": [run["seed"] for run in runs],
            "rsum_mean": mean(rsum), "rsum_std": round(float(np.std(rsum)), 2),
            "r1_i2t_mean": mean([run[split]["r1"] for run in runs]),
            "r1_t2i_mean": mean([run[split]["r1i"] for run in runs]),
            "dev_rsum_mean": mean([run["dev_rsum"] for run in runs]),
            "best_epochs": [run["best_epoch"] for run in runs],
            "train_seconds_mean": mean([run["train_seconds"] for run in runs])}


def markdown(report: dict) -> str:
    split = report["split"]
    lines = [f"Data `{report['data_path']}`, {split} split, seeds {report['seeds']}; "
             f"train flags `{report['extra']}`.", "",
             f"| variant | seeds | {split} rsum | R@1 i2t | R@1 t2i | dev rsum | best epoch | "
             "train time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        epochs = ", ".join(str(e) for e in row["best_epochs"])
        lines.append(f"| {row['variant']} | {len(row['seeds'])} | {row['rsum_mean']:.1f} ± "
                     f"{row['rsum_std']:.1f} | {row['r1_i2t_mean']:.1f} | "
                     f"{row['r1_t2i_mean']:.1f} | {row['dev_rsum_mean']:.1f} | {epochs} | "
                     f"{row['train_seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs = {variant: run_variant(args, variant) for variant in args.variants}
    report = {"data_path": args.data_path, "data_name": args.data_name, "split": args.split,
              "extra": args.extra,
              "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
              "rows": [summarise(v, r, args.split) for v, r in runs.items()], "runs": runs}
    write_json(args.out / "ablation.json", report)
    table = markdown(report)
    atomic_write(args.out / "ablation.md", lambda f: f.write(table.encode()))
    print(table, end="")
    return report


if __name__ == "__main__":
    main()
