from argparse import Namespace

import pytest
import torch

from lib.losses import ContrastiveLoss, InfoNCELoss, build_criterion

SCORES = torch.tensor([[0.8, 0.3, 0.6],
                       [0.5, 0.7, 0.2],
                       [0.1, 0.9, 0.4]])
# margin 0.3. caption-retrieval costs (row i, caption j != i): (0,2)=.1 (1,0)=.1 (2,1)=.8;
# image-retrieval costs (image i, column j != i): (2,1)=.5 (0,2)=.5 (1,2)=.1


def test_sum_over_negatives_by_hand():
    loss = ContrastiveLoss(margin=0.3)(SCORES, torch.arange(3))
    assert loss.item() == pytest.approx(0.1 + 0.1 + 0.8 + 0.5 + 0.5 + 0.1, abs=1e-6)


def test_hardest_negative_by_hand():
    loss = ContrastiveLoss(margin=0.3)(SCORES, torch.arange(3), max_violation=True)
    # row maxima 0.1, 0.1, 0.8; column maxima 0, 0.5, 0.5
    assert loss.item() == pytest.approx(1.0 + 1.0, abs=1e-6)


def test_diagonal_positives_keep_a_same_image_caption_as_a_negative():
    """CHAN and VSE∞: only the diagonal is positive, even when pairs 0 and 1 share an image."""
    loss = ContrastiveLoss(margin=0.3)(SCORES, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(0.1 + 0.1 + 0.8 + 0.5 + 0.5 + 0.1, abs=1e-6)
    hardest = ContrastiveLoss(margin=0.3)(SCORES, torch.tensor([0, 0, 1]), max_violation=True)
    assert hardest.item() == pytest.approx(2.0, abs=1e-6)


def test_same_image_positives_are_never_negatives():
    loss = ContrastiveLoss(margin=0.3, positives="same_image")(SCORES, torch.tensor([0, 0, 1]))
    # pairs (0,1) and (1,0) are matches: the 0.1 caption cost at (1,0) disappears
    assert loss.item() == pytest.approx(2.1 - 0.1, abs=1e-6)
    t = 0.5
    nce = InfoNCELoss(temperature=t, positives="same_image")(SCORES, torch.tensor([0, 0, 1]))
    logits = SCORES / t
    rows = torch.stack([logits[0, [0, 2]].logsumexp(0), logits[1, [1, 2]].logsumexp(0),
                        logits[2].logsumexp(0)])
    cols = torch.stack([logits[[0, 2], 0].logsumexp(0), logits[[1, 2], 1].logsumexp(0),
                        logits[:, 2].logsumexp(0)])
    expected = (-(logits.diag() - rows).mean() - (logits.diag() - cols).mean()) / 2
    assert nce.item() == pytest.approx(expected.item(), abs=1e-6)


def test_infonce_by_hand():
    t = 0.5
    loss = InfoNCELoss(temperature=t)(SCORES, torch.arange(3))
    logits = SCORES / t
    rows = -(logits.diag() - logits.logsumexp(1)).mean()
    cols = -(logits.diag() - logits.logsumexp(0)).mean()
    assert loss.item() == pytest.approx(((rows + cols) / 2).item(), abs=1e-6)


def test_criteria_are_built_from_their_flags():
    flags = Namespace(criterion="ContrastiveLoss", margin=0.3, temperature=0.5,
                      positives="diagonal")
    assert build_criterion(flags)(SCORES, torch.arange(3)).item() == pytest.approx(2.1, abs=1e-6)
    flags.criterion = "InfoNCELoss"
    assert build_criterion(flags).temperature == 0.5
    flags.criterion = "Triplet"
    with pytest.raises(ValueError, match="unknown --criterion 'Triplet'"):
        build_criterion(flags)
