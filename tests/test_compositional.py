"""The compositional dataset generator: determinism, SCAN format, captions true to the images,
refusal to replace folders it did not write, vocabulary coverage."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from lib.data import Vocabulary, open_split
from lib.data.compositional import (
    CAPTIONS_PER_IMAGE,
    COLOURS,
    NUM_REGIONS,
    OBJECTS,
    PARTS_PER_OBJECT,
    build_compositional,
    generate,
    main,
)
from lib.data.vocab import tokenize_words

SIZES = {"train": 120, "dev": 10, "test": 12}
DIM = 32  # narrow features keep the files small; the layout does not depend on the width
PHRASE = re.compile(rf"\ban? (?:(?P<c1>{'|'.join(COLOURS)}) (?P<o1>{'|'.join(OBJECTS)})\b|"
                    rf"(?P<o2>{'|'.join(OBJECTS)}) that is (?P<c2>{'|'.join(COLOURS)})\b)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compositional")
    build_compositional(root, seed=3, sizes=SIZES, dim=DIM)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_gives_identical_bytes_other_seed_differs(data_root, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    main(["--out", str(again), "--seed", "3", "--dim", str(DIM),
          *(f"--{name}={n}" for name, n in SIZES.items())])
    build_compositional(other, seed=4, sizes=SIZES, dim=DIM)
    reference = _files(data_root)
    assert len(reference) == 3 * 4 + 2  # 3 splits x (ims, caps, ids, meta), stamp, vocab
    assert _files(again) == reference
    changed = _files(other)
    assert changed.keys() == reference.keys()
    for name in ("train_ims.npy", "train_caps.txt", "test_ims.npy"):
        key = f"compositional/precomp/{name}"
        assert changed[key] != reference[key]


def test_split_depends_only_on_seed_and_its_size():
    small, large = generate(5, {"train": 4, "test": 3}, DIM), generate(5, {"train": 9, "test": 3},
                                                                         DIM)
    assert np.array_equal(small["test"].features, large["test"].features)
    assert small["test"].captions == large["test"].captions


def test_scan_precomp_format(data_root):
    folder = data_root / "compositional"
    for name, n in SIZES.items():
        feats = np.load(folder / "precomp" / f"{name}_ims.npy")
        assert feats.shape == (n, NUM_REGIONS, DIM) and feats.dtype == np.float32
        assert np.isfinite(feats).all()
        split = open_split(folder, name, DIM)  # the loader's own checks accept it
        assert split.num_images == n and split.im_div == CAPTIONS_PER_IMAGE
        assert split.num_captions == CAPTIONS_PER_IMAGE * n and all(split.captions)
        ids = (folder / "precomp" / f"{name}_ids.txt").read_text().split("\n")
        assert ids == [str(i) for i in range(n)] + [""]
    stamp = json.loads((folder / "GENERATOR").read_text())
    assert stamp == {"generator": "lib.data.compositional", "version": 1, "seed": 3,
                     "sizes": SIZES, "dim": DIM}


def _named_pairs(caption: str) -> list[tuple[str, str]]:
    """(object, colour) of every "a red dog" / "a dog that is red" phrase in a caption."""
    return [(m["o1"] or m["o2"], m["c1"] or m["c2"]) for m in PHRASE.finditer(caption)]


def test_captions_name_only_objects_of_their_image_with_their_colours(data_root):
    folder = data_root / "compositional"
    for name in SIZES:
        layout = json.loads((folder / "meta" / f"{name}_objects.json").read_text())
        captions = (folder / "precomp" / f"{name}_caps.txt").read_text().splitlines()
        for i, image in enumerate(layout):
            pairs = [(o["object"], o["colour"]) for o in image["objects"]]
            assert 4 <= len(pairs) <= 7 and len({obj for obj, _ in pairs}) == len(pairs)
            for c, named in enumerate(image["captions"]):
                caption = captions[CAPTIONS_PER_IMAGE * i + c]
                found = _named_pairs(caption)
                assert 2 <= len(found) <= 4 and set(found) <= set(pairs), caption
                assert sorted(found) == sorted(pairs[k] for k in named), caption
                nouns = [w for w in tokenize_words(caption) if w in OBJECTS]
                assert len(nouns) == len(found), caption  # no object outside a phrase


def test_layout_regions_hold_their_objects():
    """The recorded regions of each object carry that object: a nearest-centroid classifier
    built from them labels held-out objects' regions correctly (chance is 1/30)."""
    split = generate(1, {"train": 400}, 256)["train"]
    feats, labels, owned = [], [], []
    for image, things in zip(split.features, split.things, strict=True):
        regions = [r for t in things for r in t.regions]
        assert len(regions) == len(set(regions)) and max(regions) < NUM_REGIONS
        for t in things:
            assert PARTS_PER_OBJECT[0] <= len(t.regions) <= PARTS_PER_OBJECT[1]
            feats.extend(image[list(t.regions)])
            labels.extend([t.obj] * len(t.regions))
        owned.append(len(regions))
    feats, labels = np.stack(feats), np.array(labels)
    half = len(labels) // 2
    centroids = np.stack([feats[:half][labels[:half] == o].mean(0) for o in range(len(OBJECTS))])
    distances = ((feats[half:, None] - centroids[None]) ** 2).sum(-1)  # (held out, O)
    assert (distances.argmin(1) == labels[half:]).mean() > 0.95
    assert min(owned) >= 4 and max(owned) <= NUM_REGIONS  # the rest are clutter


def test_vocabulary_covers_every_caption_word(data_root):
    vocab = Vocabulary.load(data_root / "vocab" / "compositional_precomp_vocab.json")
    for name in SIZES:
        captions = (data_root / "compositional" / "precomp" / f"{name}_caps.txt").read_text()
        words = {w for line in captions.splitlines() for w in tokenize_words(line)}
        assert words <= set(vocab.word2idx)
    assert set(OBJECTS) | set(COLOURS) <= set(vocab.word2idx)


def test_refuses_a_folder_it_did_not_write(tmp_path):
    theirs = tmp_path / "compositional"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=re.escape(str(theirs))):
        build_compositional(tmp_path, sizes={"train": 2, "dev": 1, "test": 1}, dim=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compositional"]  # no temp, no vocab
    assert _files(theirs) == {"notes.txt": b"keep me"}

    theirs.rename(tmp_path / "moved")
    vocab = tmp_path / "vocab" / "compositional_precomp_vocab.json"
    vocab.parent.mkdir()
    vocab.write_text("{}")  # a vocabulary without the dataset it was built with
    with pytest.raises(FileExistsError, match=re.escape(str(vocab))):
        build_compositional(tmp_path, sizes={"train": 2, "dev": 1, "test": 1}, dim=8)
    assert vocab.read_text() == "{}"


def test_replaces_its_own_folder_with_ordinary_permissions(tmp_path):
    sizes = {"train": 20, "dev": 1, "test": 1}
    old_mask = os.umask(0o027)
    try:
        build_compositional(tmp_path, seed=0, sizes=sizes, dim=8)
        first = _files(tmp_path)
        build_compositional(tmp_path, seed=1, sizes=sizes, dim=8)  # stamped: replaced
    finally:
        os.umask(old_mask)
    assert _files(tmp_path) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compositional", "vocab"]
    for path in [tmp_path / "compositional", *(tmp_path / "compositional").rglob("*")]:
        expected = 0o750 if path.is_dir() else 0o640
        assert path.stat().st_mode & 0o777 == expected, path
