"""Global pooling for the VSE∞-style baseline: mean, or GPO (generalised pooling operator).

GPO (Chen et al., VSE∞, CVPR 2021) sorts each feature dimension over the set, and takes a
weighted sum of the k-th largest values with weights generated from the positions' sinusoidal
encodings by a small BiGRU, so the pooling can learn anything between mean and max.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..masking import length_mask, masked_mean


def positional_encoding(length: int, dim: int, device=None) -> torch.Tensor:
    """Sinusoidal encodings ``(length, dim)`` of positions 0..length-1."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class GPO(nn.Module):
    def __init__(self, pe_dim: int = 32, hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.pe_dim, self.temperature = pe_dim, temperature
        self.gru = nn.GRU(pe_dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, size: int) -> torch.Tensor:
        """Pooling weights ``(B, size)`` over sorted positions; zero beyond each length."""
        pe = positional_encoding(size, self.pe_dim, lengths.device)
        pe = pe.unsqueeze(0).expand(len(lengths), -1, -1)
        packed = pack_padded_sequence(pe, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=size)
        half = out.shape[-1] // 2
        scores = self.score((out[..., :half] + out[..., half:]) / 2).squeeze(-1)  # (B, size)
        scores = scores.masked_fill(~length_mask(lengths, size), float("-inf"))
        return torch.softmax(scores / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, D)``."""
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1)
        ranked = x.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
        ranked = ranked.masked_fill(~mask, 0)  # padded slots sort last; zero them
        w = self.weights(lengths, x.shape[1]).to(x.dtype)
        return (ranked * w.unsqueeze(-1)).sum(1)


class MeanPool(nn.Module):
    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, length_mask(lengths, x.shape[1]))
