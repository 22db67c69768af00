"""Training on several ranks (torchrun, DDP, gloo on CPU) against one process on the same batches.

Two processes stand for two GPUs: the global-batch loss must give the loss and the updated
weights of one process training on the whole batch; ``--local_negatives`` those of per-rank
negatives computed by hand; only rank 0 may write the run folder; and a checkpoint of two ranks
must continue in one process as it does on two.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import train as train_cli
from lib.checkpoint import BEST, LATEST, load_checkpoint, load_weights
from lib.config import model_config, parse_train_args
from lib.data import build_tokenizer, eval_loaders, load_vocab
from lib.data.batch import Batch
from lib.data.pairs import EpochBatchSampler
from lib.data.sampling import RankBatches
from lib.distributed import AgreedStop, World, local_batch_size, setup, teardown
from lib.engine import evaluate, train_one_epoch
from lib.errors import UserError
from lib.global_batch import GlobalBatchLoss
from lib.losses import ContrastiveLoss, InfoNCELoss
from lib.masking import sync_batch_norms
from lib.models import build_model

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
# pair -> image (images 1 and 2 have a pair on each rank), kept regions and caption tokens;
# rank 0's slice is padded to 5 regions and 7 tokens, rank 1's to 6 and 6
IMG_IDS = [0, 1, 2, 0, 3, 1, 4, 2]
IMG_LENS = [5, 3, 5, 2, 4, 6, 1, 5]
CAP_LENS = [5, 3, 7, 4, 6, 2, 5, 3]
# case -> (criterion, --local_negatives, image encoder); each trains two steps: all negatives,
# then the hardest. basic_mlp has a BatchNorm layer, synchronised over the ranks (--sync_bn).
CASES = {
    "hinge, global": (ContrastiveLoss(margin=0.2), False, "basic"),
    "hinge same_image, local": (ContrastiveLoss(margin=0.2, positives="same_image"), True,
                                "basic"),
    "infonce same_image, global": (InfoNCELoss(temperature=0.1, positives="same_image"), False,
                                   "basic"),
    "infonce, local": (InfoNCELoss(temperature=0.1), True, "basic"),
    "hinge, global, BatchNorm": (ContrastiveLoss(margin=0.2), False, "basic_mlp"),
}


def _tiny_model(encoder: str) -> nn.Module:
    """BiGRU + ``encoder``, mixed coding: its learnable scalar is used outside DDP's forward,
    and an unused parameter stands for a BERT pooler that never gets a gradient."""
    torch.manual_seed(0)
    args = parse_train_args(["--text_enc_type", "bigru", "--embed_size", "16", "--word_dim", "8",
                             "--coding_type", "MixedCoding", "--precomp_enc_type", encoder])
    model = build_model(model_config(args, img_dim=12), vocab_size=20)
    model.register_parameter("unused", nn.Parameter(torch.ones(3)))
    return model


def _batch() -> Batch:
    """The global batch: 8 pairs of 5 images, region and caption lengths varying."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(5, 6, 12, generator=gen)  # (images, regions, img_dim)
    images = torch.stack([table[i] * (torch.arange(6) < n)[:, None]
                          for i, n in zip(IMG_IDS, IMG_LENS, strict=True)])  # (8, 6, 12)
    tokens = torch.randint(4, 20, (8, 7), generator=gen)
    captions = tokens * (torch.arange(7) < torch.tensor(CAP_LENS)[:, None])  # (8, 7), pad 0
    return Batch(images, torch.tensor(IMG_LENS), captions, torch.tensor(CAP_LENS),
                 torch.arange(8), torch.tensor(IMG_IDS))


def _slice(batch: Batch, rank: int) -> Batch:
    """Rank ``rank``'s pairs, padded to their own longest, as its loader would collate them."""
    rows = slice(rank * 8 // WORLD, (rank + 1) * 8 // WORLD)
    regions, tokens = int(batch.img_lens[rows].max()), int(batch.cap_lens[rows].max())
    return Batch(batch.images[rows, :regions], batch.img_lens[rows], batch.captions[rows, :tokens],
                 batch.cap_lens[rows], batch.cap_ids[rows], batch.img_ids[rows])


class _OneBatch(list):
    """A loader of one batch, every epoch."""

    def set_epoch(self, epoch, start=0):
        pass


class _PerSliceLoss(nn.Module):
    """Per-rank negatives computed by hand on the whole batch's scores: each rank's diagonal
    block is the score matrix of its slice alone; hinge losses add up, InfoNCE's average."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, scores, img_ids, max_violation=False):
        blocks = [slice(r * 8 // WORLD, (r + 1) * 8 // WORLD) for r in range(WORLD)]
        losses = [self.criterion(scores[b, b], img_ids[b], max_violation) for b in blocks]
        total = torch.stack(losses).sum()
        return total / WORLD if isinstance(self.criterion, InfoNCELoss) else total


def _two_steps(model, trained, criterion, batch) -> tuple[list[float], dict]:
    """Epoch 0 (all negatives) and epoch 1 (hardest) of one step each, plain SGD and no clip,
    so the weights show the gradients themselves; returns the losses and the weights."""
    args = Namespace(max_violation=False, vse_mean_warmup_epochs=1, grad_clip=0.0, log_step=10,
                     no_progress=True, batch_size=8, compile=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = [train_one_epoch(trained, criterion, _OneBatch([batch]), optimizer,
                              torch.device("cpu"), epoch, args)["loss"] for epoch in (0, 1)]
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Signals:
    """A stop request that only rank 1 received (signal 15, SIGTERM)."""

    def __init__(self, rank: int):
        self.signum = 15 if rank == 1 else None


def _rank_steps(rank: int, port: int, out: str) -> None:
    """One rank of the spawned pair: every case through DDP and GlobalBatchLoss, then a stop
    request that all ranks must act on together."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    setup(World.from_environment(), "cpu")
    try:
        results = {}
        for name, (criterion, local, encoder) in CASES.items():
            model = _tiny_model(encoder)
            sync_batch_norms(model)
            ddp = DistributedDataParallel(model, static_graph=True)
            loss = GlobalBatchLoss(criterion, local_negatives=local)
            results[name] = _two_steps(model, ddp, loss, _slice(_batch(), rank))
        stop = AgreedStop(_Signals(rank), torch.device("cpu"), every=3)
        results["stop"] = [stop.requested for _ in range(4)], stop.exit_code
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        teardown()


def test_a_step_on_two_ranks_equals_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_rank_steps, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, (criterion, local, encoder) in CASES.items():
        model = _tiny_model(encoder)
        reference = _PerSliceLoss(criterion) if local else criterion
        losses, weights = _two_steps(model, model, reference, _batch())
        assert losses[0] != pytest.approx(losses[1], rel=1e-3), name  # the step changed things
        for rank_losses, rank_weights in (result[name] for result in ranks):
            assert rank_losses == pytest.approx(losses, rel=1e-5), name
            for key, value in weights.items():
                torch.testing.assert_close(rank_weights[key], value, rtol=1e-5, atol=1e-6,
                                           msg=lambda m, n=name, k=key: f"{n}, {k}: {m}")
        initial = _tiny_model(encoder).state_dict()
        assert max((weights[k] - initial[k]).abs().max() for k in weights) > 1e-3, name
    global_hinge, local_hinge = ranks[0]["hinge, global"][0], ranks[0]["hinge same_image, local"][0]
    assert global_hinge[0] > local_hinge[0]  # 8 pairs have more negatives than 4
    # rank 1 alone was signalled; both ranks stop at the same (third) step, exit 128 + 15
    assert [result["stop"] for result in ranks] == [([False, False, True, True], 143)] * WORLD


def _keys(sampler) -> list[tuple[int, list[int]]]:
    return [(epoch, indices.tolist()) for epoch, indices in sampler]


def _joined(ranks) -> list[tuple[int, list[int]]]:
    """The ranks' slices of each batch laid end to end in rank order."""
    per_rank = [_keys(rank) for rank in ranks]
    return [(keys[0][0], sum((k[1] for k in keys), []))
            for keys in zip(*per_rank, strict=True)]


def test_each_rank_takes_its_slice_of_the_same_global_batches():
    one = EpochBatchSampler(50, 12, seed=3)
    ranks = [RankBatches(EpochBatchSampler(50, 12, seed=3), r, world_size=3) for r in range(3)]
    assert len(one) == 4 and all(len(r) == 4 for r in ranks)  # 50 // 12, the rest dropped
    assert _joined(ranks) == _keys(one)
    epoch0 = _keys(one)
    for sampler in (one, *ranks):  # resumed in epoch 2 after its first batch
        sampler.set_epoch(2, start=1)
    assert _joined(ranks) == _keys(one) and len(_keys(one)) == 3
    assert [indices for _, indices in _keys(one)] != [indices for _, indices in epoch0[1:]]


def test_the_global_batch_must_split_evenly_among_the_ranks():
    assert local_batch_size(128, World(rank=1, size=4)) == 32
    with pytest.raises(UserError, match="--batch_size 30 is the global batch .* 4 ranks"):
        local_batch_size(30, World(rank=0, size=4))


# Imported by the torchrun workers (PYTHONPATH): a rank other than 0 that creates, changes or
# removes anything under $GUARDED_FOLDER raises, and its run fails.
GUARD = """
import os, sys
if os.environ.get("RANK", "0") != "0":
    ROOT = os.environ["GUARDED_FOLDER"]
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    CHANGES = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate")

    def guard(event, args):
        if event == "open":
            writes = any(c in (args[1] or "") for c in "wax+") or bool((args[2] or 0) & WRITE)
        else:
            writes = event in CHANGES
        path = args[0] if writes else None
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(ROOT):
            raise PermissionError(f"rank {os.environ['RANK']} wrote {path}")

    sys.addaudithook(guard)
    print(f"rank {os.environ['RANK']}: writes under {ROOT} refused", file=sys.stderr)
"""


def _train_args(root: Path, run: Path, *extra) -> list[str]:
    return ["--data_path", str(root / "toy"), "--data_name", "toy", "--vocab_path",
            str(root / "vocab"), "--text_enc_type", "bigru", "--embed_size", "32", "--word_dim",
            "16", "--batch_size", "40", "--workers", "0", "--model_name", str(run),
            "--no_progress", "--log_step", "5", *extra]


def _torchrun(guard: Path, runs: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{guard}{os.pathsep}{REPO}", "GUARDED_FOLDER": str(runs),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", str(REPO / "train.py"), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rank 1: writes under" in done.stderr  # the guard was in place
    return done


def test_two_ranks_write_one_run_that_resumes_on_one_or_two(tiny_toy, tmp_path):
    guard, runs = tmp_path / "guard", tmp_path / "runs"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    first = runs / "first"
    done = _torchrun(guard, runs, *_train_args(tiny_toy, first, "--num_epochs", "1"))
    assert sorted(p.name for p in first.iterdir()) == [
        "checkpoint.pth", "environment.json", "log", "model_best.pth", "train.log"]
    assert len(list((first / "log").iterdir())) == 1  # one TensorBoard writer
    log = (first / "train.log").read_text()
    assert log.count("epoch 0: loss") == 1 and "2 ranks, 20 pairs each" in log
    assert "[rank 1]" not in done.stdout + done.stderr  # rank 1 had nothing to report

    # the sharded validation equals one process scoring the whole dev split (the weights
    # also load with the prefix of a DDP-wrapped model's state dict)
    ckpt = load_checkpoint(first / LATEST)
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])
    args = parse_train_args(_train_args(tiny_toy, tmp_path / "unused"))
    vocab = load_vocab(args.vocab_path, args.data_name)
    model = build_model(model_config(args, 256), len(vocab))
    load_weights(model, {f"module.{k}": v for k, v in ckpt["model"].items()}, "ddp.pth")
    images, captions, _ = eval_loaders(args.data_path, "dev", 256, build_tokenizer(args, vocab),
                                       40, 0)
    metrics = evaluate(model, images, captions, torch.device("cpu"), progress=False)
    assert metrics == pytest.approx({k: v for k, v in ckpt["best"].items() if k != "epoch"})

    # epoch 2 on two ranks and in one process, both from the two-rank checkpoint
    resume = ("--num_epochs", "2", "--resume", str(first / LATEST))
    _torchrun(guard, runs, *_train_args(tiny_toy, runs / "two", *resume))
    train_cli.main(_train_args(tiny_toy, runs / "one", *resume))
    two, one = load_checkpoint(runs / "two" / LATEST), load_checkpoint(runs / "one" / LATEST)
    assert two["epoch"] == one["epoch"] == 2
    for key, value in two["model"].items():
        torch.testing.assert_close(one["model"][key], value, rtol=1e-4, atol=1e-6)
    assert one["best"] == pytest.approx(two["best"])
    assert (runs / "two" / BEST).is_file() and (runs / "one" / BEST).is_file()
    moved = max(np.abs((two["model"][k] - ckpt["model"][k]).numpy()).max() for k in ckpt["model"])
    assert moved > 1e-3  # epoch 2 trained


SCRIPT_ENV = ("NGPU", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DATASET", "FEATURES")
TORCHRUN = ["-m", "torch.distributed.run"]


@pytest.mark.parametrize("env,launch", [
    ({}, ["train.py"]),
    ({"NGPU": "2"}, [*TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py"]),
    ({"NGPU": "4", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5"},
     [*TORCHRUN, "--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.5",
      "--master_port=29500", "train.py"]),
])
def test_train_script_starts_torchrun_for_several_gpus_or_nodes(env, launch):
    """``PYTHON=echo`` prints the command the script would run."""
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    done = subprocess.run(["sh", str(REPO / "scripts" / "train.sh"), "--seed", "1"],
                          env={**clean, "PYTHON": "echo", **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:len(launch)] == launch and words[-2:] == ["--seed", "1"]


def test_train_script_asks_each_node_for_its_rank():
    clean = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    done = subprocess.run(["sh", str(REPO / "scripts" / "train.sh")],
                          env={**clean, "PYTHON": "echo", "NNODES": "2"}, capture_output=True,
                          text=True)
    assert done.returncode != 0 and "set NODE_RANK" in done.stderr


def test_training_benchmark_reports_total_and_per_gpu_rates_under_torchrun():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={WORLD}", str(REPO / "scripts/benchmark_train.py"),
                           "--small", "--device", "cpu", "--modes", "eager", "--images", "24",
                           "--batch_size", "16", "--workers", "0", "--steps", "1", "--warmup",
                           "1", "--profile_steps", "1"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("device cpu") == 1 and "2 rank(s)" in done.stdout  # rank 0 only
    for figure in ("(b) model step", "(c) end to end"):
        rates = re.search(re.escape(figure) + r".*?(\d+) pairs/s in total, (\d+) per GPU "
                          r"\(2 ranks\)", done.stdout)
        assert rates and abs(int(rates[1]) / WORLD - int(rates[2])) <= 1, figure
