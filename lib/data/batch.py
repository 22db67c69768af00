"""The batch contract: what the data loaders yield and the training and evaluation loops read.

Three frozen dataclasses of tensors, each with ``.to(device)`` (and ``.pin_memory()``, so a
``DataLoader(pin_memory=True)`` pins them). Variable-length items are padded, to the longest in
the batch or, for training batches of region features, to a fixed width (regions to the split's
``R``, captions to a multiple of 8: few shapes for a compiled step); the ``*_lens`` tensors say
how much of each row is real.

* :class:`Batch` (training pairs, one per caption): ``images (B, R, img_dim)`` float32, zero
  padded (region dropout shortens items); ``img_lens (B,)``; ``captions (B, L)`` token ids padded
  with the tokenizer's ``pad_id``; ``cap_lens (B,)``; ``cap_ids (B,)`` caption indices in the
  split; ``img_ids (B,)`` the image of each caption (two captions of one image share it).
* :class:`ImageBatch` (evaluation, each image once): ``images``, ``img_lens``, ``img_ids``.
* :class:`CaptionBatch` (evaluation, captions in file order): ``captions``, ``cap_lens``,
  ``cap_ids``.

A new dataset yields the same classes, so the model, the losses and evaluation need no change.
Raw images (``images.py``) fill ``images`` with ``(B, 3, S, S)`` pixels and ``img_lens`` with
zeros: the grid encoder returns the cell counts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


class _TensorFields:
    """Moves every field together."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                for f in fields(self)})

    def pin_memory(self):
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


@dataclass(frozen=True)
class ImageBatch(_TensorFields):
    images: torch.Tensor  # (B, R, img_dim) region features, zero padded
    img_lens: torch.Tensor  # (B,) real regions per image
    img_ids: torch.Tensor  # (B,) image indices in the split


@dataclass(frozen=True)
class CaptionBatch(_TensorFields):
    captions: torch.Tensor  # (B, L) token ids, padded with the tokenizer's pad id
    cap_lens: torch.Tensor  # (B,) real tokens per caption
    cap_ids: torch.Tensor  # (B,) caption indices in the split


@dataclass(frozen=True)
class Batch(_TensorFields):
    images: torch.Tensor  # (B, R, img_dim) the image of each caption, zero padded
    img_lens: torch.Tensor  # (B,)
    captions: torch.Tensor  # (B, L) token ids
    cap_lens: torch.Tensor  # (B,)
    cap_ids: torch.Tensor  # (B,) caption indices in the split
    img_ids: torch.Tensor  # (B,) image of each caption: equal ids are positives, not negatives
