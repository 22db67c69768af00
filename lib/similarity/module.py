"""The similarity as a model part: the coding/pooling choice and the coding's parameters."""

from __future__ import annotations

import torch
from torch import nn

from .codings import Coding, coding_class
from .padded import DEFAULT_CHUNK_ELEMENTS, padded_scores
from .poolings import Pooling, pooling_class


class Similarity(nn.Module):
    """Holds the coding and pooling names, their temperatures, and the coding's learnable
    scalars as parameters (MixedCoding: ``mix_logit``), so they are optimised and checkpointed.

    Training calls it on a batch (the padded reference); evaluation asks it for the configured
    :meth:`coding` and :meth:`pooling` and scores packed tokens with them.
    """

    def __init__(self, coding: str = "VHACoding", pooling: str = "MeanPooling",
                 alpha: float = 0.1, belta: float = 0.1):
        super().__init__()
        coding_cls = coding_class(coding)
        pooling_class(pooling)  # unknown names fail here, not at the first batch
        self.coding_name, self.pooling_name, self.alpha, self.belta = coding, pooling, alpha, belta
        for key, init in coding_cls.learnable.items():
            self.register_parameter(key, nn.Parameter(torch.tensor(float(init))))

    def coding(self) -> Coding:
        """The coding, holding this module's current parameters (gradients flow to them)."""
        return coding_class(self.coding_name)(self.alpha, **dict(self.named_parameters()))

    def pooling(self) -> Pooling:
        return pooling_class(self.pooling_name)(self.belta)

    def forward(self, img_emb: torch.Tensor, img_lens: torch.Tensor, cap_emb: torch.Tensor,
                cap_lens: torch.Tensor, max_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
        """``(N_img, N_cap)`` scores of padded embeddings (see :func:`pairwise_sims`)."""
        return padded_scores(self.coding(), self.pooling(), img_emb, img_lens, cap_emb, cap_lens,
                             max_elements)

    def extra_repr(self) -> str:
        return f"coding={self.coding_name}, pooling={self.pooling_name}, alpha={self.alpha}, " \
               f"belta={self.belta}"
