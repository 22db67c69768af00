"""Randomly corrupted precomp folders: every open ends in a clear DataError or in data that is
exactly what the files say, within a time bound."""

import time

import numpy as np
import pytest
import torch
from conftest import write_precomp

from lib.data import DataError, open_split
from lib.data.pairs import CaptionFormat, PairBatches
from lib.data.tokenizers import VocabTokenizer
from lib.data.tokens import tokenize_captions
from lib.data.vocab import build_vocab

N_IMG, REGIONS, DIM = 6, 4, 8
CAPTIONS = [f"a dog and a cat number {i}" for i in range(5 * N_IMG)]
CASES = 60
TIME_LIMIT = 5.0  # seconds for one corrupted folder, opening and reading every item


def _corrupt(rng, root):
    """Apply one random corruption to the features or the captions of ``root``."""
    ims, caps = root / "precomp" / "test_ims.npy", root / "precomp" / "test_caps.txt"
    target = ims if rng.random() < 0.6 else caps
    data = bytearray(target.read_bytes())
    kind = rng.choice(["flip", "truncate", "drop_lines"] if target == caps else
                      ["flip", "flip_header", "truncate"])
    if kind == "flip":
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= int(rng.integers(1, 256))
    elif kind == "flip_header":
        pos = int(rng.integers(0, 128))
        data[pos] ^= int(rng.integers(1, 256))
    elif kind == "truncate":
        data = data[:int(rng.integers(0, len(data)))]
    else:
        lines = bytes(data).split(b"\n")
        keep = rng.random(len(lines)) > 0.2
        data = bytearray(b"\n".join(line for line, k in zip(lines, keep, strict=True) if k))
    target.write_bytes(bytes(data))
    return f"{target.name}: {kind}"


def _read_all(root, vocab):
    """Every caption of the split in one augmented training batch."""
    split = open_split(root, "test", DIM)
    tokenizer = VocabTokenizer(vocab)
    pairs = PairBatches(split, tokenize_captions(split.captions, tokenizer),
                        CaptionFormat.of(tokenizer), region_drop=0.2)
    return split, pairs[(0, np.arange(split.num_captions))]


@pytest.mark.parametrize("seed", range(CASES))
def test_corrupted_folder_gives_a_clear_error_or_exact_data(tmp_path, seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((N_IMG, REGIONS, DIM)).astype(np.float32)
    root = write_precomp(tmp_path, "test", features, CAPTIONS)
    vocab = build_vocab(CAPTIONS)
    what = _corrupt(rng, root)
    start = time.perf_counter()
    try:
        split, batch = _read_all(root, vocab)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and str(root / "precomp") in message, (what, message)
    else:  # accepted: the data must be exactly what the files now hold, and usable
        stored = np.load(root / "precomp" / "test_ims.npy")
        text = (root / "precomp" / "test_caps.txt").read_bytes().decode().replace("\r\n", "\n")
        lines = text.split("\n")
        assert split.captions == (lines[:-1] if lines[-1] == "" else lines), what
        assert np.isfinite(stored).all() and stored.shape[2] == DIM, what
        assert torch.equal(batch.img_ids, batch.cap_ids // split.im_div), what
        assert batch.cap_lens.min() >= 2 and batch.images.shape[2] == DIM, what
        assert bool(torch.isfinite(batch.images).all()), what
    assert time.perf_counter() - start < TIME_LIMIT, what
