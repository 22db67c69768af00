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
AdaptiveMixed   seed: VSA-style value of a mixed hard/soft attention map       regions
global          cosine of the mean region and mean token vectors            --
==============  ==========================================================  =============

Poolings over the valid entries: Mean, Max, Sum, LSE (``logsumexp(x / belta)``) and Softmax
(``sum softmax(x / belta) * x``). Padded regions/tokens never reach a score.

Layout: ``codings.py`` (each coding: its padded reference and, optionally, a fast kernel over
packed tokens), ``poolings.py``, ``padded.py`` (:func:`pairwise_sims`, the public scoring
function), ``module.py`` (:class:`Similarity`, the ``nn.Module`` a model holds). A new coding or
pooling is one class in its file, registered by name with :func:`register_coding` or
:func:`register_pooling`; the flags, the model and evaluation find it there.
"""

from .codings import (
    CODINGS,
    Coding,
    coding_class,
    register_coding,
    soft_region_coding,
    unpack_tokens,
)
from .module import Similarity
from .padded import DEFAULT_CHUNK_ELEMENTS, padded_scores, pairwise_sims
from .poolings import POOLINGS, Pooling, pooling_class, register_pooling

__all__ = [
    "CODINGS", "POOLINGS", "DEFAULT_CHUNK_ELEMENTS", "Coding", "Pooling", "Similarity",
    "coding_class", "pooling_class", "pairwise_sims", "padded_scores", "register_coding",
    "register_pooling",
    "soft_region_coding", "unpack_tokens",
]
