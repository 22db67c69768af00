"""Caption tokenizers with train-time caption augmentation (VSE∞ style).

Both tokenizers expose ``encode(caption, generator=None) -> list[int]``, ``count(caption)``,
``pad_id`` and ``max_length``. With a ``generator`` each word is selected with probability 0.2
and then masked (50%), replaced by random tokens (10%) or deleted (40%); WordPiece models treat a
word's sub-tokens together. Every caption is cut to ``max_length`` tokens, the two wrapping tokens
included, so one overlong line cannot blow up a batch.

For training on region features, captions are tokenized once per run instead
(``tokenize_all``, cached by ``identity``; see ``tokens.py``) and augmented a batch at a time
(``augment.py``), with the same probabilities. ``start_id``/``end_id`` wrap a caption,
``mask_id`` masks a word and random tokens are drawn from ``range(vocab_size)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..pretrained import HINT, resolve_pretrained
from .errors import DataError
from .vocab import MASK_TOKEN, Vocabulary, tokenize_words

KEEP, MASK, RANDOM, DELETE = 0, 1, 2, 3
# a word is selected with P_SELECT; a selected word is masked (P_MASK), replaced by random tokens
# (P_RANDOM) or deleted (the rest)
P_SELECT, P_MASK, P_RANDOM = 0.2, 0.5, 0.1
TOKENIZE_WORDS_VERSION = "nltk-treebank-punkt-1"  # part of VocabTokenizer.identity


def word_actions(num_words: int, generator: torch.Generator, p_select: float = P_SELECT,
                 p_mask: float = P_MASK, p_random: float = P_RANDOM) -> list[int]:
    """Draw one augmentation action per word (KEEP, MASK, RANDOM or DELETE)."""
    draws = torch.rand(num_words, generator=generator).tolist()
    actions = []
    for u in draws:
        if u >= p_select:
            actions.append(KEEP)
            continue
        u /= p_select  # uniform again on [0, 1)
        actions.append(MASK if u < p_mask else RANDOM if u < p_mask + p_random else DELETE)
    return actions


def apply_actions(ids: list[int], actions: list[int], mask_id: int, vocab_size: int,
                  generator: torch.Generator) -> list[int]:
    """Apply one action per token: keep it, mask it, draw a random token, or delete it."""
    out = []
    for token, action in zip(ids, actions, strict=True):
        if action == KEEP:
            out.append(token)
        elif action == MASK:
            out.append(mask_id)
        elif action == RANDOM:
            out.append(int(torch.randint(vocab_size, (1,), generator=generator)))
    return out


class VocabTokenizer:
    """Word-level tokenizer for the BiGRU: ``<start> w1 ... wn <end>``."""

    def __init__(self, vocab: Vocabulary, max_length: int = 128):
        self.vocab = vocab
        self.pad_id = vocab("<pad>")
        self.mask_id = vocab(MASK_TOKEN)
        self.start_id, self.end_id = vocab("<start>"), vocab("<end>")
        self.vocab_size = len(vocab)
        self.max_length = max_length

    @property
    def identity(self) -> str:
        """What decides the ids: the word list and the word splitter (a token cache key)."""
        words = hashlib.sha256("\n".join(self.vocab.idx2word).encode()).hexdigest()
        return f"vocab:{TOKENIZE_WORDS_VERSION}:{words}"

    def tokenize_all(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids of every caption, concatenated ``(T,)``, with ``(T,)`` word starts (every token
        is a word) and ``(N,)`` lengths; not wrapped and not cut."""
        ids = [[self.vocab(w) for w in tokenize_words(c)] for c in captions]
        flat = np.fromiter((i for caption in ids for i in caption), np.int32)
        lengths = np.fromiter((len(caption) for caption in ids), np.int64, len(ids))
        return flat, np.ones(len(flat), bool), lengths

    def encode(self, caption: str, generator: torch.Generator | None = None) -> list[int]:
        ids = [self.vocab(w) for w in tokenize_words(caption)]
        if generator is not None:
            ids = apply_actions(ids, word_actions(len(ids), generator), self.mask_id,
                                len(self.vocab), generator)
        return [self.vocab("<start>"), *ids[: self.max_length - 2], self.vocab("<end>")]

    def count(self, caption: str) -> int:
        """Tokens of ``caption`` before the cut, ``<start>``/``<end>`` included."""
        return len(tokenize_words(caption)) + 2


class WordPieceTokenizer:
    """A Hugging Face fast tokenizer; augmentation acts on whole words via ``word_ids()``."""

    def __init__(self, name_or_path: str, max_length: int = 128):
        from transformers import AutoTokenizer

        source = resolve_pretrained(name_or_path, need_weights=False)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                source.name_or_path, use_fast=True, local_files_only=source.local_files_only)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load the tokenizer of {name_or_path!r} "
                            f"({str(err).splitlines()[0]}); {HINT}") from None
        if not self.tokenizer.is_fast:
            raise ValueError(f"{name_or_path}: a fast tokenizer (tokenizer.json) is required")
        self.pad_id = self.tokenizer.pad_token_id
        self.mask_id = self.tokenizer.mask_token_id
        self.cls_id = self.start_id = self.tokenizer.cls_token_id
        self.sep_id = self.end_id = self.tokenizer.sep_token_id
        self.vocab_size = len(self.tokenizer)
        self.max_length = max_length

    @property
    def identity(self) -> str:
        """What decides the ids: the whole tokenizer definition (a token cache key)."""
        spec = self.tokenizer.backend_tokenizer.to_str()
        return f"wordpiece:{hashlib.sha256(spec.encode()).hexdigest()}"

    def tokenize_all(self, captions: Sequence[str], chunk: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids of every caption, concatenated ``(T,)``, with ``(T,)`` flags marking the first
        sub-token of each word and ``(N,)`` lengths; not wrapped and not cut. The fast tokenizer
        encodes a chunk of captions per call."""
        ids, words = [], []
        for first in range(0, len(captions), chunk):
            encodings = self.tokenizer(list(captions[first:first + chunk]),
                                       add_special_tokens=False).encodings
            ids.extend(e.ids for e in encodings)
            words.extend(e.word_ids for e in encodings)
        lengths = np.fromiter((len(i) for i in ids), np.int64, len(ids))
        flat = np.fromiter((i for caption in ids for i in caption), np.int32)
        word = np.fromiter((w for caption in words for w in caption), np.int64, len(flat))
        starts = np.ones(len(flat), bool)
        starts[1:] = word[1:] != word[:-1]
        first_tokens = (np.cumsum(lengths) - lengths)[lengths > 0]
        starts[first_tokens] = True  # a caption's first token starts a word
        return flat, starts, lengths

    def encode(self, caption: str, generator: torch.Generator | None = None) -> list[int]:
        enc = self.tokenizer(caption, add_special_tokens=False)
        ids = enc["input_ids"]
        if generator is not None:
            ids = self._augment(ids, enc.word_ids(), generator)
        return [self.cls_id, *ids[: self.max_length - 2], self.sep_id]

    def count(self, caption: str) -> int:
        """Tokens of ``caption`` before the cut, ``[CLS]``/``[SEP]`` included."""
        return len(self.tokenizer(caption, add_special_tokens=False)["input_ids"]) + 2

    def _augment(self, ids: list[int], word_ids: list[int | None],
                 generator: torch.Generator) -> list[int]:
        """Draw one action per word and apply it to all of the word's sub-tokens."""
        words = sorted({w for w in word_ids if w is not None})
        action_of = dict(zip(words, word_actions(len(words), generator), strict=True))
        actions = [action_of.get(w, KEEP) for w in word_ids]
        return apply_actions(ids, actions, self.mask_id, self.vocab_size, generator)


@dataclass
class LongCaptions:
    """Captions of one file that are longer than the tokenizer keeps."""

    path: Path
    max_length: int
    count: int = 0
    longest_line: int = 0  # 1-based line number in ``path``
    longest_tokens: int = 0

    def __str__(self) -> str:
        return (f"{self.path}: {self.count} caption(s) longer than {self.max_length} tokens were "
                f"cut to {self.max_length} (--max_caption_tokens); the longest, line "
                f"{self.longest_line}, has {self.longest_tokens}")


def find_long_captions(captions: list[str], tokenizer, path: Path) -> LongCaptions:
    """Which captions ``tokenizer`` cuts. Every token holds at least one non-space character,
    so only captions with more such characters than the limit are tokenized to check."""
    found = LongCaptions(path, tokenizer.max_length)
    for line, caption in enumerate(captions, 1):
        if len(caption) - caption.count(" ") <= tokenizer.max_length - 2:
            continue
        tokens = tokenizer.count(caption)
        if tokens > tokenizer.max_length:
            found.count += 1
            if tokens > found.longest_tokens:
                found.longest_line, found.longest_tokens = line, tokens
    return found


def resolve_vocab_file(vocab_path: str | Path, data_name: str) -> Path:
    """``--vocab_path`` may name the JSON file or the folder holding ``{data}_precomp_vocab.json``."""
    path = Path(vocab_path)
    if path.is_dir():
        path = path / f"{data_name.removesuffix('_precomp')}_precomp_vocab.json"
    if not path.is_file():
        raise DataError(
            f"vocabulary not found: {path} (expected a SCAN vocab JSON; build one with "
            f"`python -m lib.data.vocab --captions <train_caps.txt> --out {path}`)"
        )
    return path
