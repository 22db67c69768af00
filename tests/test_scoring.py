"""Blocked evaluation scoring against the straightforward reference, and ensembles."""

import numpy as np
import pytest
import torch

import eval as eval_cli
from lib.evaluation import PackedSequences, recall_metrics, score_matrix
from lib.masking import l2norm
from lib.similarity import CODINGS, POOLINGS, Similarity, pairwise_sims

ALL = [(c, p) for c in CODINGS for p in POOLINGS if c != "global"] + [("global", "MeanPooling")]


def _embeddings(n_img, n_cap, seed=0, dim=16, regions=6, max_len=9):
    g = torch.Generator().manual_seed(seed)
    img_lens = torch.randint(1, regions + 1, (n_img,), generator=g)
    img_lens[0] = regions
    cap_lens = torch.randint(1, max_len + 1, (n_cap,), generator=g)
    cap_lens[: min(3, n_cap)] = 1  # captions of length 1
    imgs = l2norm(torch.randn(n_img, regions, dim, generator=g))
    imgs = imgs * (torch.arange(regions)[None] < img_lens[:, None]).unsqueeze(-1)
    caps = l2norm(torch.randn(n_cap, int(cap_lens.max()), dim, generator=g))
    return imgs, img_lens, caps, cap_lens


@pytest.mark.parametrize("coding,pooling", ALL)
@pytest.mark.parametrize("n_img,n_cap,budget", [(7, 23, 50), (1, 5, 10), (5, 31, 10**6)])
def test_blocked_scores_equal_reference(coding, pooling, n_img, n_cap, budget):
    imgs, img_lens, caps, cap_lens = _embeddings(n_img, n_cap)
    sim = Similarity(coding, pooling, alpha=0.2, belta=0.3)
    for param in sim.parameters():  # MixedCoding's mix_logit, AdaptiveMixedCoding's mix_param
        param.data.fill_(0.4)
    reference = pairwise_sims(imgs, img_lens, caps, cap_lens, coding, pooling, alpha=0.2,
                              belta=0.3, mix_logit=0.4, mix_param=0.4)
    packed = PackedSequences.from_padded(caps, cap_lens)
    # a tiny element budget forces blocks that cut through the caption list everywhere
    scores = score_matrix(sim, imgs, img_lens, packed, "fp32", max_elements=budget)
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_stays_close(precision):
    imgs, img_lens, caps, cap_lens = _embeddings(6, 30, seed=1, dim=64)
    sim = Similarity("VHACoding", "MeanPooling")
    packed = PackedSequences.from_padded(caps, cap_lens)
    exact = score_matrix(sim, imgs, img_lens, packed, "fp32")
    approx = score_matrix(sim, imgs, img_lens, packed, precision)
    assert approx.dtype == torch.float32
    assert (approx - exact).abs().max() < (2e-2 if precision == "bf16" else 1e-5)


@pytest.mark.parametrize("coding,pooling", ALL)
def test_bf16_stores_bfloat16_but_scores_in_float32(coding, pooling):
    """bf16 = float32 scores of bfloat16-rounded embeddings; scores are not rounded to bf16."""
    imgs, img_lens, caps, cap_lens = _embeddings(7, 23, seed=3, dim=32)
    sim = Similarity(coding, pooling, alpha=0.2, belta=0.3)
    packed = PackedSequences.from_padded(caps, cap_lens)
    scores = score_matrix(sim, imgs, img_lens, packed, "bf16", max_elements=200)
    rounded = PackedSequences(packed.data.bfloat16().float(), cap_lens)
    expected = score_matrix(sim, imgs.bfloat16().float(), img_lens, rounded, "fp32")
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    if pooling == "MaxPooling":  # bf16 rounding of each score would make hundreds of ties
        assert len(torch.unique(scores)) == scores.numel()


def test_packed_sequences_round_trip():
    _, _, caps, cap_lens = _embeddings(1, 11, seed=2)
    packed = PackedSequences.from_padded(caps, cap_lens)
    assert packed.data.shape[0] == int(cap_lens.sum())
    idx = torch.tensor([10, 3, 0, 7])
    padded, lens = packed.to_padded(idx)
    assert torch.equal(lens, cap_lens[idx])
    for row, i in enumerate(idx.tolist()):
        n = int(cap_lens[i])
        assert torch.equal(padded[row, :n], caps[i, :n])
        assert padded[row, n:].abs().sum() == 0


def test_ensemble_averages_score_matrices(tmp_path):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(4, 20, generator=g), torch.rand(4, 20, generator=g)
    for name, sims in (("a.npy", a), ("b.npy", b)):
        np.save(tmp_path / name, {"npts": 4, "sims": sims.numpy()})
    metrics = eval_cli.main(["--results", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    assert metrics == pytest.approx(recall_metrics((a + b) / 2))
    assert metrics != pytest.approx(recall_metrics(a))


def test_results_of_different_splits_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", {"npts": 4, "sims": np.zeros((4, 20), np.float32)})
    np.save(tmp_path / "b.npy", {"npts": 2, "sims": np.zeros((2, 10), np.float32)})
    with pytest.raises(ValueError, match="b.npy: shape"):
        eval_cli.main(["--results", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])


def test_missing_out_dtype_overload_falls_back_to_upcasting(caplog):
    from lib.precision import cuda_out_dtype_works

    # the CPU backend has no mm(out_dtype=...): the one-time check must say so and fall back
    cuda_out_dtype_works.cache_clear()
    assert cuda_out_dtype_works(torch.device("cpu"), torch.bfloat16) is False
    assert "upcasts its blocks instead" in caplog.text


def test_out_of_memory_retries_with_smaller_blocks(monkeypatch, caplog):
    import lib.evaluation.scoring as scoring

    imgs, img_lens, caps, cap_lens = _embeddings(5, 20)
    sim = Similarity("VHACoding", "MeanPooling")
    packed = PackedSequences.from_padded(caps, cap_lens)
    reference = score_matrix(sim, imgs, img_lens, packed, "fp32", max_elements=2**20)
    real, budgets = scoring._packed_scores, []

    def fits_below(coding, pooling, images, lens, captions, budget, progress):
        budgets.append(budget)
        if budget > 2**18:  # a device that only fits blocks of 2**18 elements
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(coding, pooling, images, lens, captions, budget, progress)

    monkeypatch.setattr(scoring, "_packed_scores", fits_below)
    scores = score_matrix(sim, imgs, img_lens, packed, "fp32", max_elements=2**22)
    assert budgets == [2**22, 2**20, 2**18]
    torch.testing.assert_close(scores, reference, rtol=0, atol=1e-6)
    assert "retrying with blocks of 1048576 elements instead of 4194304" in caplog.text

    def never_fits(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scoring, "_packed_scores", never_fits)
    from lib.errors import EvaluationError
    with pytest.raises(EvaluationError, match="out of memory on cpu even with blocks of 65536"):
        score_matrix(sim, imgs, img_lens, packed, "fp32", max_elements=2**20)
