"""Train CHAN-ASDG: ``python train.py --help``. Wiring only; the work lives in ``lib/``."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from lib.checkpoint import atomic_write, remove_stale_temps, rng_state, save_checkpoint
from lib.config import dataset_kind, model_config, parse_train_args
from lib.data import (
    build_dataset,
    build_tokenizer,
    eval_loaders,
    load_vocab,
    train_loader,
)
from lib.data.toy import EMBEDDED_ROOT, ensure_toy, is_embedded
from lib.distributed import (
    AgreedStop,
    World,
    local_batch_size,
    main_process_first,
    seed_rank,
    setup,
    teardown,
)
from lib.engine import evaluate, set_learning_rate, train_one_epoch
from lib.environment import describe_environment
from lib.errors import DataError, NonFiniteLoss, UserError, user_message
from lib.evaluation import format_metrics
from lib.global_batch import GlobalBatchLoss
from lib.interrupt import Interrupted, StopRequest
from lib.losses import build_criterion
from lib.masking import sync_batch_norms
from lib.models import BACKBONE_GROUP, GRID_ENCODER, PRETRAINED_GROUP, build_model
from lib.monitor import collapse_after_switch
from lib.precision import resolve
from lib.resume import check_run_folder, starting_point

log = logging.getLogger("train")
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def setup_logging(folder: Path, world: World) -> None:
    """Rank 0 logs to the console and ``train.log``; other ranks print only errors, to stderr,
    and never open a file."""
    root = logging.getLogger()
    if not world.is_main:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {world.rank}] %(message)s"))
        root.setLevel(logging.ERROR)
        root.addHandler(handler)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(folder / "train.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model, args):
    """AdamW for ``--optim adamw`` and ``adam`` alike (VSE∞ builds AdamW for ``adam`` too).

    Fused (a few kernels per parameter group instead of several per tensor, and no host read of
    the step count) on the devices torch fuses it for, CUDA and the CPU; with ``--compile`` its
    foreach form instead, which the compiled update fuses with the gradient clipping.
    """
    factors = {PRETRAINED_GROUP: args.bert_lr_factor, BACKBONE_GROUP: args.backbone_lr_factor}
    groups = model.param_groups(args.learning_rate, factors, args.weight_decay)
    fused = not args.compile and all(p.device.type in FUSED_ADAMW_DEVICES for group in groups
                                      for p in group["params"])
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=fused)


def prepare_data(args):
    """Build the embedded toy set on first use, check the training split (against
    ``--img_dim`` when given; raw images for the grid encoder); return the split, the
    vocabulary (BiGRU) and the tokenizer. Nothing is written into any other data folder."""
    kind = dataset_kind(args)
    if is_embedded(args.data_path) and kind == "precomp":
        with main_process_first():  # rank 0 writes the toy set, the others then read it
            ensure_toy(Path(args.data_path).parent)
    elif args.data_name == "toy" and not Path(args.data_path).exists():
        raise DataError(f"data folder not found: {args.data_path}; the toy set is generated on "
                        f"first use only at {EMBEDDED_ROOT / 'toy'}, write a copy elsewhere "
                        f"with `python -m lib.data.toy --out {Path(args.data_path).parent}`")
    split = build_dataset(kind, args.data_path, "train", args.img_dim)
    vocab = None
    if args.text_enc_type == "bigru":
        vocab = load_vocab(args.vocab_path, args.data_name, split)
    return split, vocab, build_tokenizer(args, vocab)


def main(argv: list[str] | None = None) -> dict:
    """Train; under torchrun every rank runs this, and only rank 0 writes the run folder."""
    args = parse_train_args(argv)
    world = World.from_environment()
    local_batch_size(args.batch_size, world)  # refused before anything is written
    check_run_folder(args)
    device = setup(world, args.device)
    try:
        setup_logging(Path(args.model_name), world)
        if world.is_main:
            record_environment(args, device, world)
        else:
            args.no_progress = True  # one progress bar, rank 0's
        return run(args, world, device)
    finally:
        for handler in logging.getLogger().handlers[:]:
            logging.getLogger().removeHandler(handler)
            handler.close()
        teardown()


def record_environment(args, device, world: World) -> None:
    """Remove what a killed save left, and write ``environment.json`` (rank 0 only)."""
    for tmp in remove_stale_temps(args.model_name):
        log.info("removed %s, left by a save that was killed", tmp)
    environment = {**describe_environment(device, args.seed), "world_size": world.size}
    text = (json.dumps(environment, indent=2) + "\n").encode()
    atomic_write(Path(args.model_name) / "environment.json", lambda f: f.write(text))


def for_ranks(model, criterion, args, world: World):
    """Under torchrun: the loss over the global batch, and with ``--sync_bn`` BatchNorm layers
    that normalise with the global batch's statistics, as one process would."""
    if not world.distributed:
        return criterion
    if args.sync_bn:
        sync_batch_norms(model)
    return GlobalBatchLoss(criterion, local_negatives=args.local_negatives)


def data_parallel(model, world: World, device):
    """Under torchrun, ``model`` wrapped in DDP (rank 0's weights broadcast to all), built each
    epoch: DDP synchronises the parameters that train when it is built, and a raw-image
    backbone starts training after ``--embedding_warmup_epochs``. ``static_graph``: the same
    parameters every step, which lets some never get a gradient (a BERT pooler) and some be
    used outside forward (the similarity's, in the loss)."""
    if not world.distributed:
        return model
    devices = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=devices, static_graph=True)


def run(args, world: World, device: torch.device) -> dict:
    seed_everything(args.seed)
    precision, val_precision = resolve(args.precision, device), resolve(args.val_precision, device)
    train_split, vocab, tokenizer = prepare_data(args)
    cfg = model_config(args, train_split.feature_dim)
    model = build_model(cfg, len(vocab) if vocab else None, vocab.word2idx if vocab else None)
    criterion = build_criterion(args)
    model.to(device)
    optimizer = build_optimizer(model, args)
    start = starting_point(args, cfg, model, optimizer, vocab)
    best = start.best
    seed_rank(args.seed, start.epoch, world)
    loss = for_ranks(model, criterion, args, world)
    train_data = train_loader(args, tokenizer, train_split, world.rank, world.size)
    if len(train_data) == 0:
        raise DataError(f"{args.data_path}: {len(train_data.dataset)} training captions make no "
                        f"full batch of --batch_size {args.batch_size}")
    val_images, val_captions, _ = eval_loaders(args.data_path, "dev", cfg.img_dim, tokenizer,
                                               local_batch_size(args.batch_size, world),
                                               args.workers, dataset_kind(cfg), cfg.image_size,
                                               shard=(world.rank, world.size))
    log.info("model: %.1fM parameters; %d training pairs, device %s, precision %s",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_data.dataset), device,
             precision)
    if world.distributed:
        log.info("%d ranks, %d pairs each of the global batch of %d, %s negatives", world.size,
                 local_batch_size(args.batch_size, world), args.batch_size,
                 "per-rank" if args.local_negatives else "global-batch")
    tensorboard = args.logger_name or str(Path(args.model_name) / "log")
    writer = tensorboard_writer(tensorboard) if world.is_main else None
    history = {}  # epoch -> dev rsum of this invocation, to notice a collapse
    with StopRequest() as signals:
        stop = AgreedStop(signals, device) if world.distributed else signals
        for epoch in range(start.epoch, args.num_epochs):
            set_learning_rate(optimizer, args.learning_rate, epoch, args.lr_update)
            follow_backbone_warmup(model, epoch, args)
            try:
                stats = train_one_epoch(data_parallel(model, world, device), loss, train_data,
                                        optimizer, device, epoch, args, writer, precision,
                                        start=start.step if epoch == start.epoch else 0,
                                        stop=stop)
            except NonFiniteLoss as err:
                raise NonFiniteLoss(f"{err}; {last_good_checkpoint(args)}") from None
            if stats["done"] < len(train_data):
                close(writer)
                stop_interrupted(args, cfg, vocab, model, optimizer, epoch, stats["done"], best,
                                 stop, world)
            metrics = evaluate(model, val_images, val_captions, device, val_precision,
                               progress=not args.no_progress, sharded=world.distributed)
            log.info("epoch %d: loss %.4f, %.0f pairs/s, dev rsum %.2f (r1 %.1f, r1i %.1f)",
                     epoch, stats["loss"], stats["pairs_per_second"], metrics["rsum"],
                     metrics["r1"], metrics["r1i"])
            for key, value in metrics.items():
                if writer is not None:
                    writer.add_scalar(f"val/{key}", value, epoch)
            history[epoch] = metrics["rsum"]
            collapse = collapse_after_switch(history, args.vse_mean_warmup_epochs)
            if collapse and not args.max_violation:
                log.warning("%s", collapse)
            is_best = metrics["rsum"] > best.get("rsum", -1.0)
            if is_best:
                best = {"epoch": epoch, **metrics}
            if world.is_main:
                save_checkpoint(checkpoint_state(args, cfg, vocab, model, optimizer, epoch + 1,
                                                 best), args.model_name, is_best)
    close(writer)
    if best:
        log.info("best dev epoch %d:\n%s", best["epoch"], format_metrics(best))
    folder = Path(args.model_name)
    log.info("written: %s (best dev epoch), %s (latest, --resume it), %s, %s, TensorBoard %s",
             folder / "model_best.pth", folder / "checkpoint.pth", folder / "train.log",
             folder / "environment.json", tensorboard)
    return best


def last_good_checkpoint(args) -> str:
    latest = Path(args.model_name) / "checkpoint.pth"
    if not latest.is_file():
        return "no checkpoint was written before it"
    return f"the last good checkpoint is {latest} (resume it with --resume)"


def checkpoint_state(args, cfg, vocab, model, optimizer, epoch: int, best: dict,
                     step: int = 0) -> dict:
    """Everything ``--resume`` and ``eval.py`` need: weights, optimizer, where training stands
    (``epoch`` epochs done, plus ``step`` batches of the next one), flags, model config,
    vocabulary and RNG state."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "step": step, "best": best, "config": vars(args), "model_config": cfg.to_dict(),
            "vocab": vocab.idx2word if vocab else None, "rng": rng_state()}


def stop_interrupted(args, cfg, vocab, model, optimizer, epoch: int, step: int, best: dict,
                     stop: StopRequest | AgreedStop, world: World) -> None:
    """After SIGINT/SIGTERM: save the run mid-epoch (rank 0) and exit with 128 + the signal
    number (every rank, at the same step)."""
    if world.is_main:
        save_checkpoint(checkpoint_state(args, cfg, vocab, model, optimizer, epoch, best, step),
                        args.model_name, is_best=False)
    latest = Path(args.model_name) / "checkpoint.pth"
    log.warning("stopped by signal %d at epoch %d after batch %d; %s holds that point: continue "
                "with --resume %s", stop.signum, epoch, step, latest, latest)
    raise Interrupted(stop.exit_code)


def follow_backbone_warmup(model, epoch: int, args) -> None:
    """VSE∞'s ``--embedding_warmup_epochs``: the backbone stays frozen for that many epochs
    (the new projection and fusion learn on fixed features first), then trains at
    ``--backbone_lr_factor``. Set every epoch, so a resumed run is in the right state."""
    if args.precomp_enc_type != GRID_ENCODER:
        return
    frozen = epoch < args.embedding_warmup_epochs
    model.img_enc.freeze_backbone(frozen)
    if frozen or epoch == args.embedding_warmup_epochs:
        log.info("epoch %d: backbone %s", epoch, "frozen (warm-up)" if frozen else "trained")


def tensorboard_writer(folder: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(folder)


def close(writer) -> None:
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as err:
        sys.exit(f"error: {user_message(err)}")
