"""Ranking losses on the ``(B, B)`` score matrix (rows: images, columns: captions).

A loss is called as ``criterion(scores, img_ids, max_violation=...)``: the training loop decides
each epoch whether only the hardest negative counts (after the warm-up epochs).

Each loss is a sum over queries, in both retrieval directions, of a term that depends only on
the query's own row of scores (:meth:`RankingLoss.query_losses`), times a weight that depends
only on the batch size. So any process can compute the terms of some of the queries, each
against all the keys, and the terms add up to the loss of the whole batch: that is how ranks
under torchrun share a global batch (``lib/global_batch.py``).
"""

from __future__ import annotations

import torch
from torch import nn

POSITIVES = ("diagonal", "same_image")


def negative_mask(positives: torch.Tensor, query_ids: torch.Tensor, key_ids: torch.Tensor,
                  mode: str = "diagonal") -> torch.Tensor:
    """``(Q, K)`` True where key ``k`` is a negative of query ``q``.

    ``positives (Q,)``: the column of each query's own pair; ``query_ids (Q,)`` and
    ``key_ids (K,)``: the image of each query's and each key's pair. ``diagonal`` (CHAN,
    VSE∞): every key but the query's own pair is a negative, so a second caption of the same
    image counts as one. ``same_image``: every pair of the query's image is a positive, and
    never serves as a negative.
    """
    if mode == "same_image":
        return query_ids[:, None] != key_ids[None, :]
    if mode != "diagonal":
        raise ValueError(f"unknown positives {mode!r}; choose from {', '.join(POSITIVES)}")
    columns = torch.arange(len(key_ids), device=positives.device)
    return columns[None, :] != positives[:, None]


class RankingLoss(nn.Module):
    """A loss summed over the queries of both directions: images ranking captions (the rows
    of the score matrix) and captions ranking images (its columns)."""

    def __init__(self, positives: str = "diagonal"):
        super().__init__()
        self.positives = positives

    def forward(self, scores: torch.Tensor, img_ids: torch.Tensor,
                max_violation: bool = False) -> torch.Tensor:
        own = torch.arange(len(scores), device=scores.device)  # (B,) pair i is (image i, caption i)
        total = (self.query_losses(scores, own, img_ids, img_ids, max_violation).sum()
                 + self.query_losses(scores.t(), own, img_ids, img_ids, max_violation).sum())
        return total * self.query_weight(len(scores))

    def query_losses(self, scores: torch.Tensor, positives: torch.Tensor,
                     query_ids: torch.Tensor, key_ids: torch.Tensor,
                     max_violation: bool = False) -> torch.Tensor:
        """``(Q,)`` loss terms of ``Q`` queries, each ranking ``K`` keys: ``scores (Q, K)``,
        ``positives (Q,)`` the column of each query's own pair, ids as :func:`negative_mask`."""
        raise NotImplementedError

    def query_weight(self, batch_size: int) -> float:
        """Factor applied to the summed query terms of a batch of ``batch_size`` pairs."""
        return 1.0


class ContrastiveLoss(RankingLoss):
    """Hinge triplet loss with a margin, summed over both retrieval directions.

    With ``max_violation`` only the hardest negative of each query counts (VSE++); otherwise all
    negatives are summed (the warm-up regime of ``--vse_mean_warmup_epochs``).
    """

    def __init__(self, margin: float = 0.05, positives: str = "diagonal"):
        super().__init__(positives)
        self.margin = margin

    def query_losses(self, scores, positives, query_ids, key_ids, max_violation=False):
        positive = scores.gather(1, positives[:, None])  # (Q, 1) score of the query's own pair
        # cost[q, k]: key k ranked above the query's own pair, within the margin
        cost = (self.margin + scores - positive).clamp(min=0)  # (Q, K)
        cost = cost.masked_fill(~negative_mask(positives, query_ids, key_ids, self.positives), 0)
        return cost.amax(dim=1) if max_violation else cost.sum(dim=1)


class InfoNCELoss(RankingLoss):
    """Symmetric InfoNCE: cross-entropy over ``scores / temperature``, other matches masked,
    averaged over the queries of each direction and over the two directions.

    ``max_violation`` is accepted for the common interface and has no effect: the softmax
    already weighs the negatives by how hard they are.
    """

    def __init__(self, temperature: float = 0.01, positives: str = "diagonal"):
        super().__init__(positives)
        self.temperature = temperature

    def query_losses(self, scores, positives, query_ids, key_ids, max_violation=False):
        columns = torch.arange(scores.shape[1], device=scores.device)
        own = columns[None, :] == positives[:, None]  # (Q, K)
        competing = own | negative_mask(positives, query_ids, key_ids, self.positives)
        logits = (scores / self.temperature).masked_fill(~competing, float("-inf"))
        return logits.logsumexp(dim=1) - logits.gather(1, positives[:, None]).squeeze(1)

    def query_weight(self, batch_size: int) -> float:
        return 1.0 / (2 * batch_size)


# --criterion name -> the loss, built from the parsed flags it uses
CRITERIA = {
    "ContrastiveLoss": lambda args: ContrastiveLoss(margin=args.margin, positives=args.positives),
    "InfoNCELoss": lambda args: InfoNCELoss(temperature=args.temperature,
                                            positives=args.positives),
}


def build_criterion(args) -> nn.Module:
    if args.criterion not in CRITERIA:
        raise ValueError(f"unknown --criterion {args.criterion!r} ({'|'.join(CRITERIA)})")
    return CRITERIA[args.criterion](args)
