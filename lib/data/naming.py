"""Which data set a folder holds, and whether a BiGRU vocabulary belongs to it.

A SCAN data folder is named after its data set (``data/f30k``, ``data/coco``, ``data/toy``; the
SCAN archives also use ``f30k_precomp``/``coco_precomp``). That name picks the vocabulary file
(``{name}_precomp_vocab.json``) and the default evaluation split, so a wrong one silently pairs
Flickr30K captions with another data set's vocabulary: here it is read from the folder, and a
contradiction between the flag, the folder and the vocabulary stops the run.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

KNOWN_DATASETS = ("f30k", "coco", "toy")
VOCAB_SUFFIX = "_precomp_vocab.json"
# A vocabulary built from this data set's training captions (SCAN keeps words seen 4 times or
# more) leaves a few percent of their words unknown; one built from other captions far more.
MAX_UNKNOWN_FRACTION = 0.25
COVERAGE_SAMPLE = 2000  # training captions checked against the vocabulary


def folder_dataset(data_path: str | Path) -> str:
    """The data set name a folder's name says (``f30k_precomp`` -> ``f30k``)."""
    return Path(data_path).resolve().name.removesuffix("_precomp")


def dataset_name(data_path: str | Path, given: str | None) -> str:
    """``--data_name`` when given, else the folder's name; a known folder name that contradicts
    ``--data_name`` is an error naming both."""
    from_folder = folder_dataset(data_path)
    if not given:
        return from_folder
    given = given.removesuffix("_precomp")
    if from_folder in KNOWN_DATASETS and given != from_folder:
        raise DataError(f"--data_name {given} contradicts the data folder {data_path}, which "
                        f"holds {from_folder}; drop --data_name (it is read from the folder) "
                        f"or point --data_path at the {given} folder")
    return given


def vocab_dataset(vocab_file: str | Path) -> str | None:
    """The data set a SCAN vocabulary file is named after (``f30k_precomp_vocab.json`` ->
    ``f30k``), or None for another file name."""
    name = Path(vocab_file).name
    return name.removesuffix(VOCAB_SUFFIX) if name.endswith(VOCAB_SUFFIX) else None


def check_vocab_name(vocab_file: str | Path, data_name: str) -> None:
    """A vocabulary file named after another data set is refused, naming both."""
    named_for = vocab_dataset(vocab_file)
    if named_for is not None and named_for != data_name:
        raise DataError(f"vocabulary {vocab_file} belongs to {named_for}, but the data set is "
                        f"{data_name}; pass --vocab_path with {data_name}{VOCAB_SUFFIX} (or its "
                        f"folder)")


def check_vocab_coverage(vocab, vocab_file: str | Path, captions: list[str],
                         caps_file: str | Path) -> float:
    """Refuse a vocabulary that leaves most words of the training captions unknown (it was
    built from another data set); returns the unknown fraction of the sampled words."""
    from .vocab import tokenize_words

    words = [w for cap in captions[:COVERAGE_SAMPLE] for w in tokenize_words(cap)]
    unknown = sum(w not in vocab.word2idx for w in words) / max(1, len(words))
    if unknown > MAX_UNKNOWN_FRACTION:
        raise DataError(f"vocabulary {vocab_file} does not belong to {caps_file}: {unknown:.0%} "
                        f"of the words of its first {min(len(captions), COVERAGE_SAMPLE)} "
                        f"captions are unknown to it (a vocabulary built from these captions "
                        f"leaves a few percent); build one with `python -m lib.data.vocab "
                        f"--captions {caps_file} --out <file>`")
    return unknown
