"""ASDG modules: padding awareness, batch independence, gradients, checkpoint round trip."""

import pytest
import torch
import torch.nn.functional as F

from lib.checkpoint import load_checkpoint, save_checkpoint
from lib.config import model_config, parse_train_args
from lib.data import Vocabulary
from lib.losses import ContrastiveLoss
from lib.models import ImageTextModel, Similarity, build_model
from lib.models.context import SASE
from lib.models.fusion import APPM, bin_matrices
from lib.models.graph import TokenGraph, token_adjacency
from lib.models.image import PrecompImageEncoder
from lib.models.pooling import GPO

torch.manual_seed(0)
VOCAB = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(15))])


def _regions(batch=3, n=10, dim=32, lengths=(10, 6, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dim, generator=g)
    lengths = torch.tensor(lengths)
    mask = torch.arange(n)[None] < lengths[:, None]
    return x, mask, lengths


def _pad_with_garbage(x, mask, extra=5, value=9.0):
    """Append ``extra`` padded positions and overwrite existing padding with garbage."""
    x = torch.cat([x, torch.full((x.shape[0], extra, x.shape[2]), value)], dim=1)
    x = x.masked_fill(~F.pad(mask, (0, extra)).unsqueeze(-1), value)
    return x, F.pad(mask, (0, extra))


def _check_padding_and_batch_independence(module, x, mask, atol=1e-5):
    """Appended/garbage padding changes nothing; dropping regions of sample 1 leaves 0 and 2."""
    module.eval()
    with torch.no_grad():
        ref = module(x, mask)
        xp, mp = _pad_with_garbage(x, mask)
        padded = module(xp, mp)
        torch.testing.assert_close(padded[:, : x.shape[1]] * mask[..., None], ref * mask[..., None],
                                   atol=atol, rtol=0)
        assert padded[~mp].abs().max() == 0
        dropped = mask.clone()
        dropped[1, 2:] = False  # sample 1 loses regions (as region augmentation does)
        other = module(x, dropped)
        for i in (0, 2):
            torch.testing.assert_close(other[i], ref[i], atol=atol, rtol=0)
    return ref


def test_appm_1d_padding_and_batch_independence():
    appm = APPM(32, fusion_dim=16, rates=(2, 4), bins=(1, 2, 4))
    x, mask, _ = _regions()
    out = _check_padding_and_batch_independence(appm, x, mask)
    assert not torch.allclose(out, x * mask[..., None])  # the fusion actually contributes


def test_appm_2d_grid():
    appm = APPM(32, fusion_dim=16, rates=(1, 2), spatial_dims=2).eval()
    x = torch.randn(2, 12, 32)
    out = appm(x, torch.ones(2, 12, dtype=torch.bool), shape=(3, 4))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="shape"):
        appm(x, torch.ones(2, 12, dtype=torch.bool), shape=(5, 5))


def test_bin_matrices_match_torch_pooling_and_interpolation():
    x = torch.randn(2, 4, 10)  # (B, C, N); sample 1 has only 7 valid positions
    lengths = torch.tensor([10, 7])
    for bins in (1, 2, 3, 4):
        pool, up = bin_matrices(lengths, 10, bins)
        for i, n in enumerate(lengths.tolist()):
            ref = F.adaptive_avg_pool1d(x[i:i + 1, :, :n], bins)
            torch.testing.assert_close(x[i:i + 1] @ pool[i].t(), ref)
            ups = F.interpolate(ref, size=n, mode="linear", align_corners=False)
            torch.testing.assert_close((ref @ up[i].t())[..., :n], ups)
            assert up[i, n:].abs().sum() == 0


def test_sase_padding_and_batch_independence():
    sase = SASE(32, heads=4)
    x, mask, _ = _regions()
    _check_padding_and_batch_independence(_ZeroPad(sase), x, mask)


class _ZeroPad(torch.nn.Module):
    """Zero padded outputs, as the image encoder does after its context module."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask):
        return self.inner(x, mask) * mask.unsqueeze(-1)


@pytest.mark.parametrize("enc_type,fusion", [("basic", False), ("selfattention", False),
                                             ("sase", True)])
def test_image_encoder_in_train_mode_ignores_padding(enc_type, fusion):
    """Batch statistics (BatchNorm in the basic MLP) never include padded regions."""
    torch.manual_seed(0)
    enc = PrecompImageEncoder(24, 32, enc_type, fusion=APPM(32, 16, (2,)) if fusion else None)
    for module in enc.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0  # train mode for BatchNorm, without random attention dropout
    enc.train()
    x, mask, lengths = _regions(dim=24)
    ref = enc(x, lengths)
    xp, _ = _pad_with_garbage(x, mask)
    torch.testing.assert_close(enc(xp, lengths)[:, :10], ref, atol=1e-5, rtol=0)
    norms = ref.norm(dim=-1)
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())))
    assert norms[~mask].abs().max() == 0


def test_gnn_adjacency_by_hand_excludes_padding():
    tokens = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])  # token 3 is padding (and equals token 0)
    adj = token_adjacency(tokens, mask, threshold=0.5)[0]
    expected = torch.tensor([[1, 1, 0, 0],
                             [1, 1, 0, 0],
                             [0, 0, 1, 0],
                             [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(adj, expected)


def test_gnn_adjacency_is_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    # pairs of tokens whose cosines sit within bf16 rounding of the 0.5 threshold
    tokens = torch.randn(4, 64, 16, generator=g)
    tokens[:, 1::2] = 0.5 * tokens[:, ::2] + 0.86 * torch.randn(4, 32, 16, generator=g)
    mask = torch.ones(4, 64, dtype=torch.bool)
    exact = token_adjacency(tokens, mask, threshold=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(token_adjacency(tokens, mask, threshold=0.5), exact)


def test_gnn_padding_and_batch_independence():
    gnn = TokenGraph(32, hidden=16, threshold=0.1)
    x, mask, _ = _regions()
    _check_padding_and_batch_independence(gnn, x, mask)


def test_gpo_padding_invariance():
    gpo = GPO()
    x, mask, lengths = _regions()
    with torch.no_grad():
        ref = gpo(x, lengths)
        xp, _ = _pad_with_garbage(x, mask)
        torch.testing.assert_close(gpo(xp, lengths), ref, atol=1e-5, rtol=0)


CONFIG_FLAGS = {
    "chan": ["--config", "chan"],
    "asdg": ["--config", "asdg"],
    "vse": ["--config", "vse"],
    "mixed": ["--config", "chan", "--coding_type", "MixedCoding", "--pooling_type",
              "LSEPooling"],
}


def _args(name):
    return parse_train_args([*CONFIG_FLAGS[name], "--text_enc_type", "bigru", "--img_dim", "24",
                             "--embed_size", "32", "--word_dim", "8", "--fusion_dim", "16",
                             "--gnn_hidden", "16", "--gnn_threshold", "0.0"])


def _cfg(name):
    return model_config(_args(name))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(4, 7, 24, generator=g), torch.tensor([7, 5, 7, 2]),
            torch.randint(4, 20, (4, 6), generator=g), torch.tensor([6, 3, 4, 2]))


@pytest.mark.parametrize("name", sorted(CONFIG_FLAGS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name), vocab_size=len(VOCAB))
    model.train()
    images, img_lens, caps, cap_lens = _batch()
    scores = model.score(model(images, img_lens, caps, cap_lens))
    ContrastiveLoss()(scores, torch.arange(4), max_violation=False).backward()  # every pair
    unused = {"txt_enc.embed.weight"}  # rows of unseen words only; checked separately below
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        if pname not in unused:
            assert p.grad.abs().sum() > 0, pname
    assert model.txt_enc.embed.weight.grad[caps[0]].abs().sum() > 0


@pytest.mark.parametrize("name", ["asdg", "mixed", "vse"])
def test_checkpoint_round_trip_restores_every_module(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg(name), vocab_size=len(VOCAB))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # move away from any initial value
    save_checkpoint({"model": model.state_dict(), "config": {}}, tmp_path, is_best=True)
    torch.manual_seed(1)
    fresh = build_model(_cfg(name), vocab_size=len(VOCAB))
    fresh.load_state_dict(load_checkpoint(tmp_path / "model_best.pth")["model"])
    model.eval()
    fresh.eval()
    batch = _batch(1)
    torch.testing.assert_close(fresh.score(fresh(*batch)), model.score(model(*batch)), rtol=0,
                               atol=0)
    for (n1, p1), (_, p2) in zip(model.state_dict().items(), fresh.state_dict().items(),
                                 strict=True):
        assert torch.equal(p1, p2), n1


def test_optimizer_holds_every_learnable_parameter():
    import train

    model = build_model(_cfg("mixed"), vocab_size=len(VOCAB))
    optimizer = train.build_optimizer(model, _args("mixed"))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.parameters()} == in_optimizer
    assert model.sim.mix_logit is not None


def test_parameter_groups_follow_module_declarations():
    img_enc = torch.nn.Linear(2, 2)
    txt_enc = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    txt_enc.lr_group = "slow"
    txt_enc[1].lr_group = "slower"  # nested: wins for its own parameters
    model = ImageTextModel(img_enc, txt_enc, Similarity("MixedCoding"))
    groups = model.param_groups(1e-3, {"slow": 0.1, "slower": 0.01, "unused": 5.0}, 1e-4)
    ids = [{id(p) for p in group["params"]} for group in groups]
    assert ids == [{id(p) for p in (*img_enc.parameters(), model.sim.mix_logit)},
                   {id(p) for p in txt_enc[0].parameters()},
                   {id(p) for p in txt_enc[1].parameters()}]
    assert [g["lr_factor"] for g in groups] == [1.0, 0.1, 0.01]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4, 1e-5])
    assert {g["weight_decay"] for g in groups} == {1e-4}
    with pytest.raises(ValueError, match=r"no learning-rate factor for group\(s\) \['slower'\]"):
        model.param_groups(1e-3, {"slow": 0.1}, 0.0)


def test_global_coding_pools_raw_features_then_normalises():
    """VSE∞: GPO sorts the unnormalised features; only the pooled vector is unit length."""
    model = build_model(_cfg("vse"), vocab_size=len(VOCAB))
    model.eval()
    images, img_lens, captions, cap_lens = _batch()
    with torch.no_grad():
        for encoder, encode, x, lens in ((model.img_enc, model.encode_images, images, img_lens),
                                         (model.txt_enc, model.encode_captions, captions,
                                          cap_lens)):
            elements = encoder(x, lens)  # (4, N, D) before pooling
            pooled, pooled_lens = encode(x, lens)
            valid = torch.arange(elements.shape[1])[None] < lens[:, None]
            assert not torch.allclose(elements.norm(dim=-1)[valid], torch.ones(int(valid.sum())))
            assert torch.equal(pooled_lens, torch.ones(4, dtype=torch.long))
            torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(4, 1))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_masked_batch_norm_equals_batch_norm_of_the_packed_positions(momentum):
    """Same outputs and running statistics as BatchNorm on the valid rows alone, with inf/NaN
    at the padded positions ignored."""
    from lib.masking import masked_batch_norm

    x, mask, _ = _regions(dim=8)
    x = x * 3 + 1
    x[~mask] = float("nan")
    packed, masked = (torch.nn.BatchNorm1d(8, momentum=momentum) for _ in range(2))
    for bn in (packed, masked):
        torch.nn.init.normal_(bn.weight)
        torch.nn.init.normal_(bn.bias)
    masked.load_state_dict(packed.state_dict())
    for _ in range(2):  # training: batch statistics and two running-stat updates
        out = masked_batch_norm(masked, x, mask)
        torch.testing.assert_close(out[mask], packed(x[mask]), atol=1e-5, rtol=1e-5)
        assert out[~mask].abs().sum() == 0
    for name, value in packed.state_dict().items():
        torch.testing.assert_close(masked.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    packed.eval(), masked.eval()
    torch.testing.assert_close(masked_batch_norm(masked, x, mask)[mask], packed(x[mask]))
