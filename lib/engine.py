"""One training epoch and one validation pass, each returning a dict of statistics.

The training step queues its work without waiting for the device: the next batch is copied
while the step runs (``DevicePrefetcher``), gradient clipping scales on the device, and the loss
stays on the device until a log line (every ``--log_step`` steps) or the end of the epoch
needs it. ``--compile`` runs ``batch_loss`` through ``torch.compile``; eager mode is the
reference it is tested against.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .data.batch import Batch
from .data.pairs import DevicePrefetcher
from .errors import NonFiniteLoss
from .evaluation import recall_metrics, score_split, score_split_sharded
from .global_batch import GlobalBatchLoss
from .precision import autocast

log = logging.getLogger(__name__)


def learning_rate_factor(epoch: int, lr_update: int) -> float:
    """Step decay as published: x0.1 from epoch ``lr_update`` on."""
    return 0.1 if epoch >= lr_update else 1.0


def set_learning_rate(optimizer, base_lr: float, epoch: int, lr_update: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_factor"] * learning_rate_factor(epoch, lr_update)


def hardest_negatives(args, epoch: int) -> bool:
    """Whether epoch ``epoch`` uses only the hardest negative: after the warm-up epochs that sum
    over all negatives, or always with ``--max_violation``."""
    return args.max_violation or epoch >= args.vse_mean_warmup_epochs


def batch_loss(model, criterion, batch: Batch, max_violation: bool) -> torch.Tensor:
    """Encode a batch, score every image against every caption, apply the loss.

    Scoring happens here rather than in the model's forward, so the scores a loss sees could
    also include embeddings from elsewhere (other devices, a queue of earlier batches). Under
    torchrun ``model`` is wrapped in DDP and ``criterion`` is a :class:`GlobalBatchLoss`, which
    scores this rank's slice of the batch against the embeddings of every rank.
    """
    emb = model(batch.images, batch.img_lens, batch.captions, batch.cap_lens)
    scorer = model.module if isinstance(model, DistributedDataParallel) else model
    # Scores and loss in float32 even under autocast: bf16 cosines near 1 are spaced ~0.004,
    # a tenth of the hinge margin, and would tie hardest negatives (the encoders stay in bf16).
    with torch.autocast(batch.images.device.type, enabled=False):
        if isinstance(criterion, GlobalBatchLoss):  # torchrun: the batch is a slice
            return criterion(scorer.score, emb.float(), batch.img_ids, max_violation)
        scores = scorer.score(emb.float())  # (B, B): rows images, columns captions
        return criterion(scores, batch.img_ids, max_violation=max_violation)


def apply_update(optimizer, params: list, grad_clip: float) -> None:
    """Clip the gradient norm to ``grad_clip`` (0: off) and step. The clip scales the gradients
    on the device by ``min(1, grad_clip / norm)``, so the host never reads the norm."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, error_if_nonfinite=False)
    optimizer.step()


@functools.cache
def compiled(fn, mode: str = "default"):
    """``fn`` through ``torch.compile``, built once per process and mode: dynamo specialises it
    per model and optimizer, loss switch, learning rate and (bucketed) batch shape."""
    return torch.compile(fn, mode=None if mode == "default" else mode)


def begin_epoch(loader, epoch: int, start: int = 0) -> int:
    """Tell the loader which epoch to draw (its order and augmentation depend on it) and from
    which batch: the training batches take both, a per-item dataset (raw images) only the
    epoch, and then starts the epoch over. Returns the batch the epoch starts at."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch, start)
        return start
    loader.dataset.set_epoch(epoch)
    if start:
        log.warning("this loader cannot start mid-epoch: epoch %d starts again from its first "
                    "batch", epoch)
    return 0


class TrainStep:
    """One optimisation step on a batch already on the device. Returns the detached loss
    without reading it, so the host queues the next step without waiting for this one.

    ``compile_mode`` (``--compile_mode``), when given, compiles the model + loss
    (:func:`batch_loss`) and the update (:func:`apply_update`: clip + AdamW step, then with the
    optimizer's foreach form, which inductor fuses); eager mode is the reference.
    """

    def __init__(self, model, criterion, optimizer, grad_clip: float, precision: str, device,
                 compile_mode: str | None = None):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.grad_clip, self.precision, self.device = grad_clip, precision, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.loss_fn, self.update = batch_loss, apply_update
        if compile_mode is not None:
            self.loss_fn, self.update = compiled(batch_loss, compile_mode), compiled(
                apply_update, compile_mode)

    def __call__(self, batch: Batch, max_violation: bool) -> torch.Tensor:
        with autocast(self.precision, self.device):
            loss = self.loss_fn(self.model, self.criterion, batch, max_violation)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.update(self.optimizer, self.params, self.grad_clip)
        return loss.detach()


def train_one_epoch(model, criterion, loader, optimizer, device, epoch: int, args,
                    writer=None, precision: str = "fp32", start: int = 0, stop=None) -> dict:
    """Train over ``loader`` once, from batch ``start`` on; returns mean loss, steps,
    throughput, and ``done``: the number of batches of the epoch behind the model now.

    The loss is summed on the device; the host reads it once per ``--log_step`` steps (the mean
    over those steps) and once at the end. When ``stop`` (a :class:`lib.interrupt.StopRequest`)
    is requested, the epoch ends after the step in progress, with ``done < len(loader)``.
    """
    model.train()
    max_violation = hardest_negatives(args, epoch)
    start = begin_epoch(loader, epoch, start)
    step = TrainStep(model, criterion, optimizer, args.grad_clip, precision, device,
                     args.compile_mode if args.compile else None)
    step0 = epoch * len(loader) + start
    total_loss, window = torch.zeros((), device=device), torch.zeros((), device=device)
    steps, begin = 0, time.perf_counter()
    bar = tqdm(DevicePrefetcher(loader, device), desc=f"epoch {epoch}", disable=args.no_progress,
               leave=False)
    recent = []  # (batch of the epoch, loss, caption ids) since the last finiteness check
    for i, batch in enumerate(bar):
        loss = step(batch, max_violation)
        window += loss
        recent.append((start + i, loss, batch.cap_ids))
        steps += 1
        if (i + 1) % args.log_step == 0:
            log_loss(bar, writer, optimizer, window, args.log_step, step0 + i + 1)
            check_finite(recent, epoch)  # the host has just waited for these steps anyway
            total_loss += window
            window.zero_()
        if stop is not None and stop.requested:
            break
    check_finite(recent, epoch)
    elapsed = time.perf_counter() - begin
    mean_loss = ((total_loss + window) / max(1, steps)).item()
    return {"loss": mean_loss, "steps": steps, "seconds": elapsed, "done": start + steps,
            "pairs_per_second": steps * args.batch_size / max(elapsed, 1e-9)}


def check_finite(recent: list, epoch: int) -> None:
    """Raise :class:`NonFiniteLoss` naming the first step of ``recent`` whose loss is NaN or
    infinite and its batch's caption ids; then forget ``recent``."""
    if not recent:
        return
    losses = torch.stack([loss for _, loss, _ in recent])  # (n,)
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        index, loss, cap_ids = recent[int(bad.nonzero()[0])]
        ids = cap_ids.tolist()
        shown = ", ".join(map(str, ids[:12])) + (", ..." if len(ids) > 12 else "")
        raise NonFiniteLoss(f"training loss is {float(loss)} at epoch {epoch}, batch {index} "
                            f"(caption ids {shown}); check those captions and their images' "
                            f"features, or lower --learning_rate")
    recent.clear()


def log_loss(bar, writer, optimizer, window: torch.Tensor, steps: int, global_step: int) -> None:
    """Show and record the mean loss of the last ``steps`` steps (one host sync)."""
    value = (window / steps).item()
    bar.set_postfix(loss=f"{value:.3f}")
    if writer is not None:
        writer.add_scalar("train/loss", value, global_step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)


def evaluate(model, image_loader, caption_loader, device, precision: str = "fp32",
             progress: bool = True, sharded: bool = False) -> dict:
    """Recall metrics of ``model`` on one split, scored like ``eval.py`` does. ``sharded``: the
    loaders hold this rank's share of the split, and every rank gets the whole split's metrics."""
    score = score_split_sharded if sharded else score_split
    return recall_metrics(score(model, image_loader, caption_loader, device, precision, progress))
