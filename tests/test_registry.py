"""Adding a coding or a pooling: one registered class, found by the flags, training and
evaluation alike (padded reference and packed kernel)."""

import pytest
import torch
from test_scoring import _embeddings

from lib.config import parse_train_args
from lib.evaluation import PackedSequences, score_matrix
from lib.masking import length_mask
from lib.precision import float32_products
from lib.similarity import (
    CODINGS,
    POOLINGS,
    Coding,
    Pooling,
    Similarity,
    pairwise_sims,
    register_coding,
    register_pooling,
    unpack_tokens,
)


class MeanRegionCoding(Coding):
    """For each token, ``scale`` times its mean cosine over the valid regions."""

    name = "MeanRegionCoding"
    learnable = {"scale": 1.0}

    def code(self, sims, region_mask, token_mask, cap_emb):
        weights = region_mask[:, None, :, None].to(sims.dtype)  # (n_img, 1, R, 1)
        mean = (sims * weights).sum(2) / weights.sum(2)  # (n_img, n_cap, L)
        return self.learned["scale"] * mean, token_mask[None]

    def packed_scores(self, images, region_mask, tokens, cap_lens, pooling):
        n_img, n_reg, dim = images.shape
        sims = float32_products(images.reshape(-1, dim), tokens.t()).view(n_img, n_reg, -1)
        weights = region_mask[:, :, None].float()  # (n_img, R, 1)
        mean = (sims * weights).sum(1) / weights.sum(1)  # (n_img, T)
        return pooling(*unpack_tokens(self.learned["scale"] * mean, cap_lens))


class PaddedOnlyCoding(MeanRegionCoding):
    """The same values without a packed kernel: evaluation falls back to padded blocks."""

    name = "PaddedOnlyCoding"
    packed_scores = None


class MedianPooling(Pooling):
    """Lower median of the valid values."""

    name = "MedianPooling"

    def pool(self, values, valid):
        ranked = values.masked_fill(~valid, float("inf")).sort(-1).values
        middle = ((valid.sum(-1) - 1) // 2).clamp_min(0)
        return ranked.gather(-1, middle[..., None]).squeeze(-1)


@pytest.fixture()
def registered():
    """Register the test classes through the public decorators; unregister them afterwards."""
    added = [register_coding(MeanRegionCoding), register_coding(PaddedOnlyCoding)]
    register_pooling(MedianPooling)
    yield
    for cls in added:
        del CODINGS[cls.name]
    del POOLINGS[MedianPooling.name]


def _by_hand(imgs, img_lens, caps, cap_lens, scale):
    """Mean over tokens of ``scale`` x the mean cosine over regions, one pair at a time."""
    out = torch.empty(len(imgs), len(caps))
    for i, n in enumerate(img_lens.tolist()):
        for j, m in enumerate(cap_lens.tolist()):
            out[i, j] = scale * (imgs[i, :n] @ caps[j, :m].t()).mean()
    return out


@pytest.mark.parametrize("name", ["MeanRegionCoding", "PaddedOnlyCoding"])
@pytest.mark.parametrize("budget", [50, 10**6])
def test_registered_coding_scores_the_same_padded_and_packed(registered, name, budget):
    imgs, img_lens, caps, cap_lens = _embeddings(7, 23)
    padded = pairwise_sims(imgs, img_lens, caps, cap_lens, name, "MeanPooling", scale=2.0)
    torch.testing.assert_close(padded, _by_hand(imgs, img_lens, caps, cap_lens, 2.0))
    sim = Similarity(name, "MeanPooling")
    assert dict(sim.named_parameters()).keys() == {"scale"}  # learned, so optimised and saved
    sim.scale.data.fill_(2.0)
    packed = score_matrix(sim, imgs, img_lens, PackedSequences.from_padded(caps, cap_lens),
                          max_elements=budget)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_gradients_reach_a_registered_learnable(registered):
    imgs, img_lens, caps, cap_lens = _embeddings(3, 5)
    sim = Similarity("MeanRegionCoding", "MeanPooling")
    sim(imgs, img_lens, caps, cap_lens).sum().backward()
    assert sim.scale.grad is not None and sim.scale.grad != 0


def test_registered_pooling_in_both_paths(registered):
    imgs, img_lens, caps, cap_lens = _embeddings(5, 11, seed=4)
    padded = pairwise_sims(imgs, img_lens, caps, cap_lens, "VHACoding", "MedianPooling")
    masked = torch.einsum("ird,cld->icrl", imgs, caps).masked_fill(
        ~length_mask(img_lens, imgs.shape[1])[:, None, :, None], -2.0)
    best = masked.amax(2)  # (n_img, n_cap, L): VHA by hand
    for j, m in enumerate(cap_lens.tolist()):
        torch.testing.assert_close(padded[:, j], best[:, j, :m].median(-1).values)
    packed = score_matrix(Similarity("VHACoding", "MedianPooling"), imgs, img_lens,
                          PackedSequences.from_padded(caps, cap_lens), max_elements=40)
    torch.testing.assert_close(packed, padded, rtol=1e-6, atol=1e-6)


def test_flags_accept_registered_names(registered):
    args = parse_train_args(["--config", "chan", "--coding_type", "MeanRegionCoding",
                             "--pooling_type", "MedianPooling"])
    assert (args.coding_type, args.pooling_type) == ("MeanRegionCoding", "MedianPooling")


def test_names_are_unique_and_lookups_explain_themselves():
    with pytest.raises(ValueError, match="not taken yet, got 'VHACoding'"):
        register_coding(type("Again", (Coding,), {"name": "VHACoding"}))
    with pytest.raises(ValueError, match="unknown coding 'Nope'; choose from VHACoding"):
        Similarity("Nope")
    with pytest.raises(ValueError, match="unknown pooling 'Nope'"):
        Similarity("VHACoding", "Nope")
    imgs, img_lens, caps, cap_lens = _embeddings(2, 3)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['mixlogit'\]"):
        pairwise_sims(imgs, img_lens, caps, cap_lens, mixlogit=0.3)
    with pytest.raises(TypeError, match="positional"):  # mix_logit used to be the 9th argument
        pairwise_sims(imgs, img_lens, caps, cap_lens, "MixedCoding", "MeanPooling", 0.1, 0.1, 0.3)
