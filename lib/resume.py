"""Run folders and resuming: what a new run may write over, and how a checkpoint continues.

A ``--model_name`` folder that holds a run is never written over silently: only ``--resume
<folder>/checkpoint.pth`` (continuing it) or ``--overwrite`` (replacing it) may use it. A resumed
checkpoint must come from the same model; its optimiser state, epoch, best dev metrics and RNG
state continue where they stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from .checkpoint import BEST, LATEST, carry_best, load_checkpoint, load_weights, set_rng_state
from .config import saved_model_config
from .distributed import barrier, is_main_process
from .errors import CheckpointError, RunFolderError

log = logging.getLogger(__name__)


def check_run_folder(args) -> None:
    """Refuse to write over an earlier run unless asked to, or unless this continues that run
    from its latest checkpoint (resuming from its ``model_best.pth`` would overwrite the later
    epochs of ``checkpoint.pth``)."""
    folder = Path(args.model_name)
    found = [name for name in (LATEST, BEST) if (folder / name).is_file()]
    if found and not (args.overwrite or continues_run(args)):
        raise RunFolderError(f"{folder} already holds a run ({', '.join(found)}): continue it "
                             f"with --resume {folder / LATEST}, replace it with --overwrite, or "
                             f"choose another --model_name")


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


class Start(NamedTuple):
    """Where a run starts: epoch, best dev metrics so far, and the batch of that epoch to start
    at (non-zero for a run interrupted mid-epoch by SIGINT/SIGTERM)."""

    epoch: int
    best: dict
    step: int = 0


def starting_point(args, cfg, model, optimizer, vocab) -> Start:
    """The epoch to start at and the best dev metrics so far: a new run, or a resumed one.

    Under torchrun every rank reads the checkpoint; only rank 0 changes the run folder.
    """
    ckpt = load_checkpoint(args.resume) if args.resume else None  # before --overwrite removes it
    if args.overwrite and not continues_run(args):
        barrier()  # every rank has read the checkpoint
        if is_main_process():
            discard_previous_run(Path(args.model_name))
    return resume(args, cfg, ckpt, model, optimizer, vocab) if ckpt else Start(0, {})


def resume(args, cfg, ckpt, model, optimizer, vocab) -> Start:
    """Load checkpoint ``ckpt`` (read from ``args.resume``) into ``model``, built from ``cfg``;
    returns the epoch to start at and the best dev metrics so far.

    The checkpoint must come from the same model (model config and vocabulary); the
    optimiser's state is restored, but its hyperparameters follow the current flags.
    """
    check_same_model(cfg, vocab, ckpt, args.resume)
    load_weights(model, ckpt["model"], args.resume)
    if args.reset_start_epoch:
        log.info("loaded weights from %s; starting at epoch 0", args.resume)
        return Start(0, {})
    missing = {"optimizer", "rng", "epoch", "best"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{args.resume}: cannot resume training, the checkpoint lacks "
                              f"{sorted(missing)}; use --reset_start_epoch to load its weights "
                              f"only")
    flags = [{"weight_decay": g["weight_decay"], "lr_factor": g["lr_factor"]}
             for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, current in zip(optimizer.param_groups, flags, strict=True):
        group.update(current)  # --weight_decay / --bert_lr_factor of this invocation
    set_rng_state(ckpt["rng"])
    if is_main_process() and carry_best(Path(args.resume).parent, args.model_name):
        log.info("copied %s into %s", Path(args.resume).parent / BEST, args.model_name)
    step = ckpt.get("step", 0)
    log.info("resumed %s at epoch %d%s (best dev rsum %.2f)", args.resume, ckpt["epoch"],
             f", batch {step}" if step else "", ckpt["best"].get("rsum", float("nan")))
    return Start(ckpt["epoch"], ckpt["best"], step)


def check_same_model(cfg, vocab, ckpt: dict, path: str) -> None:
    """Raise a :class:`CheckpointError` listing every compared field of the model config (and
    the vocabulary) where checkpoint ``path`` differs from ``cfg``."""
    diffs = cfg.differences(saved_model_config(ckpt, path))
    if vocab is not None and ckpt.get("vocab") != vocab.idx2word:
        diffs.append("the BiGRU vocabulary (--vocab_path)")
    if diffs:
        raise CheckpointError(f"{path} was trained with a different model: "
                              f"{'; '.join(diffs)}; pass the checkpoint's values to resume it")
