"""Text encoders: token ids ``(B, L)`` + lengths -> unit-norm token embeddings ``(B, L, D)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import DataError
from ..masking import l2norm, length_mask
from ..pretrained import HINT, resolve_pretrained

# learning-rate group of pretrained transformer weights (``--bert_lr_factor``)
PRETRAINED_GROUP = "pretrained"


class GRUTextEncoder(nn.Module):
    """Word embedding + bidirectional GRU; a token is the mean of its two directions."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 no_txtnorm: bool = False, graph: nn.Module | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=True)
        self.graph = graph
        self.normalize = not no_txtnorm

    def load_word_vectors(self, path: str | Path, word_index: Mapping[str, int]) -> int:
        """Initialise the rows of ``word_index``'s words (word -> row) from a GloVe text file;
        returns how many were found."""
        path = Path(path or "")
        if not path.is_file():
            raise DataError(f"--wemb_type glove needs --wemb_path: a GloVe text file "
                            f"('word v1 ... vN' per line); not found: {path}")
        width = self.embed.embedding_dim
        found = 0
        with torch.no_grad(), path.open(encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                word, *values = line.rstrip().split(" ")
                if len(values) != width:
                    raise DataError(f"{path}:{line_no}: expected {width} values "
                                    f"(--word_dim {width}), found {len(values)}")
                index = word_index.get(word)
                if index is not None:
                    self.embed.weight[index] = _vector(values, path, line_no)
                    found += 1
        return found

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        words = self.embed(tokens)  # (B, L, word_dim)
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        half = out.shape[-1] // 2
        x = (out[..., :half] + out[..., half:]) / 2  # (B, L, D)
        return _finish(x, lengths, self.graph, self.normalize)


def _vector(values: list[str], path: Path, line_no: int) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in values])
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise DataError(f"{path}:{line_no}: expected numbers after the word, found {bad!r}; "
                        f"is this a GloVe text file?") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class BertTextEncoder(nn.Module):
    """A BERT-family model (BERT, DistilBERT, MiniLM, ...) + linear projection to D."""

    def __init__(self, bert_path: str, embed_size: int, no_txtnorm: bool = False,
                 graph: nn.Module | None = None, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        source = resolve_pretrained(bert_path, need_weights=pretrained, need_tokenizer=False)
        offline = {"local_files_only": source.local_files_only}
        try:
            if pretrained:
                self.bert = AutoModel.from_pretrained(source.name_or_path, **offline)
            else:  # weights come from a checkpoint
                config = AutoConfig.from_pretrained(source.name_or_path, **offline)
                self.bert = AutoModel.from_config(config)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load the BERT-family model {bert_path!r} "
                            f"({str(err).splitlines()[0]}); {HINT}") from None
        self.bert.lr_group = PRETRAINED_GROUP
        self.linear = nn.Linear(self.bert.config.hidden_size, embed_size)
        self.graph = graph
        self.normalize = not no_txtnorm

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = length_mask(lengths, tokens.shape[1])
        hidden = self.bert(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return _finish(self.linear(hidden), lengths, self.graph, self.normalize)


def _finish(x, lengths, graph, normalize):
    """Optional token graph, L2 norm, and zeros at padded positions."""
    mask = length_mask(lengths, x.shape[1])  # (B, L)
    if graph is not None:
        x = graph(x, mask)
    if normalize:
        x = l2norm(x)
    return x.masked_fill(~mask.unsqueeze(-1), 0)
