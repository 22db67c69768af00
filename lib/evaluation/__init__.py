"""Evaluation: encode once, score in blocks on the device, rank on the device."""

from __future__ import annotations

import torch

from .metrics import KEYS, fold_metrics, format_metrics, recall_metrics
from .scoring import EncodedSplit, PackedSequences, encode_split, score_matrix
from .sharded import score_split_sharded

__all__ = ["KEYS", "EncodedSplit", "PackedSequences", "encode_split", "score_matrix",
           "recall_metrics", "fold_metrics", "format_metrics", "score_split",
           "score_split_sharded"]


@torch.no_grad()
def score_split(model, image_loader, caption_loader, device: torch.device,
                precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """The ``(N_img, N_cap)`` float32 score matrix of one split, left on ``device``.

    ``eval.py`` and the per-epoch validation of ``train.py`` both score through here.
    """
    encoded = encode_split(model, image_loader, caption_loader, device, precision, progress)
    return score_matrix(model.sim, encoded.images, encoded.img_lens, encoded.captions,
                        precision, progress=progress)
