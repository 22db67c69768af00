"""Seed-form modules (APPM, SASE, mixed coding) and the CHAN/VSE∞ encoder options, checked
against references written out by hand on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from lib.masking import l2norm
from lib.models.context import SASE, SASE_VARIANTS, SeedSASE, SelfAttentionBlock
from lib.models.fusion import APPM, APPM_VARIANTS, SeedAPPM
from lib.models.image import PrecompImageEncoder
from lib.similarity import soft_region_coding
from lib.similarity.adaptive import SEED_MIX_INIT, adaptive_mixed_coding

LENGTHS = (10, 6, 3)


def _regions(dim=32, lengths=LENGTHS, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), n, dim, generator=g)  # (B, N, D)
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]  # (B, N)
    return x, mask


def _with_garbage_padding(x, mask, extra=4, value=9.0):
    """Append ``extra`` padded positions and overwrite every padded position with ``value``."""
    mask = F.pad(mask, (0, extra))
    x = F.pad(x, (0, 0, 0, extra)).masked_fill(~mask.unsqueeze(-1), value)
    return x, mask


def _perturb(module, seed=1, std=0.1):
    """Move every parameter (LayerNorm/BatchNorm affine too) and BatchNorm running stats off
    their initial values, so a reference that forgot one of them would not match."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm1d):
                bn.running_mean.copy_(0.2 * torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    return module


# ---------------------------------------------------------------------------------------------
# hand-written references (one sample, valid positions only, eval mode)

def _bn_eval(bn, y):
    """BatchNorm with running statistics, channels first ``(C, *S)``."""
    shape = (-1,) + (1,) * (y.dim() - 1)
    centred = y - bn.running_mean.view(shape)
    return centred / (bn.running_var.view(shape) + bn.eps).sqrt() * bn.weight.view(shape) \
        + bn.bias.view(shape)


def _conv1d_by_taps(weight, x, dilation):
    """Zero-padded 'same' 1-D convolution ``(C_out, C_in, k) x (C_in, n)``, tap by tap."""
    k, n = weight.shape[-1], x.shape[1]
    out = torch.zeros(weight.shape[0], n)
    for i in range(n):
        for j in range(k):
            src = i + (j - k // 2) * dilation
            if 0 <= src < n:
                out[:, i] += weight[:, :, j] @ x[:, src]
    return out


def _conv_1d(unit, x, dilation=1):
    return F.relu(_bn_eval(unit.bn, _conv1d_by_taps(unit.conv.weight, x, dilation)))


def _conv_2d(unit, x, dilation=1):
    pad = dilation * (unit.conv.weight.shape[-1] // 2)
    y = F.conv2d(x[None], unit.conv.weight, padding=pad, dilation=dilation)[0]
    return F.relu(_bn_eval(unit.bn, y))


def _pyramid_1d(x, bins):
    return F.adaptive_avg_pool1d(x[None], bins)[0]


def _upsample_1d(x, size):
    return F.interpolate(x[None], size=size, mode="linear", align_corners=False)[0]


def _pyramid_2d(x, bins):
    return F.adaptive_avg_pool2d(x[None], bins)[0]


def _upsample_2d(x, size):
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


OPS = {1: (_conv_1d, _pyramid_1d, _upsample_1d), 2: (_conv_2d, _pyramid_2d, _upsample_2d)}


def _seed_appm_reference(appm, x, rates, bins, spatial=None):
    """The seed's APPM on one sample ``x (n, D)`` (``spatial=(H, W)`` for a grid)."""
    conv, pyramid, upsample = OPS[1 if spatial is None else 2]
    size = spatial or (x.shape[0],)
    h = (x @ appm.down.weight.t() + appm.down.bias).t().reshape(-1, *size)  # (C, *S)
    aspp = appm.aspp
    outs = [conv(aspp.branches[0], h)]
    outs += [conv(branch, h, r) for branch, r in zip(aspp.branches[1:], rates, strict=True)]
    pooled = h.flatten(1).mean(1).view(-1, *([1] * len(size)))  # global average (C, 1, ..)
    outs.append(conv(aspp.pool_branch, pooled).expand_as(h))  # upsampling one cell: constant
    a = conv(aspp.project, torch.cat(outs)) + h  # dropout is off in eval mode
    ppm = appm.ppm
    outs = [a]
    for b, branch in zip(bins, ppm.branches, strict=True):
        outs.append(upsample(conv(branch, pyramid(a, b)), size))
    p = conv(ppm.project, torch.cat(outs)) + a  # (C, *S)
    return x + p.flatten(1).t() @ appm.up.weight.t() + appm.up.bias  # (n, D)


def _layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / (var + norm.eps).sqrt() * norm.weight + norm.bias


def _mha(attn, h):
    """Multi-head self-attention over the rows of ``h (n, D)`` written out head by head."""
    dim_head = h.shape[1] // attn.num_heads
    q, k, v = (h @ attn.in_proj_weight.t() + attn.in_proj_bias).chunk(3, dim=-1)
    heads = []
    for j in range(attn.num_heads):
        cols = slice(j * dim_head, (j + 1) * dim_head)
        weights = torch.softmax(q[:, cols] @ k[:, cols].t() / math.sqrt(dim_head), dim=-1)
        heads.append(weights @ v[:, cols])
    return torch.cat(heads, -1) @ attn.out_proj.weight.t() + attn.out_proj.bias


def _attention_block_reference(block, x):
    out = _mha(block.attn, _layer_norm(block.norm, x))
    return x + (out if block.scale is None else block.scale * out)


def _seed_sase_reference(sase, x):
    """``y = x + MHA(LN1(x))``; ``LN2(y) * sigmoid(W2 relu(W1 mean LN2(y))) + y``."""
    y = _attention_block_reference(sase.attention, x)
    h = _layer_norm(sase.excitation.norm, y)
    fc1, fc2 = sase.excitation.gate[0], sase.excitation.gate[2]
    gate = torch.sigmoid(fc2.weight @ torch.relu(fc1.weight @ h.mean(0)))
    return h * gate + y


# ---------------------------------------------------------------------------------------------
# APPM

def test_seed_appm_1d_equals_hand_reference_per_sample():
    rates, bins = (2, 4), (1, 2, 4)
    appm = _perturb(SeedAPPM(32, 16, rates, bins, branch_channels=8)).eval()
    x, mask = _regions()
    with torch.no_grad():
        out = appm(x, mask)
        for i, n in enumerate(LENGTHS):  # a padded sample equals the seed form on its prefix
            torch.testing.assert_close(out[i, :n], _seed_appm_reference(appm, x[i, :n], rates,
                                                                        bins))
            assert out[i, n:].abs().sum() == 0


def test_seed_appm_2d_grid_equals_hand_reference():
    rates, bins = (1, 2), (1, 2)
    appm = _perturb(SeedAPPM(32, 16, rates, bins, spatial_dims=2, branch_channels=8)).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        out = appm(x, torch.ones(2, 12, dtype=torch.bool), shape=(3, 4))
        for i in range(2):
            torch.testing.assert_close(out[i], _seed_appm_reference(appm, x[i], rates, bins,
                                                                    spatial=(3, 4)))


def test_seed_appm_eval_ignores_padding_and_other_samples():
    appm = _perturb(SeedAPPM(32, 16, (2, 4), (1, 2, 4))).eval()
    x, mask = _regions()
    with torch.no_grad():
        ref = appm(x, mask)
        xp, mp = _with_garbage_padding(x, mask)
        padded = appm(xp, mp)
        torch.testing.assert_close(padded[:, :10], ref, atol=1e-5, rtol=0)
        assert padded[~mp].abs().max() == 0
        dropped = mask.clone()
        dropped[1, 2:] = False  # sample 1 loses regions; samples 0 and 2 must not notice
        other = appm(x, dropped)
        torch.testing.assert_close(other[[0, 2]], ref[[0, 2]], atol=1e-5, rtol=0)


def test_seed_appm_training_batch_norm_sees_valid_positions_only():
    """Train mode: batch statistics come from valid positions, so padding changes no output,
    and the running mean/variance updates equal the masked statistics computed by hand."""
    torch.manual_seed(0)
    appm = SeedAPPM(32, 16, (2, 4), (1, 2, 4), aspp_dropout=0.0).train()
    x, mask = _regions()
    out = appm(x, mask)
    bn = appm.aspp.branches[0].bn  # the 1x1 branch: BatchNorm of conv(down(x))
    with torch.no_grad():
        rows = torch.cat([x[i, :n] for i, n in enumerate(LENGTHS)])  # (sum n, D) valid only
        conv = (rows @ appm.down.weight.t() + appm.down.bias) \
            @ appm.aspp.branches[0].conv.weight[:, :, 0].t()  # (sum n, C)
    m = bn.momentum
    torch.testing.assert_close(bn.running_mean, m * conv.mean(0))
    torch.testing.assert_close(bn.running_var, (1 - m) + m * conv.var(0, unbiased=True))
    xp, mp = _with_garbage_padding(x, mask)
    torch.testing.assert_close(appm(xp, mp)[:, :10], out, atol=1e-5, rtol=0)


def test_seed_appm_has_the_seed_layers_and_dropouts():
    appm = SeedAPPM(1024)  # the seed's widths: 1024 -> 128, rates (6, 18), bins (1, 2, 4) to 32
    shapes = sorted(tuple(p.shape) for p in appm.parameters())
    expected = ([(128, 1024), (128,), (1024, 128), (1024,)]  # down, up (with biases)
                + [(128, 128, 1)] * 2 + [(128, 128, 3)] * 2 + [(128, 512, 1)]  # ASPP convs
                + [(32, 128, 1)] * 3 + [(128, 224, 1)]  # PPM convs
                + [(128,)] * 2 * 6 + [(32,)] * 2 * 3)  # BatchNorm affine of every conv
    assert shapes == sorted(expected)
    assert [d.conv.dilation[0] for d in appm.aspp.branches] == [1, 6, 18]
    assert appm.aspp.dropout.p == 0.5 and appm.ppm.dropout.p == 0.0
    assert APPM_VARIANTS == {"ours": APPM, "seed": SeedAPPM}


# ---------------------------------------------------------------------------------------------
# self-attention block and SASE

@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_attention_block_without_dropout_equals_hand_reference(layer_scale):
    block = _perturb(SelfAttentionBlock(32, heads=4, dropout=0.0, layer_scale=layer_scale))
    block.train()  # no dropout: train mode is deterministic
    x, mask = _regions()
    out = block(x, mask)
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(out[i, :n], _attention_block_reference(block, x[i, :n]))
    assert ("scale" in dict(block.named_parameters())) == (layer_scale is not None)


def test_attention_block_defaults_are_unchanged():
    block = SelfAttentionBlock(32)
    assert block.attn.num_heads == 8 and block.attn.dropout == 0.1
    torch.testing.assert_close(block.scale.data, torch.full((32,), 0.1))


def test_seed_sase_equals_hand_reference_and_ignores_padding():
    sase = _perturb(SeedSASE(32, heads=4)).eval()
    assert sase.attention.scale is None and sase.attention.attn.dropout == 0.0
    assert sase.excitation.gate[0].bias is None and sase.excitation.gate[0].out_features == 4
    x, mask = _regions()
    with torch.no_grad():
        out = sase(x, mask)
        for i, n in enumerate(LENGTHS):  # mean over valid regions only
            torch.testing.assert_close(out[i, :n], _seed_sase_reference(sase, x[i, :n]))
        xp, mp = _with_garbage_padding(x, mask)
        torch.testing.assert_close(sase(xp, mp)[:, :10][mask], out[mask], atol=1e-5, rtol=0)


def test_sase_variants_keep_our_form_by_default():
    ours = SASE(32, heads=4)
    assert SASE_VARIANTS == {"ours": SASE, "seed": SeedSASE}
    assert ours.attention.scale is not None and ours.excitation.gate[0].out_features == 2


# ---------------------------------------------------------------------------------------------
# mixed coding

def _coding_inputs(seed=0, n_img=2, n_cap=3, regions=4, tokens=5, dim=8):
    g = torch.Generator().manual_seed(seed)
    img = l2norm(torch.randn(n_img, regions, dim, generator=g))  # (N_img, R, D)
    cap = l2norm(torch.randn(n_cap, tokens, dim, generator=g))  # (N_cap, L, D)
    region_mask = torch.arange(regions)[None] < torch.tensor([4, 2])[:, None]
    token_mask = torch.arange(tokens)[None] < torch.tensor([5, 3, 1])[:, None]
    sims = torch.einsum("ird,cld->icrl", img, cap)  # (N_img, N_cap, R, L)
    return img, cap, region_mask, token_mask, sims


def _mixed_coding_by_loops(img, cap, region_mask, token_mask, mix, temperature):
    weight = 1 / (1 + math.exp(-mix))
    values = torch.zeros(img.shape[0], cap.shape[0], img.shape[1])
    for i in range(img.shape[0]):
        for c in range(cap.shape[0]):
            tokens = cap[c][token_mask[c]]  # (L_c, D)
            for r in range(int(region_mask[i].sum())):
                v = img[i, r]
                s = torch.stack([v @ t for t in tokens])
                hard = torch.zeros(len(tokens))
                hard[int(s.argmax())] = 1.0
                soft = torch.exp(s / temperature) / torch.exp(s / temperature).sum()
                attended = ((weight * soft + (1 - weight) * hard)[:, None] * tokens).sum(0)
                values[i, c, r] = v @ attended / (attended.norm() + 1e-8)
    return values


@pytest.mark.parametrize("mix", [SEED_MIX_INIT, -1.3])
def test_adaptive_mixed_coding_equals_loop_reference(mix):
    img, cap, region_mask, token_mask, sims = _coding_inputs()
    out = adaptive_mixed_coding(sims, region_mask, token_mask, cap, mix, temperature=0.1)
    ref = _mixed_coding_by_loops(img, cap, region_mask, token_mask, mix, 0.1)
    torch.testing.assert_close(out, ref)
    assert out.shape == (2, 3, 4) and out[1, :, 2:].abs().max() == 0  # padded regions: 0


def test_adaptive_mixed_coding_ignores_garbage_at_padding():
    _, cap, region_mask, token_mask, sims = _coding_inputs()
    ref = adaptive_mixed_coding(sims, region_mask, token_mask, cap, SEED_MIX_INIT)
    nan = float("nan")
    bad_sims = sims.masked_fill(~token_mask[None, :, None, :], float("inf"))  # wins any argmax
    bad_sims = bad_sims.masked_fill(~region_mask[:, None, :, None], nan)
    bad_cap = cap.masked_fill(~token_mask[..., None], nan)
    out = adaptive_mixed_coding(bad_sims, region_mask, token_mask, bad_cap, SEED_MIX_INIT)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_adaptive_mixed_coding_limits_are_vsa_and_tha():
    """Weight 1 on the soft map gives VSA; weight 0 gives the best token's cosine (THA)."""
    _, cap, region_mask, token_mask, sims = _coding_inputs()
    valid = region_mask[:, None, :].expand(-1, 3, -1)  # (N_img, N_cap, R)
    soft = adaptive_mixed_coding(sims, region_mask, token_mask, cap, 60.0)
    vsa = soft_region_coding(sims, token_mask, cap, 0.1)
    torch.testing.assert_close(soft[valid], vsa[valid])
    hard = adaptive_mixed_coding(sims, region_mask, token_mask, cap, -60.0)
    tha = sims.masked_fill(~token_mask[None, :, None, :], -2).amax(-1)
    torch.testing.assert_close(hard[valid], tha[valid])


def test_adaptive_mixed_coding_trains_its_weight_and_the_embeddings():
    img, cap, region_mask, token_mask, _ = _coding_inputs()
    img.requires_grad_(True)
    cap.requires_grad_(True)
    mix = torch.tensor(SEED_MIX_INIT, requires_grad=True)
    sims = torch.einsum("ird,cld->icrl", img, cap)
    adaptive_mixed_coding(sims, region_mask, token_mask, cap, mix).sum().backward()
    assert mix.grad.abs() > 0 and img.grad.abs().sum() > 0 and cap.grad.abs().sum() > 0
    assert cap.grad[~token_mask].abs().max() == 0  # padded tokens receive nothing
    torch.testing.assert_close(torch.sigmoid(torch.tensor(SEED_MIX_INIT)),
                               torch.tensor(0.6225), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# image encoder options

def test_fc_only_basic_encoder_has_exactly_the_fc_parameters():
    enc = PrecompImageEncoder(24, 32, "basic", mlp=False).eval()
    assert sorted(n for n, _ in enc.named_parameters()) == ["fc.bias", "fc.weight"]
    x, mask = _regions(dim=24)
    lengths = mask.sum(1)
    with torch.no_grad():
        expected = l2norm(x @ enc.fc.weight.t() + enc.fc.bias) * mask[..., None]
        torch.testing.assert_close(enc(x, lengths), expected)


def test_encoder_defaults():
    assert PrecompImageEncoder(24, 32, "basic").mlp is None  # CHAN: one FC layer
    assert PrecompImageEncoder(24, 32, "basic_mlp").mlp is not None  # VSE∞'s basic
    assert PrecompImageEncoder(24, 32, "selfattention").mlp is None
    assert PrecompImageEncoder(24, 32, "selfattention", mlp=True).mlp is not None
    sase = PrecompImageEncoder(24, 32, "sase").context
    assert type(sase) is SASE and sase.attention.attn.dropout == 0.1
    torch.testing.assert_close(sase.attention.scale.data, torch.full((32,), 0.1))
    with pytest.raises(ValueError, match="SASE variant"):
        PrecompImageEncoder(24, 32, "sase", sase_variant="other")


def test_chan_selfattention_encoder_has_no_dropout_or_layer_scale():
    enc = PrecompImageEncoder(24, 32, "selfattention", mlp=False, attn_dropout=0.0,
                              layer_scale=None)
    assert enc.context.attn.dropout == 0.0 and enc.context.scale is None


def test_encoder_with_seed_forms_ignores_padding():
    torch.manual_seed(0)
    enc = PrecompImageEncoder(24, 32, "sase", mlp=False, fusion=SeedAPPM(32, 16, (2,)),
                              sase_variant="seed", attn_dropout=0.0, layer_scale=None)
    assert type(enc.context) is SeedSASE
    enc = _perturb(enc).eval()
    x, mask = _regions(dim=24)
    lengths = mask.sum(1)
    with torch.no_grad():
        ref = enc(x, lengths)
        xp, _ = _with_garbage_padding(x, mask)
        torch.testing.assert_close(enc(xp, lengths)[:, :10], ref, atol=1e-5, rtol=0)
    norms = ref.norm(dim=-1)
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())))
    assert norms[~mask].abs().max() == 0
