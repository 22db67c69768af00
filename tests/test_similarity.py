import math

import pytest
import torch

from lib.masking import l2norm
from lib.similarity import CODINGS, POOLINGS, pairwise_sims, soft_region_coding

ALL = [(c, p) for c in CODINGS for p in POOLINGS if c != "global"] + [("global", "MeanPooling")]

# One image with regions v1=(1,0), v2=(0,1); one caption with tokens t1=(1,0), t2=(0.6,0.8).
# Cosines s = [[1, 0.6], [0, 0.8]] (rows regions, columns tokens).
IMG = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
CAP = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
LENS = torch.tensor([2])


def _score(coding, pooling, **kw):
    return pairwise_sims(IMG, LENS, CAP, LENS, coding, pooling, **kw).item()


def test_hand_computed_codings_and_poolings():
    # VHA: best region per token -> [1, 0.8]; THA: best token per region -> [1, 0.8]
    for coding in ("VHACoding", "THACoding"):
        assert _score(coding, "MeanPooling") == pytest.approx(0.9)
        assert _score(coding, "SumPooling") == pytest.approx(1.8)
        assert _score(coding, "MaxPooling") == pytest.approx(1.0)
        assert _score(coding, "LSEPooling", belta=0.1) == pytest.approx(
            math.log(math.exp(10) + math.exp(8)))
        w = torch.softmax(torch.tensor([10.0, 8.0]), 0)
        assert _score(coding, "SoftmaxPooling", belta=0.1) == pytest.approx(
            (w[0] * 1 + w[1] * 0.8).item())
    # global: mean region (0.5, 0.5), mean token (0.8, 0.4): cosine = 0.6 / (sqrt(.5)*sqrt(.8))
    assert _score("global", "MeanPooling") == pytest.approx(0.6 / math.sqrt(0.5 * 0.8))


def test_vsa_by_hand():
    alpha = 0.5
    expected = []
    for region in IMG[0]:
        sims = CAP[0] @ region  # (L,)
        attended = torch.softmax(sims / alpha, 0) @ CAP[0]  # (D,)
        expected.append(torch.dot(region, attended) / attended.norm())
    assert _score("VSACoding", "MeanPooling", alpha=alpha) == pytest.approx(
        torch.stack(expected).mean().item(), abs=1e-6)


def _random_batch(seed, n_img=3, n_cap=4, dim=8):
    g = torch.Generator().manual_seed(seed)
    img_lens = torch.tensor([1, 4, 3][:n_img])
    cap_lens = torch.tensor([2, 5, 1, 3][:n_cap])
    img = l2norm(torch.randn(n_img, 4, dim, generator=g))
    cap = l2norm(torch.randn(n_cap, 5, dim, generator=g))
    return img, img_lens, cap, cap_lens


@pytest.mark.parametrize("coding,pooling", ALL)
def test_padding_never_changes_a_score(coding, pooling):
    img, img_lens, cap, cap_lens = _random_batch(0)
    ref = pairwise_sims(img, img_lens, cap, cap_lens, coding, pooling, mix_logit=0.3)
    assert torch.isfinite(ref).all()
    # append padded positions holding garbage (not zeros): masking, not luck, must hide them
    g = torch.Generator().manual_seed(1)
    img_pad = torch.cat([img, 5 * torch.randn(3, 3, 8, generator=g)], dim=1)
    cap_pad = torch.cat([cap, 5 * torch.randn(4, 4, 8, generator=g)], dim=1)
    for i, n in enumerate(img_lens):
        img_pad[i, n:4] = 7.0  # overwrite the existing padding too
    for i, n in enumerate(cap_lens):
        cap_pad[i, n:5] = -3.0
    out = pairwise_sims(img_pad, img_lens, cap_pad, cap_lens, coding, pooling, mix_logit=0.3)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("coding,pooling", ALL)
def test_each_pair_is_scored_independently(coding, pooling):
    """A score depends only on its own image and caption, not on the rest of the batch."""
    img, img_lens, cap, cap_lens = _random_batch(2)
    full = pairwise_sims(img, img_lens, cap, cap_lens, coding, pooling)
    for i in range(len(img)):
        for j in range(len(cap)):
            n, m = int(img_lens[i]), int(cap_lens[j])
            single = pairwise_sims(img[i:i + 1, :n], img_lens[i:i + 1], cap[j:j + 1, :m],
                                   cap_lens[j:j + 1], coding, pooling)
            assert single.item() == pytest.approx(full[i, j].item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("coding,pooling", ALL)
def test_chunking_does_not_change_scores(coding, pooling):
    img, img_lens, cap, cap_lens = _random_batch(3)
    whole = pairwise_sims(img, img_lens, cap, cap_lens, coding, pooling)
    chunked = pairwise_sims(img, img_lens, cap, cap_lens, coding, pooling, max_elements=1)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_mixed_coding_extremes_are_hard_and_soft():
    img, img_lens, cap, cap_lens = _random_batch(4)
    hard = pairwise_sims(img, img_lens, cap, cap_lens, "THACoding")
    soft = pairwise_sims(img, img_lens, cap, cap_lens, "VSACoding")
    at_hard = pairwise_sims(img, img_lens, cap, cap_lens, "MixedCoding", mix_logit=60.0)
    at_soft = pairwise_sims(img, img_lens, cap, cap_lens, "MixedCoding", mix_logit=-60.0)
    torch.testing.assert_close(at_hard, hard)
    torch.testing.assert_close(at_soft, soft)
    assert not torch.allclose(hard, soft)


def test_vsa_tends_to_tha_at_low_temperature():
    img, img_lens, cap, cap_lens = _random_batch(5)
    hard = pairwise_sims(img, img_lens, cap, cap_lens, "THACoding")
    cold = pairwise_sims(img, img_lens, cap, cap_lens, "VSACoding", alpha=1e-4)
    torch.testing.assert_close(cold, hard, rtol=0, atol=1e-4)


def test_soft_coding_matches_materialised_attention():
    img, img_lens, cap, cap_lens = _random_batch(6)
    sims = torch.einsum("ird,cld->icrl", img, cap)
    mask = torch.arange(5)[None] < cap_lens[:, None]
    fast = soft_region_coding(sims, mask, cap, alpha=0.2)
    attn = torch.softmax((sims / 0.2).masked_fill(~mask[None, :, None], float("-inf")), -1)
    attended = torch.einsum("icrl,cld->icrd", attn, cap)
    slow = (attended * img[:, None]).sum(-1) / attended.norm(dim=-1)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def test_gradients_flow_and_stay_finite():
    img, img_lens, cap, cap_lens = _random_batch(7)
    img.requires_grad_(True)
    cap.requires_grad_(True)
    mix = torch.tensor(0.0, requires_grad=True)
    for coding, pooling in ALL:
        out = pairwise_sims(img, img_lens, cap, cap_lens, coding, pooling, mix_logit=mix)
        out.sum().backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(cap.grad).all()
    assert mix.grad is not None and mix.grad != 0


def test_bad_arguments_are_reported():
    img, img_lens, cap, cap_lens = _random_batch(8)
    with pytest.raises(ValueError, match="unknown coding"):
        pairwise_sims(img, img_lens, cap, cap_lens, coding="VHA")
    with pytest.raises(ValueError, match="unknown pooling"):
        pairwise_sims(img, img_lens, cap, cap_lens, pooling="Mean")
    with pytest.raises(ValueError, match="expected"):
        pairwise_sims(img, img_lens, cap[..., :4], cap_lens)
