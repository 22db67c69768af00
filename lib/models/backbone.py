"""Backbone grid encoder (``--precomp_enc_type backbone``): raw images -> grid-cell embeddings.

Data flow for ``images (B, 3, S, S)`` (ImageNet-normalised by the loaders, ``lib.imagenet``)::

    trunk        CNN up to its last feature map                      (B, C, h, w)
                 (ResNet: h = w = S / 32, 16 x 16 at 512 px, C = 2048)
    cells        raster order, one cell per feature-map position      (B, h*w, C)
    fc           Linear C -> D                                        (B, h*w, D)
    fusion       optional APPM / SeedAPPM with spatial_dims=2 over the complete grid
    l2norm       per cell (unless no_imgnorm)
    cell drop    training only: keep each cell with p = 1 - drop rate (at least one), kept cells
                 packed in raster order, padded with zeros   -> (B, N', D) and lengths (B,)

The fusion runs before the drop because a 2-D convolution needs the complete grid; so a kept
cell's embedding is the same as without the drop. To every coding and pooling the cells are
just regions with lengths.

The trunk is a torchvision ResNet-family model (``resnet152``, ``resnext101_32x8d``,
``wide_resnet50_2``, ...) or any convolutional timm model (``tf_efficientnet_lite0``, ...), by
name: ``torchvision:NAME`` or ``timm:NAME`` pick the library, a plain name is looked up in
torchvision first. Weights come only from a local file (``backbone_weights.load_weights``);
without one the trunk keeps its random initialisation. A timm model whose pretrained inputs use
another mean/std than ImageNet's (EfficientNet-Lite: 0.5/0.5) gets its inputs re-normalised
inside the encoder, so the data pipeline is the same for every backbone.

Training details from VSE∞ (``lib/encoders.py``, ``lib/modules/resnet.py``): the trunk's
BatchNorm layers always stay in eval mode (batch statistics of a few images would be noise, and
their running statistics never change); the trunk is frozen during ``--embedding_warmup_epochs``
(``freeze_backbone``) and then trains at ``lr * --backbone_lr_factor`` (0.01): the trunk carries
``lr_group = BACKBONE_GROUP``, which ``ImageTextModel.param_groups`` turns into its own optimizer
group, frozen or not.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..masking import l2norm, length_mask
from .backbone_weights import load_weights

GRID_ENCODER = "backbone"  # its --precomp_enc_type (VSE∞'s name)
BACKBONE_GROUP = "backbone"  # learning-rate group of the trunk (at --backbone_lr_factor)
SOURCES = ("torchvision", "timm")


class TorchvisionTrunk(nn.Module):
    """A torchvision ResNet-family classifier without ``avgpool`` and ``fc``; the module names
    (``conv1``, ``layer4``, ...) are those of the classifier, so its weight files load as is."""

    def __init__(self, name: str):
        super().__init__()
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        self.net = nn.Sequential(OrderedDict(
            (n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")))
        self.channels = model.fc.in_features
        self.head_prefixes = ("fc.",)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.stage_depths = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, C, h, w)


class TimmTrunk(nn.Module):
    """A timm model without its classifier; ``forward_features`` gives the last feature map."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.net = timm.create_model(name, pretrained=False, num_classes=0)
        self.channels = self.net.num_features
        cfg = self.net.pretrained_cfg
        head = cfg.get("classifier") or ()
        self.head_prefixes = tuple(f"{h}." for h in ([head] if isinstance(head, str) else head))
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        blocks = getattr(self.net, "blocks", None)  # EfficientNet: a Sequential of stages
        staged = isinstance(blocks, nn.Sequential) and all(
            isinstance(stage, nn.Sequential) for stage in blocks)
        self.stage_depths = [len(stage) for stage in blocks] if staged else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(images)
        if features.dim() != 4:
            raise ValueError(f"backbone {type(self.net).__name__} gives features of shape "
                             f"{tuple(features.shape)}, not a (B, C, h, w) grid: use a "
                             f"convolutional model")
        return features  # (B, C, h, w)


def backbone_source(name: str) -> tuple[str, str]:
    """``[torchvision:|timm:]NAME`` -> (library, model name), or ValueError naming the problem.

    A plain name is looked up in torchvision first. From torchvision only the ResNet family
    (``conv1 ... layer4, fc``: ResNet, ResNeXt, Wide ResNet) has the layout the trunk keeps.
    Cheap enough for the command line to check ``--backbone`` before anything is written.
    """
    source, _, model = name.rpartition(":")
    if source and source not in SOURCES:
        raise ValueError(f"--backbone {name}: prefix must be one of {', '.join(SOURCES)}")
    import torchvision

    if source != "timm" and model in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_builder(model).__module__ != "torchvision.models.resnet":
            raise ValueError(f"--backbone {name}: only torchvision ResNet-family models "
                             f"(conv1 ... layer4, fc) are supported; use timm:{model} for others")
        return "torchvision", model
    import timm

    if source != "torchvision" and timm.is_model(model):
        return "timm", model
    raise ValueError(f"--backbone {name}: not a torchvision classification model nor a timm "
                     f"model name")


def build_trunk(name: str) -> TorchvisionTrunk | TimmTrunk:
    """``[torchvision:|timm:]NAME`` -> trunk with random weights (nothing is downloaded)."""
    source, model = backbone_source(name)
    return TorchvisionTrunk(model) if source == "torchvision" else TimmTrunk(model)


def drop_cells(x: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each cell of ``x (B, N, D)`` with probability ``1 - rate`` (at least one per image);
    kept cells are packed in their order and zero-padded: ``(B, N', D)`` and lengths ``(B,)``."""
    batch, n, _ = x.shape
    keep = torch.rand(batch, n, device=x.device) >= rate  # (B, N)
    forced = torch.randint(n, (batch,), device=x.device)
    keep[torch.arange(batch, device=x.device), forced] |= ~keep.any(1)
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # kept cells first
    lengths = keep.sum(1)
    width = int(lengths.max())
    packed = x.gather(1, order[:, :width, None].expand(-1, -1, x.shape[-1]))  # (B, N', D)
    return packed.masked_fill(~length_mask(lengths, width)[..., None], 0), lengths


class BackboneGridEncoder(nn.Module):
    """Raw images ``(B, 3, S, S)`` -> grid-cell embeddings ``(B, N, D)`` and lengths ``(B,)``.

    ``backbone``: trunk name (see the module docstring); ``backbone_path``: local weights file
    or None (random weights, e.g. when a checkpoint's weights will replace them); ``fusion``:
    an APPM/SeedAPPM built with ``spatial_dims=2``; ``cell_drop_rate``: training-time drop
    probability of each cell (0 disables).
    """

    def __init__(self, backbone: str, embed_size: int, backbone_path: str | Path | None = None,
                 fusion: nn.Module | None = None, cell_drop_rate: float = 0.2,
                 no_imgnorm: bool = False):
        super().__init__()
        if fusion is not None and getattr(fusion, "dims", None) != 2:
            raise ValueError("the grid encoder needs a fusion module built with spatial_dims=2")
        if not 0 <= cell_drop_rate < 1:
            raise ValueError(f"cell drop rate must be in [0, 1), got {cell_drop_rate}")
        self.backbone = build_trunk(backbone)
        self.backbone.lr_group = BACKBONE_GROUP
        if backbone_path is not None:
            load_weights(self.backbone.net, backbone_path, self.backbone.head_prefixes,
                         self.backbone.stage_depths)
        self._set_input_norm(self.backbone.mean, self.backbone.std)
        self.fc = nn.Linear(self.backbone.channels, embed_size)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.fusion = fusion
        self.cell_drop_rate = cell_drop_rate
        self.normalize = not no_imgnorm

    def _set_input_norm(self, mean: tuple, std: tuple) -> None:
        """Affine map from ImageNet-normalised inputs to the trunk's own normalisation."""
        self.renormalize = tuple(mean) != IMAGENET_MEAN or tuple(std) != IMAGENET_STD
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("input_scale", (in_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((in_mean - mean) / std).view(1, 3, 1, 1),
                             persistent=False)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's last feature map ``(B, C, h, w)``; no graph while the trunk is frozen."""
        if self.renormalize:
            images = images * self.input_scale + self.input_shift
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            return self.backbone(images)

    def forward(self, images: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells ``(B, N, D)`` and their counts ``(B,)``. ``lengths`` (the loaders' zeros) is
        accepted for the image-encoder call convention and unused: a grid's size is known only
        from the feature map."""
        fmap = self.feature_map(images)  # (B, C, h, w)
        batch, _, h, w = fmap.shape
        x = self.fc(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        if self.fusion is not None:
            full = torch.ones(batch, h * w, dtype=torch.bool, device=x.device)
            x = self.fusion(x, full, shape=(h, w))
        if self.normalize:
            x = l2norm(x)
        if self.training and self.cell_drop_rate > 0:
            return drop_cells(x, self.cell_drop_rate)
        return x, torch.full((batch,), h * w, dtype=torch.long, device=x.device)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (``--embedding_warmup_epochs``) or unfreeze every trunk parameter."""
        for param in self.backbone.parameters():
            param.requires_grad = not frozen

    def train(self, mode: bool = True) -> BackboneGridEncoder:
        """Train mode everywhere except the trunk's BatchNorm layers, which stay in eval mode."""
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
