"""Recall@K metrics of an ``(N_img, N_cap)`` score matrix, on any device (VSE∞/CHAN protocol).

Ranks are 0-based positions in a *stable* descending sort: an item tied with the ground truth
counts as ranked above it only when its index is smaller. With real-valued scores ties are rare;
the rule just makes results deterministic and equal to ``torch.sort(stable=True)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EvaluationError

KEYS = ("r1", "r5", "r10", "medr", "meanr", "r1i", "r5i", "r10i", "medri", "meanri", "rsum")
ROW_BLOCK_ELEMENTS = 2**26


def stable_ranks(scores: torch.Tensor, gt_index: torch.Tensor) -> torch.Tensor:
    """Rank of column ``gt_index[i]`` within row ``i`` of ``scores`` (stable descending sort)."""
    ranks = torch.empty(len(scores), dtype=torch.long, device=scores.device)
    columns = torch.arange(scores.shape[1], device=scores.device)
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, scores.shape[1]))
    for start in range(0, len(scores), step):
        block = scores[start:start + step]  # (n, M)
        gt_col = gt_index[start:start + step].unsqueeze(1)  # (n, 1)
        gt = block.gather(1, gt_col)
        ahead = (block > gt) | ((block == gt) & (columns < gt_col))
        ranks[start:start + step] = ahead.sum(1)
    return ranks


def i2t_ranks(sims: torch.Tensor, caps_per_image: int) -> torch.Tensor:
    """Per image, the best rank among its captions ``i*k .. i*k+k-1``: ``(N_img,)``."""
    images = torch.arange(sims.shape[0], device=sims.device)
    ranks = [stable_ranks(sims, images * caps_per_image + j) for j in range(caps_per_image)]
    return torch.stack(ranks).amin(0)


def t2i_ranks(sims: torch.Tensor, caps_per_image: int) -> torch.Tensor:
    """Per caption ``c``, the rank of image ``c // k`` in column ``c``: ``(N_cap,)``."""
    captions = torch.arange(sims.shape[1], device=sims.device)
    return stable_ranks(sims.t(), captions // caps_per_image)


def _summary(ranks: torch.Tensor) -> tuple[float, ...]:
    r = ranks.cpu().numpy()
    recalls = [100.0 * float(np.mean(r < k)) for k in (1, 5, 10)]
    return (*recalls, float(np.floor(np.median(r)) + 1), float(r.mean() + 1))


def _check_finite(sims: torch.Tensor) -> None:
    if not bool(torch.isfinite(sims).all()):
        raise EvaluationError("score matrix contains NaN or infinite values; no ranking is defined")


def recall_metrics(sims: torch.Tensor | np.ndarray, caps_per_image: int | None = None) -> dict:
    """R@1/5/10, medr, meanr both ways and rsum. ``caps_per_image`` defaults to N_cap // N_img."""
    sims = torch.as_tensor(sims)
    _check_finite(sims)
    n_img, n_cap = sims.shape
    k = caps_per_image or n_cap // n_img
    if k < 1 or n_img * k != n_cap:
        raise EvaluationError(f"score matrix of {n_img} images x {n_cap} captions: the caption "
                              f"count must be a multiple of the image count (rows: images, "
                              f"columns: captions)")
    i2t = _summary(i2t_ranks(sims, k))
    t2i = _summary(t2i_ranks(sims, k))
    metrics = dict(zip(KEYS[:10], (*i2t, *t2i), strict=True))
    metrics["rsum"] = sum(i2t[:3]) + sum(t2i[:3])
    return metrics


def fold_metrics(sims: torch.Tensor | np.ndarray, fold_images: int = 1000, folds: int = 5) -> dict:
    """COCO 1K protocol: ``folds`` diagonal blocks of ``fold_images`` images; mean of every metric.

    The matrix must hold exactly ``folds * fold_images`` images (COCO testall: 5 x 1,000), so
    that a 1K-image split is never silently reported as five 200-image folds.
    """
    sims = torch.as_tensor(sims)
    _check_finite(sims)  # also outside the folds: a NaN anywhere means a broken model
    n_img, n_cap = sims.shape
    if n_img != folds * fold_images or n_cap % folds:
        raise EvaluationError(f"the {folds}-fold protocol needs {folds} x {fold_images} = "
                              f"{folds * fold_images} images (COCO testall), but the score "
                              f"matrix is {n_img} images x {n_cap} captions")
    fc = n_cap // folds
    per_fold = [recall_metrics(sims[f * fold_images:(f + 1) * fold_images, f * fc:(f + 1) * fc])
                for f in range(folds)]
    return {key: float(np.mean([m[key] for m in per_fold])) for key in KEYS}


def format_metrics(m: dict) -> str:
    """Lines in the style VSE∞ and CHAN print."""
    return "\n".join([
        f"rsum: {m['rsum']:.1f}",
        f"Average i2t Recall: {(m['r1'] + m['r5'] + m['r10']) / 3:.1f}",
        f"Image to text: {m['r1']:.1f} {m['r5']:.1f} {m['r10']:.1f} {m['medr']:.1f} "
        f"{m['meanr']:.1f}",
        f"Average t2i Recall: {(m['r1i'] + m['r5i'] + m['r10i']) / 3:.1f}",
        f"Text to image: {m['r1i']:.1f} {m['r5i']:.1f} {m['r10i']:.1f} {m['medri']:.1f} "
        f"{m['meanri']:.1f}",
    ])
