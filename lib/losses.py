"""Ranking losses on the ``(B, B)`` score matrix (rows: images, columns: captions).

A loss is called as ``criterion(scores, img_ids, max_violation=...)``: the training loop decides
each epoch whether only the hardest negative counts (after the warm-up epochs).
"""

from __future__ import annotations

import torch
from torch import nn

POSITIVES = ("diagonal", "same_image")


def positive_mask(img_ids: torch.Tensor, positives: str = "diagonal") -> torch.Tensor:
    """(B, B) True at the pairs that are not negatives.

    ``diagonal`` (CHAN, VSE∞): only pair i with caption i; a second caption of the same image
    in the batch is a negative. ``same_image``: every caption of the image is a positive, and
    never serves as a negative.
    """
    if positives == "same_image":
        return img_ids[:, None] == img_ids[None, :]
    if positives != "diagonal":
        raise ValueError(f"unknown positives {positives!r}; choose from {', '.join(POSITIVES)}")
    return torch.eye(len(img_ids), dtype=torch.bool, device=img_ids.device)


class ContrastiveLoss(nn.Module):
    """Hinge triplet loss with a margin, summed over both retrieval directions.

    With ``max_violation`` only the hardest negative of each query counts (VSE++); otherwise all
    negatives are summed (the warm-up regime of ``--vse_mean_warmup_epochs``).
    """

    def __init__(self, margin: float = 0.05, positives: str = "diagonal"):
        super().__init__()
        self.margin = margin
        self.positives = positives

    def forward(self, scores: torch.Tensor, img_ids: torch.Tensor,
                max_violation: bool = False) -> torch.Tensor:
        positive = scores.diag()  # (B,)
        negatives = ~positive_mask(img_ids, self.positives)
        # cost_caption[i, j]: caption j ranked above image i's own caption
        cost_caption = (self.margin + scores - positive[:, None]).clamp(min=0)
        # cost_image[i, j]: image i ranked above caption j's own image
        cost_image = (self.margin + scores - positive[None, :]).clamp(min=0)
        cost_caption = cost_caption.masked_fill(~negatives, 0)
        cost_image = cost_image.masked_fill(~negatives, 0)
        if max_violation:
            return cost_caption.amax(dim=1).sum() + cost_image.amax(dim=0).sum()
        return cost_caption.sum() + cost_image.sum()


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE: cross-entropy over ``scores / temperature``, other matches masked.

    ``max_violation`` is accepted for the common interface and has no effect: the softmax
    already weighs the negatives by how hard they are.
    """

    def __init__(self, temperature: float = 0.01, positives: str = "diagonal"):
        super().__init__()
        self.temperature = temperature
        self.positives = positives

    def forward(self, scores: torch.Tensor, img_ids: torch.Tensor,
                max_violation: bool = False) -> torch.Tensor:
        eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
        other_positives = positive_mask(img_ids, self.positives) & ~eye
        logits = (scores / self.temperature).masked_fill(other_positives, float("-inf"))
        target = torch.arange(len(scores), device=scores.device)
        return (nn.functional.cross_entropy(logits, target)
                + nn.functional.cross_entropy(logits.t(), target)) / 2


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
