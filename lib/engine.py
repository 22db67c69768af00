"""One training epoch and one validation pass, each returning a dict of statistics."""

from __future__ import annotations

import logging
import math
import time

import torch
from tqdm import tqdm

from .data.batch import Batch
from .evaluation import recall_metrics, score_split
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
    also include embeddings from elsewhere (other devices, a queue of earlier batches).
    """
    emb = model(batch.images, batch.img_lens, batch.captions, batch.cap_lens)
    # Scores and loss in float32 even under autocast: bf16 cosines near 1 are spaced ~0.004,
    # a tenth of the hinge margin, and would tie hardest negatives (the encoders stay in bf16).
    with torch.autocast(batch.images.device.type, enabled=False):
        scores = model.score(emb.float())  # (B, B): rows images, columns captions
        return criterion(scores, batch.img_ids, max_violation=max_violation)


def train_one_epoch(model, criterion, loader, optimizer, device, epoch: int, args,
                    writer=None, precision: str = "fp32") -> dict:
    """Train over ``loader`` once; returns mean loss, steps, and throughput."""
    model.train()
    max_violation = hardest_negatives(args, epoch)
    loader.dataset.set_epoch(epoch)
    step0 = epoch * len(loader)
    total_loss, steps, start = torch.zeros((), device=device), 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=args.no_progress, leave=False)
    for i, batch in enumerate(bar):
        batch = batch.to(device, non_blocking=True)
        with autocast(precision, device):
            loss = batch_loss(model, criterion, batch, max_violation)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        total_loss += loss.detach()
        steps += 1
        if (i + 1) % args.log_step == 0:
            value = loss.item()
            bar.set_postfix(loss=f"{value:.3f}")
            if writer is not None:
                writer.add_scalar("train/loss", value, step0 + i + 1)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step0 + i + 1)
    elapsed = time.perf_counter() - start
    mean_loss = (total_loss / max(1, steps)).item()
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"epoch {epoch}: training loss is {mean_loss}")
    return {"loss": mean_loss, "steps": steps, "seconds": elapsed,
            "pairs_per_second": steps * args.batch_size / max(elapsed, 1e-9)}


def evaluate(model, image_loader, caption_loader, device, precision: str = "fp32",
             progress: bool = True) -> dict:
    """Recall metrics of ``model`` on one split, scored like ``eval.py`` does."""
    return recall_metrics(score_split(model, image_loader, caption_loader, device, precision,
                                      progress))
