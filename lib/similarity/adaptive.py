"""The seed's mixed coding (``AdaptiveMixedCoding`` in CHAN-ASDG's ``lib/coding.py``), the
kernel of the coding of that name in ``codings.py``.

For a region ``v`` with cosines ``s_l = <v, t_l>`` to the valid tokens ``t_l`` of a caption:

    hard   one-hot on ``argmax_l s_l``                        (THA's choice, as a map)
    soft   ``softmax_l(s_l / temperature)``                   (VSA's map)
    mixed  ``w * soft + (1 - w) * hard``, ``w = sigmoid(a)``  (``a`` learned, 0.5 at start)
    value  ``<v, u> / (|u| + 1e-8)`` with ``u = sum_l mixed_l t_l``

One value per region; the pooling follows. The seed takes ``temperature`` from ``--alpha``
(0.1 in its scripts) and initialises ``a`` at 0.5, so ``w ≈ 0.62`` on the soft map at start.

Differences from the seed, all about padding: padded tokens get no weight in either map (the
seed fills them with the cosine sentinel -1 before the argmax, which a valid cosine of exactly -1
ties), padded regions come out 0 instead of the seed's -1 sentinel (the caller pools over
``region_mask``), and garbage at padded positions never reaches a valid value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SEED_MIX_INIT = 0.5  # the seed's initial mixing parameter ``a`` (weight sigmoid(a) on soft)
EPS = 1e-8  # added to the attended vector's norm, as in the seed


def adaptive_mixed_coding(sims: torch.Tensor, region_mask: torch.Tensor,
                          token_mask: torch.Tensor, cap_emb: torch.Tensor,
                          mix_param: torch.Tensor | float,
                          temperature: float = 0.1) -> torch.Tensor:
    """Seed-form mixed coding of a cosine block.

    Args:
        sims: ``(N_img, N_cap, R, L)`` region x token cosines ``<v_r, t_l>``.
        region_mask: ``(N_img, R)`` True at valid regions.
        token_mask: ``(N_cap, L)`` True at valid tokens.
        cap_emb: ``(N_cap, L, D)`` the (unit-norm) token embeddings the cosines came from.
        mix_param: the learned scalar ``a``; the soft map gets weight ``sigmoid(a)``.
        temperature: softmax temperature of the soft map.

    Returns:
        ``(N_img, N_cap, R)`` values, 0 at padded regions. The attended vector ``u`` is never
        materialised: ``<v, u> = sum_l m_l s_l`` and ``|u|^2 = m^T G m`` with the caption's token
        Gram matrix ``G``, so memory stays at the size of ``sims``.
    """
    token_valid = token_mask[None, :, None, :]  # (1, N_cap, 1, L)
    sims = sims.masked_fill(~token_valid, 0)  # garbage at padded tokens never enters
    masked = sims.masked_fill(~token_valid, float("-inf"))  # (N_img, N_cap, R, L)
    hard = F.one_hot(masked.argmax(-1), sims.shape[-1]).to(sims.dtype)  # one-hot on best token
    soft = torch.softmax(masked / temperature, dim=-1)
    weight = torch.sigmoid(torch.as_tensor(mix_param, dtype=sims.dtype, device=sims.device))
    attn = weight * soft + (1 - weight) * hard  # (N_img, N_cap, R, L)
    numerator = (attn * sims).sum(-1)  # (N_img, N_cap, R)
    tokens = cap_emb.masked_fill(~token_mask.unsqueeze(-1), 0)  # (N_cap, L, D)
    gram = tokens @ tokens.transpose(1, 2)  # (N_cap, L, L)
    sq_norm = (torch.matmul(attn, gram.unsqueeze(0)) * attn).sum(-1)  # (N_img, N_cap, R)
    values = numerator / (sq_norm.clamp_min(0).sqrt() + EPS)
    return values.masked_fill(~region_mask[:, None, :], 0)
