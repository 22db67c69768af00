"""CHAN fine-grained similarity: code the region x token cosine matrix, then pool it.

For an image with regions ``v_1..v_R`` and a caption with tokens ``t_1..t_L`` (all unit-norm),
``s_rl = <v_r, t_l>``. A *coding* turns the ``R x L`` matrix into one value per token or per
region, a *pooling* turns those values into the image-caption score:

==============  ==========================================================  =============
coding          value                                                       indexed by
==============  ==========================================================  =============
VHACoding       ``max_r s_rl`` (best region for each token)                 tokens
THACoding       ``max_l s_rl`` (best token for each region)                 regions
VSACoding       ``cos(v_r, sum_l a_rl t_l)``, ``a_r = softmax(s_r / alpha)``  regions
MixedCoding     ``w * THA + (1 - w) * VSA``, ``w = sigmoid(mix_logit)``      regions
global          cosine of the mean region and mean token vectors            --
==============  ==========================================================  =============

Poolings over the valid entries: Mean, Max, Sum, LSE (``logsumexp(x / belta)``) and Softmax
(``sum softmax(x / belta) * x``). Padded regions/tokens never reach a score.
"""

from __future__ import annotations

import torch

from .masking import l2norm, length_mask, masked_mean

CODINGS = ("VHACoding", "THACoding", "VSACoding", "MixedCoding", "global")
POOLINGS = ("MeanPooling", "MaxPooling", "SumPooling", "LSEPooling", "SoftmaxPooling")
TOKEN_CODINGS = ("VHACoding",)
DEFAULT_CHUNK_ELEMENTS = 2**25  # bounds the (images, captions, R, L) block held at once


def pairwise_sims(img_emb: torch.Tensor, img_lens: torch.Tensor, cap_emb: torch.Tensor,
                  cap_lens: torch.Tensor, coding: str = "VHACoding",
                  pooling: str = "MeanPooling", alpha: float = 0.1, belta: float = 0.1,
                  mix_logit: torch.Tensor | float = 0.0,
                  max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Score every image against every caption.

    Args:
        img_emb: ``(N_img, R, D)`` region embeddings, padded; img_lens: ``(N_img,)`` valid counts.
        cap_emb: ``(N_cap, L, D)`` token embeddings, padded; cap_lens: ``(N_cap,)`` valid counts.
        coding, pooling: see the module docstring. alpha: VSA softmax temperature;
        belta: LSE/Softmax pooling temperature; mix_logit: MixedCoding weight (logit).
        max_elements: the caption dimension is processed in chunks so that one
            ``(N_img, chunk, R, L)`` block holds at most this many elements.

    Returns:
        ``(N_img, N_cap)`` scores. Differentiable (training uses it on a batch).
    """
    _check(coding, pooling, img_emb, cap_emb)
    img_lens, cap_lens = img_lens.to(img_emb.device), cap_lens.to(cap_emb.device)
    if coding == "global":
        return global_sims(img_emb, img_lens, cap_emb, cap_lens)
    n_img, n_reg = img_emb.shape[:2]
    per_caption = max(1, n_img * n_reg * cap_emb.shape[1])
    step = max(1, max_elements // per_caption)
    blocks = []
    for start in range(0, cap_emb.shape[0], step):
        lens = cap_lens[start:start + step]
        caps = cap_emb[start:start + step, : int(lens.max())]  # trim padding shared by the chunk
        blocks.append(_block_sims(img_emb, img_lens, caps, lens, coding, pooling, alpha, belta,
                                  mix_logit))
    return torch.cat(blocks, dim=1)


def _check(coding, pooling, img_emb, cap_emb):
    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; choose from {', '.join(CODINGS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    if img_emb.dim() != 3 or cap_emb.dim() != 3 or img_emb.shape[-1] != cap_emb.shape[-1]:
        raise ValueError(f"expected (N_img, R, D) and (N_cap, L, D) embeddings, got "
                         f"{tuple(img_emb.shape)} and {tuple(cap_emb.shape)}")


def global_sims(img_emb, img_lens, cap_emb, cap_lens) -> torch.Tensor:
    """Cosine of mean-pooled (then L2-normalised) region and token vectors: ``(N_img, N_cap)``."""
    img_vec = masked_mean(img_emb, length_mask(img_lens, img_emb.shape[1]))  # (N_img, D)
    cap_vec = masked_mean(cap_emb, length_mask(cap_lens, cap_emb.shape[1]))  # (N_cap, D)
    return l2norm(img_vec) @ l2norm(cap_vec).t()


def _block_sims(img_emb, img_lens, cap_emb, cap_lens, coding, pooling, alpha, belta, mix_logit):
    n_img, n_reg, dim = img_emb.shape
    n_cap, n_tok = cap_emb.shape[:2]
    region_mask = length_mask(img_lens, n_reg)  # (N_img, R)
    token_mask = length_mask(cap_lens, n_tok)  # (N_cap, L)
    sims = (img_emb.reshape(-1, dim) @ cap_emb.reshape(-1, dim).t())  # (N_img*R, N_cap*L)
    sims = sims.view(n_img, n_reg, n_cap, n_tok).transpose(1, 2)  # (N_img, N_cap, R, L)
    values, valid = apply_coding(sims, region_mask, token_mask, cap_emb, coding, alpha, mix_logit)
    return apply_pooling(values, valid, pooling, belta)


def apply_coding(sims, region_mask, token_mask, cap_emb, coding, alpha=0.1, mix_logit=0.0):
    """Coding step: ``(N_img, N_cap, R, L)`` cosines -> values ``(N_img, N_cap, K)`` and their
    validity mask (broadcastable to the values), K = L for token codings, R for region codings."""
    neg_inf = torch.finfo(sims.dtype).min
    region_valid = region_mask[:, None, :]  # (N_img, 1, R)
    token_valid = token_mask[None, :, :]  # (1, N_cap, L)
    if coding == "VHACoding":
        masked = sims.masked_fill(~region_mask[:, None, :, None], neg_inf)
        return masked.max(dim=2).values, token_valid  # (N_img, N_cap, L)
    hard = sims.masked_fill(~token_mask[None, :, None, :], neg_inf).max(dim=3).values
    if coding == "THACoding":
        return hard, region_valid  # (N_img, N_cap, R)
    soft = soft_region_coding(sims, token_mask, cap_emb, alpha)
    if coding == "VSACoding":
        return soft, region_valid
    weight = torch.sigmoid(torch.as_tensor(mix_logit, dtype=sims.dtype, device=sims.device))
    return weight * hard + (1 - weight) * soft, region_valid


def soft_region_coding(sims, token_mask, cap_emb, alpha):
    """VSA: cosine between each region and its attended text vector, without materialising it.

    With attention ``a`` over tokens, ``<v, sum_l a_l t_l> = sum_l a_l s_l`` and
    ``|sum_l a_l t_l|^2 = a^T G a`` where ``G`` is the caption's token Gram matrix, so memory stays
    at ``(N_img, N_cap, R, L)`` instead of ``(..., R, D)``.
    """
    logits = (sims / alpha).masked_fill(~token_mask[None, :, None, :], float("-inf"))
    attn = torch.softmax(logits, dim=-1)  # (N_img, N_cap, R, L)
    numerator = (attn * sims).sum(-1)  # (N_img, N_cap, R)
    gram = cap_emb @ cap_emb.transpose(1, 2)  # (N_cap, L, L)
    sq_norm = (torch.matmul(attn, gram.unsqueeze(0)) * attn).sum(-1)  # (N_img, N_cap, R)
    return numerator / (sq_norm.clamp_min(0).sqrt() + 1e-8)


def apply_pooling(values, valid, pooling, belta=0.1):
    """Pooling step: ``(N_img, N_cap, K)`` values with a validity mask -> ``(N_img, N_cap)``."""
    valid = valid.expand_as(values)
    if pooling in ("MeanPooling", "SumPooling"):
        total = values.masked_fill(~valid, 0).sum(-1)
        return total / valid.sum(-1).clamp_min(1) if pooling == "MeanPooling" else total
    masked = values.masked_fill(~valid, float("-inf"))
    if pooling == "MaxPooling":
        return masked.amax(-1)
    if pooling == "LSEPooling":
        return torch.logsumexp(masked / belta, dim=-1)
    weights = torch.softmax(masked / belta, dim=-1)  # SoftmaxPooling
    return (weights * values.masked_fill(~valid, 0)).sum(-1)
