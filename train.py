"""Train CHAN-ASDG: ``python train.py --help``. Wiring only; the work lives in ``lib/``."""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

from lib.checkpoint import (
    BEST,
    LATEST,
    carry_best,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lib.config import model_keys, parse_train_args
from lib.data import (
    DataError,
    build_tokenizer,
    eval_loaders,
    load_vocab,
    open_split,
    train_loader,
)
from lib.data.toy import ensure_toy
from lib.engine import evaluate, set_learning_rate, train_one_epoch
from lib.evaluation import format_metrics
from lib.models import build_model
from lib.precision import resolve, resolve_device

log = logging.getLogger("train")


def setup_logging(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(folder / "train.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model, args):
    """AdamW for ``--optim adamw`` and ``adam`` alike (VSE∞ builds AdamW for ``adam`` too)."""
    groups = model.param_groups(args.learning_rate, args.bert_lr_factor, args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def check_run_folder(args) -> None:
    """Refuse to write over an earlier run unless asked to, or unless this continues that run
    from its latest checkpoint (resuming from its ``model_best.pth`` would overwrite the later
    epochs of ``checkpoint.pth``)."""
    folder = Path(args.model_name)
    found = [name for name in (LATEST, BEST) if (folder / name).is_file()]
    if found and not (args.overwrite or continues_run(args)):
        raise DataError(f"{folder} already holds a run ({', '.join(found)}): continue it with "
                        f"--resume {folder / LATEST}, replace it with --overwrite, or choose "
                        f"another --model_name")


def continues_run(args) -> bool:
    """Whether ``--resume`` continues the run in ``--model_name`` from its latest checkpoint."""
    return bool(args.resume) and not args.reset_start_epoch and \
        Path(args.resume).resolve() == (Path(args.model_name) / LATEST).resolve()


def discard_previous_run(folder: Path) -> None:
    """``--overwrite``: remove the earlier run's checkpoints, so that none of them can be taken
    for this run's (e.g. an old ``model_best.pth`` that this run never beats)."""
    for name in (LATEST, BEST):
        if (folder / name).is_file():
            (folder / name).unlink()
            log.info("--overwrite: removed the earlier run's %s", folder / name)


def prepare_data(args):
    """Build the toy set on first use, check the training split (setting ``args.img_dim`` from
    it when not given); return the split, the vocabulary (BiGRU) and the tokenizer."""
    if args.data_name == "toy":
        ensure_toy(Path(args.data_path).parent)
    split = open_split(args.data_path, "train", args.img_dim)
    args.img_dim = split.feature_dim
    vocab = load_vocab(args.vocab_path, args.data_name) if args.text_enc_type == "bigru" else None
    return split, vocab, build_tokenizer(args, vocab)


def main(argv: list[str] | None = None) -> dict:
    args = parse_train_args(argv)
    args.logger_name = args.logger_name or str(Path(args.model_name) / "log")
    check_run_folder(args)
    setup_logging(Path(args.model_name))
    try:
        return run(args)
    finally:
        for handler in logging.getLogger().handlers[:]:
            logging.getLogger().removeHandler(handler)
            handler.close()


def run(args) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    for flag, default in (("embedding_warmup_epochs", 0), ("input_scale_factor", 1.0)):
        if getattr(args, flag) != default:
            log.warning("--%s only applies to raw-image backbones; precomputed region features "
                        "are used as they are", flag)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    precision, val_precision = resolve(args.precision, device), resolve(args.val_precision, device)
    train_split, vocab, tokenizer = prepare_data(args)
    model, criterion = build_model(args, vocab)
    model.to(device)
    optimizer = build_optimizer(model, args)
    if args.resume:
        ckpt = load_checkpoint(args.resume)  # read before --overwrite may remove it
    if args.overwrite and not continues_run(args):
        discard_previous_run(Path(args.model_name))
    start_epoch, best = 0, {}
    if args.resume:
        start_epoch, best = resume(args, ckpt, model, optimizer, vocab)
    train_data = train_loader(args, tokenizer, train_split)
    if len(train_data) == 0:
        raise DataError(f"{args.data_path}: {len(train_data.dataset)} training captions make no "
                        f"full batch of --batch_size {args.batch_size}")
    val_images, val_captions, _ = eval_loaders(args.data_path, "dev", args.img_dim, tokenizer,
                                               args.batch_size, args.workers)
    log.info("model: %.1fM parameters; %d training pairs, device %s, precision %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_data.dataset), device,
             precision)
    writer = SummaryWriter(args.logger_name)
    for epoch in range(start_epoch, args.num_epochs):
        set_learning_rate(optimizer, args.learning_rate, epoch, args.lr_update)
        stats = train_one_epoch(model, criterion, train_data, optimizer, device, epoch, args,
                                writer, precision)
        metrics = evaluate(model, val_images, val_captions, device, val_precision,
                           progress=not args.no_progress)
        log.info("epoch %d: loss %.4f, %.0f pairs/s, dev rsum %.2f (r1 %.1f, r1i %.1f)",
                 epoch, stats["loss"], stats["pairs_per_second"], metrics["rsum"],
                 metrics["r1"], metrics["r1i"])
        for key, value in metrics.items():
            writer.add_scalar(f"val/{key}", value, epoch)
        is_best = metrics["rsum"] > best.get("rsum", -1.0)
        if is_best:
            best = {"epoch": epoch, **metrics}
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "best": best, "config": vars(args),
                         "vocab": vocab.idx2word if vocab else None, "rng": rng_state()},
                        args.model_name, is_best)
    writer.close()
    if best:
        log.info("best dev epoch %d:\n%s", best["epoch"], format_metrics(best))
    return best


def resume(args, ckpt, model, optimizer, vocab) -> tuple[int, dict]:
    """Load checkpoint ``ckpt`` (read from ``args.resume``); returns the epoch to start at and
    the best dev metrics so far.

    The checkpoint must come from the same model (architecture flags and vocabulary); the
    optimiser's state is restored, but its hyperparameters follow the current flags.
    """
    check_same_model(args, vocab, ckpt)
    load_weights(model, ckpt["model"], args.resume)
    if args.reset_start_epoch:
        log.info("loaded weights from %s; starting at epoch 0", args.resume)
        return 0, {}
    missing = {"optimizer", "rng", "epoch", "best"} - set(ckpt)
    if missing:
        raise DataError(f"{args.resume}: cannot resume training, the checkpoint lacks "
                        f"{sorted(missing)}; use --reset_start_epoch to load its weights only")
    flags = [{"weight_decay": g["weight_decay"], "lr_factor": g["lr_factor"]}
             for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, current in zip(optimizer.param_groups, flags, strict=True):
        group.update(current)  # --weight_decay / --bert_lr_factor of this invocation
    set_rng_state(ckpt["rng"])
    if carry_best(Path(args.resume).parent, args.model_name):
        log.info("copied %s into %s", Path(args.resume).parent / BEST, args.model_name)
    log.info("resumed %s at epoch %d (best dev rsum %.2f)", args.resume, ckpt["epoch"],
             ckpt["best"].get("rsum", float("nan")))
    return ckpt["epoch"], ckpt["best"]


def check_same_model(args, vocab, ckpt: dict) -> None:
    """Raise a :class:`DataError` listing every model flag (and the vocabulary) that differs."""
    saved = ckpt["config"]
    diffs = [f"--{key} {saved.get(key)!r} (now {getattr(args, key)!r})" for key in model_keys()
             if _normal(saved.get(key)) != _normal(getattr(args, key))]
    if vocab is not None and ckpt.get("vocab") != vocab.idx2word:
        diffs.append("the BiGRU vocabulary (--vocab_path)")
    if diffs:
        raise DataError(f"{args.resume} was trained with a different model: "
                        f"{'; '.join(diffs)}; pass the checkpoint's values to resume it")


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


if __name__ == "__main__":
    try:
        main()
    except (DataError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
