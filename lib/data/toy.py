"""The embedded toy dataset: small, deterministic, in exactly the SCAN precomp format.

Each image holds a few coloured objects plus background clutter. A region's feature is the sum of
an object prototype, a colour prototype and noise; regions are shuffled (detector order carries no
layout). Each of an image's five captions names two or three of its objects, e.g. "a red dog next
to a blue ball". Objects and colours recur across images, so telling images apart needs the
region/word alignment the model is about, not a bag-of-objects guess alone.

    python -m lib.data.toy --out data      # writes data/toy/precomp/* and data/vocab/toy_*.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

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

    Files are written to a temporary folder and renamed into place, so an interrupted run never
    leaves a half-written dataset behind.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    obj_protos = rng.standard_normal((len(OBJECTS), FEATURE_DIM)).astype(np.float32)
    col_protos = rng.standard_normal((len(COLOURS), FEATURE_DIM)).astype(np.float32)
    background = rng.standard_normal(FEATURE_DIM).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-", dir=root))
    try:
        precomp = tmp / "precomp"
        precomp.mkdir()
        train_caps = []
        for split, n in (sizes or SPLIT_SIZES).items():
            caps = _write_split(precomp, split, n, rng, obj_protos, col_protos, background,
                                noise)
            if split == "train":
                train_caps = caps
        (tmp / "VERSION").write_text(VERSION)
        vocab_dir = root / "vocab"
        vocab_dir.mkdir(exist_ok=True)
        build_vocab(train_caps).save(vocab_dir / "toy_precomp_vocab.json")
        target = root / "toy"
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "toy"


def ensure_toy(root: str | Path) -> Path:
    """Build the toy dataset under ``root`` unless an up-to-date copy is already there."""
    toy = Path(root) / "toy"
    vocab = Path(root) / "vocab" / "toy_precomp_vocab.json"
    stamp = toy / "VERSION"
    if stamp.is_file() and stamp.read_text() == VERSION and vocab.is_file():
        return toy
    return build_toy(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded toy dataset.")
    parser.add_argument("--out", default="data", help="data root (gets toy/ and vocab/)")
    args = parser.parse_args(argv)
    print(f"toy dataset at {build_toy(args.out)}")


if __name__ == "__main__":
    main()
