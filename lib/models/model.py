"""The image-text matching model: two encoders and the CHAN similarity that scores them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..masking import l2norm
from ..similarity import Similarity


@dataclass
class Embeddings:
    """What the model computes for a batch: both sides embedded, with their valid lengths.

    Padded positions hold zeros. With global pooling (VSE∞) each side is one vector, length 1.
    """

    images: torch.Tensor  # (B, R', D) region embeddings
    img_lens: torch.Tensor  # (B,) valid regions
    captions: torch.Tensor  # (B, L', D) token embeddings
    cap_lens: torch.Tensor  # (B,) valid tokens


class ImageTextModel(nn.Module):
    """``img_enc``: regions -> (B, R, D); ``txt_enc``: tokens -> (B, L, D); ``sim``: scores.

    ``forward`` only encodes; whoever needs scores applies ``sim`` to the embeddings it has
    (the training step to a batch, evaluation to a whole split), so a loss is not limited to the
    negatives of one forward call. ``sim`` is a submodule so that its learnable parameters are
    optimised and checkpointed with the encoders.

    With global pooling modules (the VSE∞-style baseline) each side is pooled to a single
    unit vector ``(B, 1, D)`` of length 1, so every coding reduces to their cosine.
    """

    def __init__(self, img_enc: nn.Module, txt_enc: nn.Module, sim: Similarity,
                 img_pool: nn.Module | None = None, txt_pool: nn.Module | None = None):
        super().__init__()
        self.img_enc, self.txt_enc, self.sim = img_enc, txt_enc, sim
        self.img_pool, self.txt_pool = img_pool, txt_pool

    def encode_images(self, images: torch.Tensor, lengths: torch.Tensor):
        """``(B, R, img_dim)`` -> embeddings ``(B, R', D)`` and their lengths ``(B,)``."""
        return _pooled(self.img_enc(images, lengths), lengths, self.img_pool)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """``(B, L)`` ids -> embeddings ``(B, L', D)`` and their lengths ``(B,)``."""
        return _pooled(self.txt_enc(tokens, lengths), lengths, self.txt_pool)

    def forward(self, images, img_lens, captions, cap_lens) -> Embeddings:
        """Both sides of a batch: regions ``(B, R, img_dim)`` and token ids ``(B, L)``."""
        return Embeddings(*self.encode_images(images, img_lens),
                          *self.encode_captions(captions, cap_lens))

    def score(self, emb: Embeddings) -> torch.Tensor:
        """``(B_img, B_cap)`` scores of embedded images against embedded captions."""
        return self.sim(emb.images, emb.img_lens, emb.captions, emb.cap_lens)

    def param_groups(self, lr: float, bert_lr_factor: float, weight_decay: float) -> list[dict]:
        """Pretrained text-transformer weights train at ``lr * bert_lr_factor``."""
        bert, rest = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (bert if name.startswith("txt_enc.bert.") else rest).append(param)
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "lr_factor": 1.0}]
        if bert:
            groups.append({"params": bert, "lr": lr * bert_lr_factor,
                           "weight_decay": weight_decay, "lr_factor": bert_lr_factor})
        return groups


def _pooled(emb, lengths, pool):
    if pool is None:
        return emb, lengths
    vec = l2norm(pool(emb, lengths)).unsqueeze(1)  # (B, 1, D)
    return vec, torch.ones_like(lengths)
