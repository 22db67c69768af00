"""Several processes training one model: torchrun's environment, the process group, collectives.

torchrun starts one process per GPU (``--nproc_per_node``; several nodes through its rendezvous
flags) and tells each its place in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. A process started
without them is the whole world (rank 0 of 1) and never creates a process group, so every helper
here is a no-op, or the identity, in a plain ``python train.py`` run.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import UserError
from .precision import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, as torchrun describes it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU of this process on its node

    @classmethod
    def from_environment(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def local_batch_size(batch_size: int, world: World) -> int:
    """Each rank's share of the global ``--batch_size``; refused unless it splits evenly (the
    global batch, hence the loss and the learning rate, must not depend on the rank count)."""
    if batch_size % world.size:
        raise UserError(f"--batch_size {batch_size} is the global batch and must split evenly "
                        f"among the {world.size} ranks of torchrun; use a multiple of "
                        f"{world.size}")
    return batch_size // world.size


def seed_rank(seed: int, epoch: int, world: World) -> None:
    """Give ranks other than 0 their own global RNG stream (dropout), drawn from (seed, rank,
    epoch): with one stream, every rank would draw the same masks for its different pairs.
    Rank 0 keeps the stream a single process would use, the one checkpoints store."""
    if world.rank:
        state = np.random.SeedSequence([seed, world.rank, epoch]).generate_state(1)
        torch.manual_seed(int(state[0]))


def setup(world: World, device_name: str | None) -> torch.device:
    """This process's device; with several ranks, also join the process group: NCCL between
    GPUs (rank ``r`` of a node on ``cuda:LOCAL_RANK``), gloo between CPU processes.

    Any CUDA ``--device`` means this node's GPU ``LOCAL_RANK``: torchrun passes every rank the
    same flags, and two ranks must never share a GPU.
    """
    device = resolve_device(device_name)
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. writes a file); the others run it once it is done
    (e.g. find the file there)."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def largest(values: tuple[int, ...], device: torch.device) -> list[int]:
    """Each of ``values``, the largest over all ranks (one all-reduce, one host sync)."""
    found = torch.tensor(values, device=device)
    if dist.is_initialized():
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return found.tolist()


class _Sum(torch.autograd.Function):
    """All ranks' ``x`` summed, on every rank. Every rank's sum feeds that rank's loss, so the
    gradient of the sum of the losses with respect to ``x`` is the ranks' gradients summed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class _Gather(torch.autograd.Function):
    """All ranks' ``x (b, *S)`` (equal shapes) in rank order, ``(world * b, *S)``, on every
    rank. Each rank's copy feeds its own loss, so the gradient of the sum of the losses with
    respect to this rank's ``x`` is its slice of the gradients summed over the ranks (an
    all-reduce, then the slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()  # (world * b, *S)
        dist.all_reduce(total)
        return total.chunk(world_size())[rank()]


def summed_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all ranks, on every rank, with gradients (see :class:`_Sum`); ``x``
    itself in a single process."""
    return _Sum.apply(x) if world_size() > 1 else x


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x (n_r, *S)`` in rank order: ``(sum n_r, *S)``; ``n_r`` may differ, ``S``
    may not. No gradient flows back."""
    if not dist.is_initialized():
        return x
    counts = torch.zeros(world_size(), dtype=torch.long, device=x.device)
    counts[rank()] = len(x)
    dist.all_reduce(counts)
    padded = x.new_zeros(int(counts.max()), *x.shape[1:])  # all_gather needs equal shapes
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(len(counts))]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts.tolist(), strict=True)])


def gather_equal(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x (b, *S)`` (the same shape on all ranks) in rank order, ``(world * b,
    *S)``; with gradients when ``x`` has them (see :class:`_Gather`): backward, each rank
    receives the gradient of the sum of every rank's loss with respect to its own ``x``."""
    return _Gather.apply(x) if world_size() > 1 else x


def gather_sequences(x: torch.Tensor, length: int) -> torch.Tensor:
    """Every rank's ``x (b, L_r, D)``, zero padded to ``(b, length, D)``, in rank order:
    ``(world * b, length, D)``, with gradients (see :func:`gather_equal`)."""
    return gather_equal(F.pad(x, (0, 0, 0, length - x.shape[1])))


class AgreedStop:
    """A stop request (:class:`lib.interrupt.StopRequest`) that every rank acts on at the same
    step: a rank that stopped alone would leave the others waiting in the next step's
    collectives.

    ``train_one_epoch`` asks ``requested`` once per step; every ``every``-th time the ranks
    compare their signals (an all-reduce, hence a host sync, every ``every`` steps) and all
    stop when any of them received one. torchrun passes a signal on to every rank.
    """

    def __init__(self, stop, device: torch.device, every: int = 10):
        self.stop, self.device, self.every = stop, device, every
        self.asked, self.signum = 0, None

    @property
    def requested(self) -> bool:
        self.asked += 1
        if self.asked % self.every == 0:
            signum = torch.tensor(self.stop.signum or 0, device=self.device)
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
            self.signum = int(signum) or None
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)
