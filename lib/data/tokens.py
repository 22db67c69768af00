"""Captions tokenized once per run: one flat id array plus offsets, cached.

The per-item pipeline tokenized every caption again in every epoch, in every worker. Here a
split's captions are tokenized once into :class:`TokenizedCaptions` and a batch reads its
captions' ids by slicing. The result is cached under a key made of the tokenizer's ``identity``
and a hash of the caption text, so a changed tokenizer (vocabulary, WordPiece model) or caption
file is tokenized again:

* in memory, for the life of the process (training and validation share it);
* on disk only where the user asks (``--token_cache DIR``), never in a data folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bumped when the stored arrays change meaning
MEMORY_ENTRIES = 8  # token sets kept in memory (train and dev of a few runs)
_MEMORY: dict[str, TokenizedCaptions] = {}


@dataclass(frozen=True)
class TokenizedCaptions:
    """Token ids of every caption of a split, before wrapping, cutting and augmentation."""

    ids: np.ndarray  # (T,) int32, all captions concatenated in file order
    word_starts: np.ndarray  # (T,) bool, True at the first sub-token of a word
    offsets: np.ndarray  # (N + 1,) int64: caption k is ids[offsets[k]:offsets[k + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (N,)

    def select(self, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tokens of ``captions (B,)``, concatenated in that order: ids ``(T_b,)``, word
        starts ``(T_b,)`` and lengths ``(B,)``, gathered with one index."""
        starts, lengths = self.offsets[captions], self.lengths[captions]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        index = np.repeat(starts, lengths) + within  # (T_b,) positions in the flat arrays
        return self.ids[index], self.word_starts[index], lengths


def cache_key(captions: Sequence[str], tokenizer) -> str:
    """Tokenizer identity + caption content: equal keys mean equal token ids."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\0{tokenizer.identity}\0".encode())
    for caption in captions:
        digest.update(caption.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def tokenize_captions(captions: Sequence[str], tokenizer,
                      cache_dir: str | Path | None = None) -> TokenizedCaptions:
    """The captions' token ids, from the memory cache, ``cache_dir`` or the tokenizer."""
    key = cache_key(captions, tokenizer)
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / f"captions-{key[:32]}.npz" if cache_dir else None
    tokens = _load(path) if path is not None and path.is_file() else None
    if tokens is None:
        start = time.perf_counter()
        ids, word_starts, lengths = tokenizer.tokenize_all(captions)
        tokens = TokenizedCaptions(ids, word_starts, np.concatenate([[0], np.cumsum(lengths)]))
        log.info("tokenized %d captions (%d tokens) in %.1f s", len(tokens), len(ids),
                 time.perf_counter() - start)
        if path is not None:
            _save(tokens, path)
    _remember(key, tokens)
    return tokens


def _remember(key: str, tokens: TokenizedCaptions) -> None:
    if len(_MEMORY) >= MEMORY_ENTRIES:
        _MEMORY.pop(next(iter(_MEMORY)))  # the oldest entry
    _MEMORY[key] = tokens


def _save(tokens: TokenizedCaptions, path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, ids=tokens.ids, word_starts=tokens.word_starts, offsets=tokens.offsets)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    log.info("token cache written: %s", path)


def _load(path: Path) -> TokenizedCaptions | None:
    """The cached tokens, or ``None`` (logged) when the file cannot be read: they are rebuilt."""
    try:
        with np.load(path) as stored:
            return TokenizedCaptions(stored["ids"], stored["word_starts"], stored["offsets"])
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s: unreadable token cache (%s); tokenizing again", path, err)
        return None
