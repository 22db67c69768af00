"""Word vocabulary for the BiGRU text encoder, in the SCAN JSON format.

File layout: ``{"word2idx": {word: i}, "idx2word": {"i": word}, "idx": N}`` with
``<pad>``=0, ``<start>``=1, ``<end>``=2, ``<unk>``=3. A ``<mask>`` token is appended in memory
(never written back) for caption augmentation.

Build one from training captions with::

    python -m lib.data.vocab --captions data/f30k/precomp/train_caps.txt --out vocab.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

from .errors import DataError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
MASK_TOKEN = "<mask>"

# Abbreviations whose period does not end a sentence (NLTK's trained English Punkt model, which
# needs a data download, knows these and more; captions rarely hold others).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "u.s", "e.g",
                           "i.e", "no", "mt", "ave"})

def _sentence_splitter() -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


_sentences = _sentence_splitter()
_word_tokenizer = NLTKWordTokenizer()


def tokenize_words(caption: str) -> list[str]:
    """Lower-cased word tokens as ``nltk.word_tokenize`` (which SCAN's vocabularies were built
    with) gives them, without its data download: Punkt sentence split, then Treebank words per
    sentence, so a period inside a caption ("a dog. a cat") is a token of its own."""
    sentences = _sentences.tokenize(caption.lower())
    return [word for sentence in sentences for word in _word_tokenizer.tokenize(sentence)]


class Vocabulary:
    """word <-> index mapping; unknown words map to ``<unk>``."""

    def __init__(self, words: Iterable[str]):
        self.idx2word: list[str] = list(words)
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("vocabulary contains duplicate words")
        for i, tok in enumerate(SPECIAL_TOKENS):
            if self.word2idx.get(tok) != i:
                raise ValueError(f"vocabulary must map {tok!r} to {i}")
        if MASK_TOKEN not in self.word2idx:
            self.add(MASK_TOKEN)

    def add(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx["<unk>"])

    # -- SCAN JSON format ---------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            idx2word = data["idx2word"]
            words = [idx2word[str(i)] for i in range(len(idx2word))]
        except FileNotFoundError:
            raise DataError(f"vocabulary file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{path}: expected a SCAN vocabulary JSON with 'word2idx' and 'idx2word' "
                f"(indices 0..N-1), could not read it: {err!r}"
            ) from None
        try:
            return cls(words)
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None

    def to_json(self, include_mask: bool = False) -> dict:
        words = [w for w in self.idx2word if include_mask or w != MASK_TOKEN]
        return {
            "word2idx": {w: i for i, w in enumerate(words)},
            "idx2word": {str(i): w for i, w in enumerate(words)},
            "idx": len(words),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))


def build_vocab(captions: Iterable[str], min_count: int = 4) -> Vocabulary:
    """Keep words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
    counts = Counter(w for cap in captions for w in tokenize_words(cap))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary([*SPECIAL_TOKENS, *(w for w in kept if w not in SPECIAL_TOKENS)])


def read_lines(path: Path) -> list[str]:
    """Caption lines, split on newlines only (``str.splitlines`` would also split on form feeds
    and other separators that real caption files may contain). An empty line or bytes that are
    not UTF-8 are refused with the line number; empty lines are kept (an empty caption) and
    reported with their line numbers."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"caption file not found: {path}") from None
    try:
        text = data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: expected UTF-8 text with one caption per line, found "
                        f"the byte {data[err.start:err.start + 1]!r}") from None
    lines = text.split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    empty = [i for i, line in enumerate(lines, 1) if not line.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        log.warning("%s: %d empty caption line(s) (line %s), kept as empty captions; check the "
                    "file if that is unexpected", path, len(empty), shown)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a SCAN-format vocabulary JSON.")
    parser.add_argument("--captions", nargs="+", required=True, type=Path,
                        help="caption files (one caption per line), e.g. train_caps.txt "
                        "dev_caps.txt")
    parser.add_argument("--out", required=True, type=Path, help="output JSON path")
    parser.add_argument("--min_count", type=int, default=4, help="minimum word frequency")
    args = parser.parse_args(argv)
    captions = [line for path in args.captions for line in read_lines(path)]
    vocab = build_vocab(captions, args.min_count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    print(f"wrote {vocab.to_json()['idx']} words to {args.out}")


if __name__ == "__main__":
    main()
