"""Poolings: the coded values of each image-caption pair -> its score, over valid entries only.

A pooling is a :class:`Pooling` subclass registered by name with :func:`register_pooling`;
``--pooling_type``, :func:`lib.similarity.pairwise_sims` and evaluation find it in
:data:`POOLINGS`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

POOLINGS: dict[str, type[Pooling]] = {}  # name -> class, in registration order


def register_pooling(cls: type[Pooling]) -> type[Pooling]:
    """Class decorator: make ``cls`` selectable by ``cls.name``."""
    if not cls.name or cls.name in POOLINGS:
        raise ValueError(f"a pooling needs a name not taken yet, got {cls.name!r}")
    POOLINGS[cls.name] = cls
    return cls


def pooling_class(name: str) -> type[Pooling]:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose from {', '.join(POOLINGS)}")
    return POOLINGS[name]


class Pooling:
    """``(n_img, n_cap, K)`` values with a validity mask broadcastable to them -> ``(n_img,
    n_cap)`` scores. ``belta`` is the temperature of the poolings that have one."""

    name: ClassVar[str] = ""

    def __init__(self, belta: float = 0.1):
        self.belta = belta

    def __call__(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.pool(values, valid.expand_as(values))

    def pool(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``values`` and ``valid`` of the same shape; padded entries must not matter."""
        raise NotImplementedError


@register_pooling
class MeanPooling(Pooling):
    name = "MeanPooling"

    def pool(self, values, valid):
        return values.masked_fill(~valid, 0).sum(-1) / valid.sum(-1).clamp_min(1)


@register_pooling
class MaxPooling(Pooling):
    name = "MaxPooling"

    def pool(self, values, valid):
        return values.masked_fill(~valid, float("-inf")).amax(-1)


@register_pooling
class SumPooling(Pooling):
    name = "SumPooling"

    def pool(self, values, valid):
        return values.masked_fill(~valid, 0).sum(-1)


@register_pooling
class LSEPooling(Pooling):
    """CHAN's form ``logsumexp(x / belta)``, not rescaled by ``belta``."""

    name = "LSEPooling"

    def pool(self, values, valid):
        return torch.logsumexp(values.masked_fill(~valid, float("-inf")) / self.belta, dim=-1)


@register_pooling
class SoftmaxPooling(Pooling):
    """``sum softmax(x / belta) * x``: a soft maximum that stays on the scale of the values."""

    name = "SoftmaxPooling"

    def pool(self, values, valid):
        weights = torch.softmax(values.masked_fill(~valid, float("-inf")) / self.belta, dim=-1)
        return (weights * values.masked_fill(~valid, 0)).sum(-1)
