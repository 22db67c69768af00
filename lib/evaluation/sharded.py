"""Validation divided among the ranks of a torchrun run: encoding and scoring alike."""

from __future__ import annotations

import torch

from ..distributed import gather_rows
from .scoring import PackedSequences, encode_split, score_matrix


@torch.no_grad()
def score_split_sharded(model, image_loader, caption_loader, device: torch.device,
                        precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """The ``(N_img, N_cap)`` scores of a split, on every rank, from loaders that hold this
    rank's contiguous share of its images and of its captions (``eval_loaders(shard=...)``).

    Each rank encodes its share, receives every rank's caption tokens, scores its own images
    against all the captions, and the rows of all ranks are gathered in rank order. The matrix
    is the one :func:`lib.evaluation.score_split` computes in one process, so the metrics (and
    the choice of the best epoch) do not depend on the number of ranks.
    """
    encoded = encode_split(model, image_loader, caption_loader, device, precision, progress)
    captions = PackedSequences(gather_rows(encoded.captions.data),  # (T, D) of all captions
                               gather_rows(encoded.captions.lengths))
    rows = score_matrix(model.sim, encoded.images, encoded.img_lens, captions, precision,
                        progress=progress)  # (this rank's images, N_cap)
    return gather_rows(rows)
