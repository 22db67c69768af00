"""Evaluation: encode once, score in blocks on the device, rank on the device (SPEC §5)."""

from __future__ import annotations

import torch

from .metrics import KEYS, fold_metrics, format_metrics, recall_metrics
from .scoring import EncodedSplit, PackedSequences, encode_split, score_matrix

__all__ = ["KEYS", "EncodedSplit", "PackedSequences", "encode_split", "score_matrix",
           "recall_metrics", "fold_metrics", "format_metrics", "evaluate_split"]


@torch.no_grad()
def evaluate_split(model, image_loader, caption_loader, device: torch.device,
                   precision: str = "fp32", fold5: bool = False,
                   progress: bool = True) -> tuple[dict, torch.Tensor]:
    """Metrics and the ``(N_img, N_cap)`` score matrix (on ``device``) of one split."""
    encoded = encode_split(model, image_loader, caption_loader, device, precision, progress)
    sims = score_matrix(model.sim, encoded.images, encoded.img_lens, encoded.captions,
                        precision, progress=progress)
    metrics = fold_metrics(sims) if fold5 else recall_metrics(sims)
    return metrics, sims
