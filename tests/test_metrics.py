import numpy as np
import pytest
import torch

from lib.errors import EvaluationError
from lib.evaluation.metrics import fold_metrics, i2t_ranks, recall_metrics, t2i_ranks

# 1:1 case. i2t ranks [0, 1, 1]; t2i ranks [0, 1, 1].
ONE_TO_ONE = [[0.9, 0.1, 0.5],
              [0.2, 0.3, 0.8],
              [0.4, 0.7, 0.6]]
# COCO style, 2 images x 10 captions. i2t ranks [4, 0]; t2i ranks [0,0,0,0,0,1,1,1,1,0].
FIVE_PER_IMAGE = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7, 0.6, 0.05],
                  [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]


def test_one_to_one_by_hand():
    m = recall_metrics(torch.tensor(ONE_TO_ONE))
    third = 100 / 3
    assert m["r1"] == pytest.approx(third) and m["r1i"] == pytest.approx(third)
    assert m["r5"] == m["r10"] == m["r5i"] == m["r10i"] == 100
    assert m["medr"] == m["medri"] == 2  # floor(median([0, 1, 1])) + 1
    assert m["meanr"] == pytest.approx(2 / 3 + 1)
    assert m["rsum"] == pytest.approx(2 * third + 400)


def test_five_captions_per_image_by_hand():
    sims = torch.tensor(FIVE_PER_IMAGE)
    assert i2t_ranks(sims, 5).tolist() == [4, 0]
    assert t2i_ranks(sims, 5).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    m = recall_metrics(sims)
    assert (m["r1"], m["r5"], m["r10"], m["medr"], m["meanr"]) == (50, 100, 100, 3, 3)
    assert (m["r1i"], m["r5i"], m["r10i"], m["medri"]) == (60, 100, 100, 1)
    assert m["meanri"] == pytest.approx(1.4)
    assert m["rsum"] == pytest.approx(510)


def test_recall_at_k_threshold_is_strict():
    # 1:1 mapping; image 0's caption has exactly 5 captions above it (ties after it in index
    # order do not count), every other image ranks its caption first
    sims = torch.eye(12)
    sims[0] = torch.tensor([0.0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert i2t_ranks(sims, 1).tolist() == [5] + [0] * 11
    m = recall_metrics(sims)
    assert m["r1"] == pytest.approx(100 * 11 / 12) and m["r5"] == pytest.approx(100 * 11 / 12)
    assert m["r10"] == 100


def test_fold5_mean_ignores_cross_fold_scores():
    perfect = torch.eye(2).repeat_interleave(5, dim=1)  # each image scores only its captions
    case = torch.tensor(FIVE_PER_IMAGE)
    sims = torch.full((10, 50), 5.0)  # off-fold entries would win every ranking if used
    for f in range(5):
        sims[2 * f:2 * f + 2, 10 * f:10 * f + 10] = case if f % 2 == 0 else perfect
    m = fold_metrics(sims, fold_images=2)
    assert m["rsum"] == pytest.approx((3 * 510 + 2 * 600) / 5)
    assert m["r1"] == pytest.approx((3 * 50 + 2 * 100) / 5)
    assert m["medr"] == pytest.approx((3 * 3 + 2 * 1) / 5)
    assert m["r1i"] == pytest.approx((3 * 60 + 2 * 100) / 5)


def _sort_reference_ranks(scores, gt):
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return (order == gt[:, None]).float().argmax(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_stable_sort_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    sims = torch.randint(0, 4, (30, 150), generator=g).float()  # many ties
    caps = torch.arange(150)
    assert torch.equal(t2i_ranks(sims, 5), _sort_reference_ranks(sims.t(), caps // 5))
    per_caption = [_sort_reference_ranks(sims, torch.arange(30) * 5 + j) for j in range(5)]
    assert torch.equal(i2t_ranks(sims, 5), torch.stack(per_caption).amin(0))


def test_numpy_input_and_bad_shape():
    assert recall_metrics(np.array(ONE_TO_ONE))["rsum"] == pytest.approx(200 / 3 + 400)
    with pytest.raises(EvaluationError, match="3 images x 7 captions"):
        recall_metrics(torch.zeros(3, 7))
    with pytest.raises(EvaluationError, match="needs 5 x 1000 = 5000 images.*1000 images"):
        fold_metrics(torch.zeros(1000, 5000))  # a 1K split is not five 200-image folds
    nan_outside_folds = torch.eye(10).repeat_interleave(5, dim=1)
    nan_outside_folds[0, -1] = float("nan")
    with pytest.raises(EvaluationError, match="NaN"):
        fold_metrics(nan_outside_folds, fold_images=2)
