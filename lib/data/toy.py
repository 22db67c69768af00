"""The embedded toy dataset: small, deterministic, in exactly the SCAN precomp format.

Each image holds a few coloured objects plus background clutter. A region's feature is the sum of
an object prototype, a colour prototype and noise; regions are shuffled (detector order carries no
layout). Each of an image's five captions names two or three of its objects, e.g. "a red dog next
to a blue ball". Objects and colours recur across images, so telling images apart needs the
region/word alignment the model is about, not a bag-of-objects guess alone.

    python -m lib.data.toy --out data      # writes data/toy/precomp/* and data/vocab/toy_*.json

``train.py`` generates it on first use only at the embedded location (``<repository>/data/toy``,
the default ``--data_path``); anywhere else the command above writes it on request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .vocab import build_vocab

OBJECTS = ("dog", "cat", "ball", "car", "tree", "bike", "boat", "horse", "bird", "chair",
           "table", "lamp", "cup", "kite", "truck", "sheep", "house", "bench", "flower", "hat",
           "umbrella", "guitar", "train", "cake")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "pink")
RELATIONS = ("next to", "near", "and", "with", "behind", "beside")
SPLIT_SIZES = {"train": 1500, "dev": 500, "test": 1000}
NUM_REGIONS, FEATURE_DIM = 12, 256
NOISE, COLOUR_WEIGHT, NO_COLOUR = 2.5, 0.5, 0.3
VERSION = "2"  # bump when the generator changes so stale copies are rebuilt
# The embedded toy set lives in the repository's data/ folder; only there is it generated on use.
EMBEDDED_ROOT = Path(__file__).resolve().parents[2] / "data"


def _image(rng, obj_protos, col_protos, background, noise):
    """One image: a list of (object, colour) and its (NUM_REGIONS, FEATURE_DIM) features."""
    n_obj = int(rng.integers(3, 6))
    objects = rng.choice(len(OBJECTS), size=n_obj, replace=False)
    colours = rng.integers(len(COLOURS), size=n_obj)
    feats = np.empty((NUM_REGIONS, FEATURE_DIM), dtype=np.float32)
    for r in range(NUM_REGIONS):
        if r < n_obj:
            feats[r] = obj_protos[objects[r]] + COLOUR_WEIGHT * col_protos[colours[r]]
        else:
            feats[r] = background + 0.5 * rng.standard_normal(FEATURE_DIM)
        feats[r] += noise * rng.standard_normal(FEATURE_DIM)
    rng.shuffle(feats)
    return list(zip(objects.tolist(), colours.tolist(), strict=True)), feats


def _caption(rng, items):
    k = int(rng.integers(2, 4)) if len(items) >= 3 else 2
    chosen = rng.choice(len(items), size=k, replace=False)
    phrases = []
    for idx in chosen:
        obj, col = items[idx]
        name = OBJECTS[obj] if rng.random() < NO_COLOUR else f"{COLOURS[col]} {OBJECTS[obj]}"
        phrases.append(f"a {name}")
    words = [phrases[0]]
    for p in phrases[1:]:
        words.append(f"{RELATIONS[int(rng.integers(len(RELATIONS)))]} {p}")
    return " ".join(words) + "."


def _write_split(folder: Path, split: str, n_images: int, rng, obj_protos, col_protos, bg,
                 noise):
    feats = np.empty((n_images, NUM_REGIONS, FEATURE_DIM), dtype=np.float32)
    captions = []
    for i in range(n_images):
        items, feats[i] = _image(rng, obj_protos, col_protos, bg, noise)
        captions.extend(_caption(rng, items) for _ in range(5))
    np.save(folder / f"{split}_ims.npy", feats)
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    (folder / f"{split}_ids.txt").write_text("\n".join(str(i) for i in range(n_images)) + "\n")
    return captions


def build_toy(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
              noise: float = NOISE) -> Path:
    """Write ``root/toy/precomp`` and ``root/vocab/toy_precomp_vocab.json``; returns the toy dir.

    ``sizes`` (images per split) and ``noise`` (feature noise level) default to the embedded
    toy set; the tests use a smaller, cleaner variant.

    Only a folder this generator wrote (it holds the ``VERSION`` stamp) is ever replaced; any
    other ``root/toy`` or vocabulary file in the way stops with a :class:`DataError` and is left
    untouched. Files are written to a temporary folder and renamed into place, so an interrupted
    run never leaves a half-written dataset behind.
    """
    root = Path(root)
    target, vocab_file = root / "toy", root / "vocab" / "toy_precomp_vocab.json"
    _check_replaceable(target, vocab_file)
    rng = np.random.default_rng(seed)
    obj_protos = rng.standard_normal((len(OBJECTS), FEATURE_DIM)).astype(np.float32)
    col_protos = rng.standard_normal((len(COLOURS), FEATURE_DIM)).astype(np.float32)
    background = rng.standard_normal(FEATURE_DIM).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-", dir=root))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; the data set is an ordinary folder
        precomp = tmp / "precomp"
        precomp.mkdir()
        train_caps = []
        for split, n in (sizes or SPLIT_SIZES).items():
            caps = _write_split(precomp, split, n, rng, obj_protos, col_protos, background,
                                noise)
            if split == "train":
                train_caps = caps
        (tmp / "VERSION").write_text(VERSION)
        vocab_file.parent.mkdir(exist_ok=True)
        build_vocab(train_caps).save(vocab_file)
        if target.exists():  # a stamped copy of another version (checked above)
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_replaceable(target: Path, vocab_file: Path) -> None:
    """Refuse to replace anything this generator did not write."""
    stamped = (target / "VERSION").is_file()
    if target.exists() and not stamped:
        raise DataError(f"{target} exists and was not written by the toy generator (no VERSION "
                        f"stamp): it is left untouched; move it away or generate the toy set "
                        f"under another folder (python -m lib.data.toy --out OTHER)")
    if vocab_file.exists() and not stamped:
        raise DataError(f"{vocab_file} exists but {target} is not a generated toy set: the "
                        f"vocabulary is left untouched; move it away or generate the toy set "
                        f"under another folder (python -m lib.data.toy --out OTHER)")


def is_current(root: str | Path) -> bool:
    """Whether ``root`` holds an up-to-date generated toy set and its vocabulary."""
    stamp = Path(root) / "toy" / "VERSION"
    vocab = Path(root) / "vocab" / "toy_precomp_vocab.json"
    return stamp.is_file() and stamp.read_text() == VERSION and vocab.is_file()


def is_embedded(data_path: str | Path) -> bool:
    """Whether ``data_path`` is the embedded toy location ``<repository>/data/toy``."""
    return Path(data_path).resolve() == (EMBEDDED_ROOT / "toy").resolve()


def ensure_toy(root: str | Path) -> Path:
    """Build the toy dataset under ``root`` unless an up-to-date copy is already there."""
    return Path(root) / "toy" if is_current(root) else build_toy(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded toy dataset.")
    parser.add_argument("--out", default="data", help="data root (gets toy/ and vocab/)")
    args = parser.parse_args(argv)
    print(f"toy dataset at {build_toy(args.out)}")


if __name__ == "__main__":
    main()
