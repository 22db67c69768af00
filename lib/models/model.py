"""The image-text matching model: two encoders and the CHAN similarity that scores them."""

from __future__ import annotations

from collections.abc import Mapping
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

    def float(self) -> Embeddings:
        """The same embeddings in float32 (e.g. to score bf16 encoder outputs exactly)."""
        return Embeddings(self.images.float(), self.img_lens, self.captions.float(),
                          self.cap_lens)


# A pytree node, so that DDP (and torch.compile) find the tensors of a forward's output.
torch.export.register_dataclass(Embeddings)


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
        """``(B, R, img_dim)`` regions or ``(B, 3, S, S)`` raw images -> embeddings
        ``(B, R', D)`` and their lengths ``(B,)``.

        A region encoder keeps the regions' lengths; a grid encoder returns ``(cells,
        lengths)``, as only it knows how many cells the feature map has and which it dropped.
        """
        emb = self.img_enc(images, lengths)
        if isinstance(emb, tuple):
            emb, lengths = emb
        return _pooled(emb, lengths, self.img_pool)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """``(B, L)`` ids -> embeddings ``(B, L', D)`` and their lengths ``(B,)``."""
        return _pooled(self.txt_enc(tokens, lengths), lengths, self.txt_pool)

    def forward(self, images, img_lens, captions, cap_lens) -> Embeddings:
        """Both sides of a batch: regions ``(B, R, img_dim)`` (or raw images) and token ids
        ``(B, L)``."""
        return Embeddings(*self.encode_images(images, img_lens),
                          *self.encode_captions(captions, cap_lens))

    def score(self, emb: Embeddings) -> torch.Tensor:
        """``(B_img, B_cap)`` scores of embedded images against embedded captions."""
        return self.sim(emb.images, emb.img_lens, emb.captions, emb.cap_lens)

    def param_groups(self, lr: float, lr_factors: Mapping[str, float],
                     weight_decay: float) -> list[dict]:
        """Optimizer groups: one at ``lr``, then one per learning-rate group in use.

        A module joins group ``name`` by carrying an attribute ``lr_group = name`` (the
        pretrained transformer of ``BertTextEncoder`` does); its parameters and its children's
        train at ``lr * lr_factors[name]`` (``lr_factor`` in the group, for the schedule). A
        group nested in another wins for its own parameters. Frozen parameters are included:
        a backbone frozen for its warm-up epochs trains in its group once it is unfrozen.
        """
        group_of = {}
        for module in self.modules():  # parents before children, so inner groups win
            name = getattr(module, "lr_group", None)
            if name is not None:
                group_of.update({id(param): name for param in module.parameters()})
        members: dict[str | None, list] = {None: []}
        for param in self.parameters():
            members.setdefault(group_of.get(id(param)), []).append(param)
        factors = {None: 1.0, **lr_factors}
        missing = set(members) - set(factors)
        if missing:
            raise ValueError(f"no learning-rate factor for group(s) {sorted(missing)}")
        return [{"params": params, "lr": lr * factors[name], "weight_decay": weight_decay,
                 "lr_factor": factors[name]} for name, params in members.items()]


def _pooled(emb, lengths, pool):
    if pool is None:
        return emb, lengths
    vec = l2norm(pool(emb, lengths)).unsqueeze(1)  # (B, 1, D)
    return vec, torch.ones_like(lengths)
