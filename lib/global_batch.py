"""The loss of the whole global batch when each rank encodes only its slice of it (torchrun).

With plain DDP each rank would rank its ``b`` pairs among themselves only, so its hardest
negatives would come from ``b`` and not from the ``B = world * b`` pairs of the global batch.
Here each rank gathers every rank's embeddings, with their gradients, and computes the loss
terms of its own queries against all ``B`` keys:

* rows: its ``b`` images ranking the ``B`` captions, ``(b, B)`` scores;
* columns: its ``b`` captions ranking the ``B`` images, ``(b, B)`` scores.

Every loss of ``lib/losses.py`` is a weighted sum of such per-query terms, so the ranks' local
losses ``l_r`` add up to the loss ``L`` of the global batch. Backward, rank ``r`` sends each
other rank the gradient of ``l_r`` with respect to that rank's gathered embeddings, where it is
summed (:func:`lib.distributed.gather_sequences`): every rank ends up with ``dL / d(its own
embeddings)``, from which its encoders' gradients follow. DDP then averages the parameter
gradients over the ranks, so each rank back-propagates ``world * l_r``: the average of the
ranks' ``world * dL/dtheta|_r`` is ``sum_r dL/dtheta|_r = dL/dtheta``, the gradient one process
computes on the same global batch (``tests/test_distributed.py`` checks it).
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import (
    gather_equal,
    gather_sequences,
    largest,
    rank,
    summed_over_ranks,
    world_size,
)
from .losses import RankingLoss
from .models import Embeddings


def gather_embeddings(emb: Embeddings) -> Embeddings:
    """Every rank's embeddings in rank order, padded to the largest region and token counts
    (their lengths say how much is real), with gradients flowing back to each rank's own.
    Every rank holds ``b`` pairs, so only the two widths are exchanged first (one host sync)."""
    regions, tokens = largest((emb.images.shape[1], emb.captions.shape[1]), emb.images.device)
    return Embeddings(gather_sequences(emb.images, regions), gather_equal(emb.img_lens),
                      gather_sequences(emb.captions, tokens), gather_equal(emb.cap_lens))


class GlobalBatchLoss(nn.Module):
    """``criterion`` over the global batch of all ranks; called with this rank's embeddings.

    ``local_negatives``: each rank ranks its own pairs among themselves only (plain DDP's
    objective, for comparison); the loss is then the sum of the ranks' per-query terms, each
    weighted for the global batch (the ranks' hinge losses summed; their InfoNCE averaged).

    The returned value is the global-batch loss (summed over ranks), the same on every rank;
    its gradient is that of ``world * l_r`` (see the module docstring).
    """

    def __init__(self, criterion: RankingLoss, local_negatives: bool = False):
        super().__init__()
        self.criterion, self.local_negatives = criterion, local_negatives

    def forward(self, score, emb: Embeddings, img_ids: torch.Tensor,
                max_violation: bool = False) -> torch.Tensor:
        """``score(embeddings) -> (n_img, n_cap)`` scores (the model's); ``emb``: this rank's
        ``b`` pairs; ``img_ids (b,)``: their images, as split indices shared by all ranks."""
        world, b = world_size(), len(img_ids)
        if self.local_negatives:
            rows = score(emb)  # (b, b)
            cols = rows.t()  # (b, b): captions ranking images
            own, key_ids = torch.arange(b, device=rows.device), img_ids  # (b,), (b,)
        else:
            everyone = gather_embeddings(emb)  # B = world * b pairs
            rows = score(Embeddings(emb.images, emb.img_lens, everyone.captions,
                                    everyone.cap_lens))  # (b, B)
            cols = score(Embeddings(everyone.images, everyone.img_lens, emb.captions,
                                    emb.cap_lens)).t()  # (b, B): captions ranking images
            own = rank() * b + torch.arange(b, device=rows.device)  # (b,) own pair's column
            key_ids = gather_equal(img_ids)  # (B,)
        terms = (self.criterion.query_losses(rows, own, img_ids, key_ids, max_violation).sum()
                 + self.criterion.query_losses(cols, own, img_ids, key_ids, max_violation).sum())
        local = terms * self.criterion.query_weight(world * b)
        scaled = world * local  # DDP's averaging turns this rank's share into a sum
        return scaled + (summed_over_ranks(local.detach()) - scaled).detach()
