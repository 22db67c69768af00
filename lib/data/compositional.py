"""A compositional synthetic dataset in the SCAN precomp format, generated on demand (not shipped).

It is built so that matching a caption to its image needs its words aligned with regions:

* every image has 36 regions; an object covers 1-3 of them (object prototype + part prototype
  + colour prototype + noise), the rest are background clutter (some of it coloured), and the
  regions are shuffled, so their order says nothing;
* a caption names 2-4 of the image's 4-7 objects, each with its colour ("a red dog next to a
  blue ball"), in one of several phrasings;
* a few popular objects occur in about 60% of the images and colours are few, so the bag of
  objects and colours an image contains rarely singles it out: "a red dog next to a blue ball"
  and "a blue dog next to a red ball" have the same bag, and only binding each colour to the
  region of its object tells them apart. A mean-pooled (global) image vector sums the bag away;
  a max over regions per word (CHAN's VHA) keeps it.

    python -m lib.data.compositional --out data     # data/compositional/precomp/*, data/vocab/

The generator refuses to replace a folder it did not write (its stamp file is ``GENERATOR``).
``meta/{split}_objects.json`` records each image's objects, colours and regions, and the
objects each caption names.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write
from .vocab import build_vocab

NAME, VERSION = "lib.data.compositional", 1
STAMP = "GENERATOR"
POPULAR = ("car", "dog", "ball", "chair")  # each in about 60% of the images
RARE = ("cat", "tree", "bike", "boat", "horse", "bird", "table", "lamp", "cup", "kite", "truck",
        "sheep", "house", "bench", "flower", "hat", "umbrella", "guitar", "train", "cake", "bag",
        "bottle", "book", "clock", "vase", "shoe")
OBJECTS = POPULAR + RARE
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange")
CLUTTER_KINDS = 12  # unnamed background prototypes (sky, grass, wall, ...)
RELATIONS = ("next to", "near", "beside", "behind", "in front of", "with")
COUNTS = {2: "two", 3: "three", 4: "four"}

NUM_REGIONS, FEATURE_DIM = 36, 256
OBJECTS_PER_IMAGE = (4, 7)  # inclusive range
PARTS_PER_OBJECT = (1, 3)  # regions one object covers, inclusive range
NAMED_PER_CAPTION = (2, 4)  # inclusive, never more than the image holds
CAPTIONS_PER_IMAGE = 5
POPULAR_WEIGHT = 8.0  # sampling weight of a popular object relative to a rare one
# Scales relative to the unit-variance object prototype. With noise 1.5 (colour 0.8, parts 0.6)
# `chan` reached dev rsum 575 of 600 in two CPU epochs, leaving no room to tell variants apart;
# at these values it reaches 442 and `vse` 92 (docs/ABLATION.md).
PART_WEIGHT, COLOUR_WEIGHT, NOISE = 0.8, 0.6, 2.5
CLUTTER_COLOUR_P = 0.5  # a clutter region carries a random colour with this probability
POSTFIX_COLOUR_P = 0.2  # "a dog that is red" instead of "a red dog"
SPLIT_SIZES = {"train": 3000, "dev": 500, "test": 1000}


@dataclass(frozen=True)
class Prototypes:
    """The fixed vectors all regions are built from (one set per seed)."""

    objects: np.ndarray  # (O, D)
    parts: np.ndarray  # (O, max parts, D): what each part of an object adds
    colours: np.ndarray  # (C, D)
    clutter: np.ndarray  # (CLUTTER_KINDS, D)

    @classmethod
    def draw(cls, rng: np.random.Generator, dim: int) -> Prototypes:
        normal = rng.standard_normal
        return cls(objects=normal((len(OBJECTS), dim)),
                   parts=PART_WEIGHT * normal((len(OBJECTS), PARTS_PER_OBJECT[1], dim)),
                   colours=COLOUR_WEIGHT * normal((len(COLOURS), dim)),
                   clutter=normal((CLUTTER_KINDS, dim)))


@dataclass(frozen=True)
class Thing:
    """One object in one image: its class, colour and the (shuffled) regions it covers."""

    obj: int
    colour: int
    regions: tuple[int, ...]

    def to_json(self) -> dict:
        return {"object": OBJECTS[self.obj], "colour": COLOURS[self.colour],
                "regions": list(self.regions)}


def _between(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def sample_image(rng: np.random.Generator, protos: Prototypes) -> tuple[np.ndarray, list[Thing]]:
    """One image: its (NUM_REGIONS, D) float32 features and the objects in it."""
    weights = np.array([POPULAR_WEIGHT] * len(POPULAR) + [1.0] * len(RARE))
    objects = rng.choice(len(OBJECTS), size=_between(rng, OBJECTS_PER_IMAGE), replace=False,
                         p=weights / weights.sum())
    colours = rng.integers(len(COLOURS), size=len(objects))
    rows, owners = [], []  # one (D,) row per region; owner: index into objects, -1 clutter
    for k, obj in enumerate(objects):
        parts = rng.choice(PARTS_PER_OBJECT[1], size=_between(rng, PARTS_PER_OBJECT),
                           replace=False)
        rows.extend(protos.objects[obj] + protos.parts[obj, p] + protos.colours[colours[k]]
                    for p in parts)
        owners.extend([k] * len(parts))
    for _ in range(NUM_REGIONS - len(rows)):
        clutter = protos.clutter[rng.integers(CLUTTER_KINDS)]
        if rng.random() < CLUTTER_COLOUR_P:
            clutter = clutter + protos.colours[rng.integers(len(COLOURS))]
        rows.append(clutter)
        owners.append(-1)
    feats = np.stack(rows) + NOISE * rng.standard_normal((NUM_REGIONS, protos.objects.shape[1]))
    order = rng.permutation(NUM_REGIONS)  # new position i holds old region order[i]
    owners = np.asarray(owners)[order]
    things = [Thing(int(obj), int(colours[k]), tuple(np.flatnonzero(owners == k).tolist()))
              for k, obj in enumerate(objects)]
    return feats[order].astype(np.float32), things


def _phrase(rng: np.random.Generator, thing: Thing) -> str:
    obj, colour = OBJECTS[thing.obj], COLOURS[thing.colour]
    words = f"{obj} that is {colour}" if rng.random() < POSTFIX_COLOUR_P else f"{colour} {obj}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def _listing(phrases: list[str]) -> str:
    """"p1", "p1 and p2", "p1, p2 and p3"."""
    return " and ".join([", ".join(phrases[:-1]), phrases[-1]]) if len(phrases) > 1 else phrases[0]


def sample_caption(rng: np.random.Generator, things: list[Thing]) -> tuple[str, list[Thing]]:
    """A caption naming 2-4 of ``things`` with their colours, and the things it names."""
    count = min(_between(rng, NAMED_PER_CAPTION), len(things))
    named = [things[i] for i in rng.choice(len(things), size=count, replace=False)]
    phrases = [_phrase(rng, thing) for thing in named]
    template = int(rng.integers(4))
    if template == 0:  # "a red dog next to a blue ball and a green cup"
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        text = f"{phrases[0]} {relation} {_listing(phrases[1:])}"
    elif template == 1:
        text = f"there is {_listing(phrases)}"
    elif template == 2:
        text = f"{COUNTS[count]} things: {_listing(phrases)}"
    else:
        text = f"a picture of {_listing(phrases)}"
    return text + ".", named


@dataclass
class Split:
    """One generated split: features, captions (5 per image, contiguous) and the layout."""

    features: np.ndarray  # (N, NUM_REGIONS, D) float32
    captions: list[str]  # 5 N
    things: list[list[Thing]]  # N lists: the objects of each image
    named: list[list[Thing]]  # 5 N lists: the objects each caption names


def generate_split(rng: np.random.Generator, protos: Prototypes, num_images: int) -> Split:
    dim = protos.objects.shape[1]
    split = Split(np.empty((num_images, NUM_REGIONS, dim), dtype=np.float32), [], [], [])
    for i in range(num_images):
        split.features[i], things = sample_image(rng, protos)
        split.things.append(things)
        for _ in range(CAPTIONS_PER_IMAGE):
            text, named = sample_caption(rng, things)
            split.captions.append(text)
            split.named.append(named)
    return split


def generate(seed: int = 0, sizes: dict[str, int] | None = None,
             dim: int = FEATURE_DIM) -> dict[str, Split]:
    """The splits named in ``sizes`` (default :data:`SPLIT_SIZES`) for ``seed``.

    The prototypes and each split draw from their own stream of the seed, so a split's content
    depends only on the seed, its name and its own size (a bigger train split leaves test as
    it was).
    """
    sizes = sizes or SPLIT_SIZES
    protos = Prototypes.draw(np.random.default_rng([seed, 0]), dim)
    return {name: generate_split(np.random.default_rng([seed, 1 + _split_index(name)]), protos, n)
            for name, n in sizes.items()}


def _split_index(name: str) -> int:
    if name not in SPLIT_SIZES:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLIT_SIZES)}")
    return list(SPLIT_SIZES).index(name)


def _layout_json(split: Split) -> list[dict]:
    """Per image: its objects (with regions) and, per caption, the indices of those it names."""
    return [{"objects": [thing.to_json() for thing in things],
             "captions": [[things.index(t) for t in split.named[CAPTIONS_PER_IMAGE * i + c]]
                          for c in range(CAPTIONS_PER_IMAGE)]}
            for i, things in enumerate(split.things)]


def write_split(folder: Path, name: str, split: Split) -> None:
    """``precomp/{name}_{ims.npy,caps.txt,ids.txt}`` and ``meta/{name}_objects.json``."""
    precomp = folder / "precomp"
    np.save(precomp / f"{name}_ims.npy", split.features)
    (precomp / f"{name}_caps.txt").write_text("".join(f"{c}\n" for c in split.captions))
    (precomp / f"{name}_ids.txt").write_text("".join(f"{i}\n" for i in range(len(split.things))))
    (folder / "meta" / f"{name}_objects.json").write_text(json.dumps(_layout_json(split)) + "\n")


def _is_ours(folder: Path) -> bool:
    try:
        return json.loads((folder / STAMP).read_text())["generator"] == NAME
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_replaceable(target: Path, vocab_file: Path) -> None:
    """Refuse before writing anything when the output would replace what another tool wrote."""
    if target.exists() and not _is_ours(target):
        raise FileExistsError(f"{target} exists and was not written by {NAME} (no {STAMP} "
                              f"stamp in it): remove it or choose another --out")
    if vocab_file.exists() and not target.exists():
        raise FileExistsError(f"{vocab_file} exists without the dataset it belongs to "
                              f"({target}): remove it or choose another --out")


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an earlier ``target`` is renamed aside first, then removed."""
    old = new.with_name(new.name + "-old")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_compositional(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                        dim: int = FEATURE_DIM) -> Path:
    """Write ``root/compositional`` and ``root/vocab/compositional_precomp_vocab.json``.

    Everything is written to a temporary folder beside the target and renamed into place, so an
    interrupted run leaves no half-written dataset; the same arguments give byte-identical
    files. The vocabulary is built from the training captions (``sizes`` must include train).
    """
    root = Path(root)
    target, vocab_file = root / "compositional", root / "vocab" / "compositional_precomp_vocab.json"
    _check_replaceable(target, vocab_file)
    sizes = dict(sizes or SPLIT_SIZES)
    splits = generate(seed, sizes, dim)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".compositional-", dir=root))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename
        (tmp / "precomp").mkdir()
        (tmp / "meta").mkdir()
        for name, split in splits.items():
            write_split(tmp, name, split)
        stamp = {"generator": NAME, "version": VERSION, "seed": seed, "sizes": sizes, "dim": dim}
        (tmp / STAMP).write_text(json.dumps(stamp) + "\n")
        vocab = json.dumps(build_vocab(splits["train"].captions).to_json()).encode()
        _replace_dir(tmp, target)
        atomic_write(vocab_file, lambda f: f.write(vocab))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write the compositional synthetic dataset "
                                     "(SCAN precomp format) and its BiGRU vocabulary.")
    parser.add_argument("--out", default="data",
                        help="data root: gets compositional/ and vocab/compositional_*.json")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    for name, n in SPLIT_SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=n, help=f"{name} images")
    parser.add_argument("--dim", type=int, default=FEATURE_DIM, help="region feature width")
    args = parser.parse_args(argv)
    sizes = {name: getattr(args, name) for name in SPLIT_SIZES}
    if min(sizes.values()) < 1 or args.dim < 1:
        parser.error("split sizes and --dim must be at least 1")
    target = build_compositional(args.out, args.seed, sizes, args.dim)
    print(f"compositional dataset at {target} ({sizes}, {args.dim}-d regions)")
    return target


if __name__ == "__main__":
    try:
        main()
    except FileExistsError as err:
        raise SystemExit(f"error: {err}") from None
