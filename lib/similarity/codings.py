"""Codings: the region x token cosines of an image-caption pair -> the values a pooling scores.

Each coding is a :class:`Coding` subclass registered by name with :func:`register_coding`, and
owns both ways of scoring it:

* :meth:`Coding.padded_scores`, the reference, on padded ``(n_img, R, D)`` regions and
  ``(n_cap, L, D)`` tokens; training and :func:`lib.similarity.pairwise_sims` use it. A coding
  of the cosine matrix implements :meth:`Coding.code` and inherits it.
* optionally ``packed_scores``, a fast kernel over *packed* tokens ``(T, D)`` that evaluation
  prefers (``lib/evaluation/scoring.py`` only sizes the blocks). Without one, evaluation scores
  the padded reference on blocks of captions of similar length.

Both must give the same scores (``tests/test_scoring.py`` checks every registered pair).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..masking import l2norm, length_mask, masked_mean
from ..precision import float32_products
from .adaptive import SEED_MIX_INIT, adaptive_mixed_coding
from .poolings import Pooling

CODINGS: dict[str, type[Coding]] = {}  # name -> class, in registration order


def register_coding(cls: type[Coding]) -> type[Coding]:
    """Class decorator: make ``cls`` selectable by ``cls.name`` (``--coding_type``,
    :func:`lib.similarity.pairwise_sims`, :class:`lib.similarity.Similarity`)."""
    if not cls.name or cls.name in CODINGS:
        raise ValueError(f"a coding needs a name not taken yet, got {cls.name!r}")
    CODINGS[cls.name] = cls
    return cls


def coding_class(name: str) -> type[Coding]:
    if name not in CODINGS:
        raise ValueError(f"unknown coding {name!r}; choose from {', '.join(CODINGS)}")
    return CODINGS[name]


class Coding:
    """One coding, configured by ``alpha`` (the temperature of codings that attend softly) and
    the values of its learnable scalars.

    ``learnable`` names those scalars with their initial values: :class:`Similarity` owns them as
    parameters (so they are optimised and checkpointed) and passes their current values in.
    Values given for other codings' scalars are ignored, so one call fits every coding.
    """

    name: ClassVar[str] = ""
    learnable: ClassVar[dict[str, float]] = {}
    # True: the model pools each side into one vector before scoring (VSE∞'s global embedding)
    pooled_inputs: ClassVar[bool] = False
    # optional fast kernel, see the module docstring; a subclass defines it as a method
    packed_scores = None

    def __init__(self, alpha: float = 0.1, **learned: torch.Tensor | float):
        self.alpha = alpha
        self.learned = {key: learned.get(key, init) for key, init in self.learnable.items()}

    def padded_scores(self, img_emb: torch.Tensor, region_mask: torch.Tensor,
                      cap_emb: torch.Tensor, token_mask: torch.Tensor,
                      pooling: Pooling) -> torch.Tensor:
        """``(n_img, R, D)`` regions and ``(n_cap, L, D)`` tokens with their ``(n_img, R)`` and
        ``(n_cap, L)`` masks -> ``(n_img, n_cap)`` scores, through :meth:`code`."""
        n_img, n_reg, dim = img_emb.shape
        n_cap, n_tok = cap_emb.shape[:2]
        sims = img_emb.reshape(-1, dim) @ cap_emb.reshape(-1, dim).t()  # (n_img*R, n_cap*L)
        sims = sims.view(n_img, n_reg, n_cap, n_tok).transpose(1, 2)  # (n_img, n_cap, R, L)
        return pooling(*self.code(sims, region_mask, token_mask, cap_emb))

    def code(self, sims: torch.Tensor, region_mask: torch.Tensor, token_mask: torch.Tensor,
             cap_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_img, n_cap, R, L)`` cosines -> values ``(n_img, n_cap, K)`` and their validity
        mask (broadcastable to the values); K = L for token codings, R for region codings."""
        raise NotImplementedError(f"{self.name} defines neither code() nor padded_scores()")


def unpack_tokens(values: torch.Tensor, cap_lens: torch.Tensor):
    """Per-token values of packed captions ``(n_img, T)`` -> ``(n_img, n_cap, L)`` padded with
    zeros, and the ``(1, n_cap, L)`` validity mask a pooling takes."""
    token_mask = length_mask(cap_lens)  # (n_cap, L)
    out = values.new_zeros(len(values), *token_mask.shape)
    out[:, token_mask] = values
    return out, token_mask[None]


def best_token(sims: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """For each region, its best cosine over valid tokens: ``(n_img, n_cap, R)``."""
    masked = sims.masked_fill(~token_mask[None, :, None, :], torch.finfo(sims.dtype).min)
    return masked.max(dim=3).values


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


@register_coding
class VHACoding(Coding):
    """For each token, its best region ``max_r s_rl`` (CHAN's published setting)."""

    name = "VHACoding"

    def code(self, sims, region_mask, token_mask, cap_emb):
        masked = sims.masked_fill(~region_mask[:, None, :, None], torch.finfo(sims.dtype).min)
        return masked.max(dim=2).values, token_mask[None]  # (n_img, n_cap, L)

    def packed_scores(self, images: torch.Tensor, region_mask: torch.Tensor,
                      tokens: torch.Tensor, cap_lens: torch.Tensor,
                      pooling: Pooling) -> torch.Tensor:
        """One product of the regions against the packed tokens of a caption range, a max over
        regions, then the pooling: the FLOPs are those of the plain product.

        ``images (n_img, R, D)``, ``region_mask (n_img, R)``, ``tokens (T, D)`` of the captions
        whose lengths are ``cap_lens (n_cap,)`` -> ``(n_img, n_cap)`` float32 scores.
        """
        n_img, n_reg, dim = images.shape
        rows = images.reshape(-1, dim)  # (n_img*R, D)
        sims = float32_products(rows, tokens.t()).view(n_img, n_reg, -1)  # (n_img, R, T)
        if not bool(region_mask.all()):
            sims = sims.masked_fill(~region_mask[:, :, None], torch.finfo(sims.dtype).min)
        best = sims.amax(dim=1)  # (n_img, T): best region per token
        return pooling(*unpack_tokens(best, cap_lens))


@register_coding
class THACoding(Coding):
    """For each region, its best token ``max_l s_rl``."""

    name = "THACoding"

    def code(self, sims, region_mask, token_mask, cap_emb):
        return best_token(sims, token_mask), region_mask[:, None]  # (n_img, n_cap, R)


@register_coding
class VSACoding(Coding):
    """For each region, the cosine with its attended text vector, ``a_r = softmax(s_r / alpha)``."""

    name = "VSACoding"

    def code(self, sims, region_mask, token_mask, cap_emb):
        return soft_region_coding(sims, token_mask, cap_emb, self.alpha), region_mask[:, None]


@register_coding
class MixedCoding(Coding):
    """Ours: a learned mix of the two region scores, ``w * THA + (1 - w) * VSA`` with
    ``w = sigmoid(mix_logit)``. The seed mixes attention maps instead (AdaptiveMixedCoding)."""

    name = "MixedCoding"
    learnable = {"mix_logit": 0.0}

    def code(self, sims, region_mask, token_mask, cap_emb):
        hard = best_token(sims, token_mask)  # (n_img, n_cap, R)
        soft = soft_region_coding(sims, token_mask, cap_emb, self.alpha)
        logit = torch.as_tensor(self.learned["mix_logit"], dtype=sims.dtype, device=sims.device)
        weight = torch.sigmoid(logit)
        return weight * hard + (1 - weight) * soft, region_mask[:, None]


@register_coding
class AdaptiveMixedCoding(Coding):
    """The seed's ``AdaptiveMixedCoding``: per region, a mix of the hard (one-hot on the best
    token) and soft (``softmax(s / alpha)``) attention maps with weight ``sigmoid(mix_param)`` on
    the soft one, then the cosine with the attended text vector (see ``adaptive.py``)."""

    name = "AdaptiveMixedCoding"
    learnable = {"mix_param": SEED_MIX_INIT}

    def code(self, sims, region_mask, token_mask, cap_emb):
        values = adaptive_mixed_coding(sims, region_mask, token_mask, cap_emb,
                                       self.learned["mix_param"], self.alpha)
        return values, region_mask[:, None]  # (n_img, n_cap, R)


@register_coding
class GlobalCoding(Coding):
    """Cosine of the mean region and mean token vectors, both re-normalised; no pooling.

    The model pools each side into one unit vector first (GPO or mean, VSE∞), so the means here
    are over that single vector.
    """

    name = "global"
    pooled_inputs = True

    def padded_scores(self, img_emb, region_mask, cap_emb, token_mask, pooling):
        img_vec = masked_mean(img_emb, region_mask)  # (n_img, D)
        cap_vec = masked_mean(cap_emb, token_mask)  # (n_cap, D)
        return l2norm(img_vec) @ l2norm(cap_vec).t()

    def packed_scores(self, images, region_mask, tokens, cap_lens, pooling):
        """Means taken straight from the packed tokens (float32 whatever the storage)."""
        segment = torch.repeat_interleave(torch.arange(len(cap_lens), device=tokens.device),
                                          cap_lens)  # (T,) caption of each token
        cap_sum = tokens.new_zeros(len(cap_lens), tokens.shape[-1], dtype=torch.float32)
        cap_sum.index_add_(0, segment, tokens.float())
        img_vec = masked_mean(images.float(), region_mask)  # (n_img, D)
        return l2norm(img_vec) @ l2norm(cap_sum / cap_lens[:, None]).t()
