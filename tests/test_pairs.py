"""The batch-at-a-time training pipeline: tokens once, batch augmentation, loaders, prefetch."""

import threading

import numpy as np
import pytest
import torch
from conftest import write_precomp

from lib.data import DataError, open_split
from lib.data.augment import (
    RANDOM_TOKEN_STREAM,
    WORD_STREAM,
    augment_tokens,
    region_order,
    uniforms,
    wrap_and_pad,
)
from lib.data.pairs import (
    CAPTION_MULTIPLE,
    CaptionFormat,
    DevicePrefetcher,
    EpochBatchSampler,
    PairBatches,
    TrainBatches,
)
from lib.data.tokenizers import P_MASK, P_RANDOM, P_SELECT, VocabTokenizer, WordPieceTokenizer
from lib.data.tokens import _MEMORY, TokenizedCaptions, tokenize_captions
from lib.data.vocab import build_vocab

CAPTIONS = ["a dog runs on the grass", "two cats sit", "a red ball near a blue tree.",
            "snowboarding skateboarders jump", ""]


@pytest.fixture()
def vocab():
    return build_vocab(CAPTIONS * 4)


@pytest.fixture()
def wordpiece(minilm_path):
    return WordPieceTokenizer(minilm_path, max_length=12)


def _split(tmp_path, n_img=12, regions=6, dim=4, im_div=5, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_img, regions, dim)).astype(np.float32)
    words = ["a", "dog", "cat", "runs", "red", "blue", "snowboarding", "skateboarders", "tree"]
    captions = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(n_img * im_div)]
    root = write_precomp(tmp_path, "train", features, captions)
    return open_split(root, "train", dim), features


def _pairs(split, tokenizer, **kwargs):
    return PairBatches(split, tokenize_captions(split.captions, tokenizer),
                       CaptionFormat.of(tokenizer), **kwargs)


# -- tokens once, cached -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vocab", "wordpiece"])
def test_tokenized_once_equals_the_per_caption_encoding(kind, vocab, wordpiece):
    tok = VocabTokenizer(vocab, max_length=6) if kind == "vocab" else wordpiece
    tokens = tokenize_captions(CAPTIONS, tok)
    ids, _, lengths = tokens.select(np.arange(len(CAPTIONS)))
    rows, cap_lens = wrap_and_pad(ids, lengths, tok.start_id, tok.end_id, tok.pad_id,
                                  tok.max_length, CAPTION_MULTIPLE)
    assert rows.shape[1] % CAPTION_MULTIPLE == 0
    for caption, row, n in zip(CAPTIONS, rows.tolist(), cap_lens.tolist(), strict=True):
        assert row[:n] == tok.encode(caption)  # wrapped and cut the same way
        assert set(row[n:]) <= {tok.pad_id}


def test_word_starts_follow_the_wordpiece_words(wordpiece):
    tokens = tokenize_captions(CAPTIONS, wordpiece)
    for k, caption in enumerate(CAPTIONS):
        words = wordpiece.tokenizer(caption, add_special_tokens=False).word_ids()
        starts = tokens.word_starts[tokens.offsets[k]:tokens.offsets[k + 1]].tolist()
        assert starts == [i == 0 or w != words[i - 1] for i, w in enumerate(words)]
    assert not tokens.word_starts.all()  # 'snowboarding' is several sub-tokens


def test_token_cache_in_memory_and_on_disk(tmp_path, vocab):
    class Counting(VocabTokenizer):
        calls = 0

        def tokenize_all(self, captions):
            Counting.calls += 1
            return super().tokenize_all(captions)

    tok, captions = Counting(vocab), [f"a dog {i}" for i in range(7)]
    _MEMORY.clear()
    first = tokenize_captions(captions, tok, tmp_path / "cache")
    assert tokenize_captions(captions, tok, tmp_path / "cache") is first and Counting.calls == 1
    assert len(list((tmp_path / "cache").glob("captions-*.npz"))) == 1
    _MEMORY.clear()  # a new process: read from the named folder, not tokenized again
    again = tokenize_captions(captions, tok, tmp_path / "cache")
    assert Counting.calls == 1 and np.array_equal(again.ids, first.ids)
    tokenize_captions(captions[:-1] + ["a cat"], tok)  # other captions: tokenized
    assert Counting.calls == 2
    vocab.add("zebra")
    tokenize_captions(captions, Counting(vocab))  # another vocabulary: tokenized
    assert Counting.calls == 3


def test_an_unreadable_cache_file_is_rebuilt(tmp_path, vocab, caplog):
    tok = VocabTokenizer(vocab)
    _MEMORY.clear()
    tokenize_captions(CAPTIONS, tok, tmp_path)
    next(tmp_path.glob("captions-*.npz")).write_bytes(b"garbage")
    _MEMORY.clear()
    tokens = tokenize_captions(CAPTIONS, tok, tmp_path)
    assert len(tokens) == len(CAPTIONS) and "unreadable token cache" in caplog.text


def test_the_token_cache_is_never_in_the_data_folder(tmp_path):
    from lib.data import check_token_cache

    data = tmp_path / "f30k"
    with pytest.raises(DataError, match="inside the data folder"):
        check_token_cache(str(data / "cache"), str(data))
    assert check_token_cache(str(tmp_path / "cache"), str(data)) == str(tmp_path / "cache")


# -- batch order and augmentation: pure functions ------------------------------------------------
def test_epoch_order_depends_on_seed_and_epoch_only():
    sampler = EpochBatchSampler(103, 10, seed=4)
    torch.manual_seed(0)
    first = [idx for _, idx in sampler]
    torch.manual_seed(1)  # the global RNG plays no part
    assert all(np.array_equal(a, b) for a, b in zip(first, [i for _, i in sampler], strict=True))
    assert len(first) == len(sampler) == 10 and all(np.all(np.diff(b) > 0) for b in first)
    assert len(np.unique(np.concatenate(first))) == 100  # full batches of distinct captions
    sampler.set_epoch(1)
    assert [e for e, _ in sampler] == [1] * 10
    assert not np.array_equal(next(iter(sampler))[1], first[0])


def test_a_captions_draws_do_not_depend_on_its_batch():
    a = uniforms(7, 2, WORD_STREAM, np.array([[3], [50]]), np.arange(5))
    b = uniforms(7, 2, WORD_STREAM, np.array([[3], [9], [11]]), np.arange(5))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    assert not np.array_equal(a, uniforms(7, 3, WORD_STREAM, np.array([[3], [50]]),
                                          np.arange(5)))
    many = uniforms(0, 0, WORD_STREAM, np.arange(20_000)[:, None], np.arange(10))
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean() - 0.5) < 0.003


def test_region_keep_rate_and_at_least_one_region():
    captions = np.arange(20_000)
    order, kept = region_order(1, 0, captions, np.full(len(captions), 36), 36, 0.2)
    assert kept.mean() / 36 == pytest.approx(0.8, abs=0.003) and kept.min() >= 1
    kept_first = np.sort(order[:, :5], axis=1)
    assert np.array_equal(kept_first, order[:, :5])  # kept regions stay in their order
    _, kept = region_order(1, 0, captions, np.full(len(captions), 4), 4, 0.99)
    assert kept.min() == 1 and kept.mean() < 1.05  # everything dropped: one region survives
    order, kept = region_order(1, 0, captions[:3], np.array([2, 5, 5]), 5, 0.0)
    assert kept.tolist() == [2, 5, 5] and np.array_equal(order[0], np.arange(5))


def test_word_action_frequencies_of_the_batch_augmentation():
    n = 200_000
    ids = np.arange(n) % 1000 + 10
    out, lengths = augment_tokens(0, 0, np.arange(n // 10), ids, np.ones(n, bool),
                                  np.full(n // 10, 10), mask_id=7, vocab_size=5)
    assert lengths.sum() / n == pytest.approx(1 - P_SELECT * (1 - P_MASK - P_RANDOM), abs=0.003)
    assert (out == 7).sum() / n == pytest.approx(P_SELECT * P_MASK, abs=0.002)
    assert ((out >= 0) & (out < 5)).sum() / n == pytest.approx(P_SELECT * P_RANDOM, abs=0.001)


def _reference_augmentation(seed, epoch, caption, ids, starts, mask_id, vocab_size):
    """One caption, word by word, from the same draws: the batch version must agree."""
    word, out = -1, []
    for position, (token, start) in enumerate(zip(ids, starts, strict=True)):
        word += int(start)
        u = uniforms(seed, epoch, WORD_STREAM, caption, word)[0] / P_SELECT
        if u >= 1:
            out.append(token)
        elif u < P_MASK:
            out.append(mask_id)
        elif u < P_MASK + P_RANDOM:
            drawn = uniforms(seed, epoch, RANDOM_TOKEN_STREAM, caption, position)[0]
            out.append(int(drawn * vocab_size))
    return out


def test_batch_augmentation_equals_a_caption_by_caption_reference(wordpiece):
    captions = [f"snowboarding {w} skateboarders near a tree number {i}"
                for i, w in enumerate(["dog", "cat", "zebra"] * 30)]
    tokens = tokenize_captions(captions, wordpiece)
    picked = np.arange(0, 90, 3)
    ids, starts, lengths = tokens.select(picked)
    out, new_lengths = augment_tokens(5, 1, picked, ids, starts, lengths, wordpiece.mask_id,
                                      wordpiece.vocab_size)
    ends = np.cumsum(new_lengths)
    for k, caption in enumerate(picked):
        lo, hi = tokens.offsets[caption], tokens.offsets[caption + 1]
        expected = _reference_augmentation(5, 1, caption, tokens.ids[lo:hi].tolist(),
                                           tokens.word_starts[lo:hi].tolist(),
                                           wordpiece.mask_id, wordpiece.vocab_size)
        assert out[ends[k] - new_lengths[k]:ends[k]].tolist() == expected
    assert (out == wordpiece.mask_id).any() and (new_lengths < lengths).any()


# -- batches: regions, loaders, workers ----------------------------------------------------------
def test_batch_regions_are_the_kept_rows_of_the_memory_map(tmp_path, vocab):
    split, features = _split(tmp_path)
    pairs = _pairs(split, VocabTokenizer(vocab), region_drop=0.5, seed=2)
    captions = np.array([0, 4, 5, 31, 59])
    batch = pairs[(3, captions)]
    order, kept = region_order(2, 3, captions, np.full(5, 6), 6, 0.5)
    assert batch.img_ids.tolist() == (captions // 5).tolist()
    assert torch.equal(batch.img_lens, torch.from_numpy(kept))
    for b, image in enumerate(captions // 5):
        expected = features[image][order[b, :kept[b]]]
        assert np.array_equal(batch.images[b, :kept[b]].numpy(), expected)
        assert batch.images[b, kept[b]:].abs().sum() == 0
    assert batch.images.shape == (5, 6, 4)  # always padded to R


def test_any_number_of_workers_gives_the_same_batches(tmp_path, wordpiece):
    split, _ = _split(tmp_path, n_img=16)
    pairs = _pairs(split, wordpiece, region_drop=0.2, seed=9)
    epochs = {}
    for workers in (0, 1, 2):
        loader = TrainBatches(pairs, EpochBatchSampler(split.num_captions, 16, 9), workers)
        rng = torch.get_rng_state()
        epochs[workers] = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            epochs[workers].append(list(loader))
        assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the global RNG alone
    assert len(epochs[0][0]) == 5
    for workers in (1, 2):
        for reference, batches in zip(epochs[0], epochs[workers], strict=True):
            for a, b in zip(reference, batches, strict=True):
                for field in ("images", "img_lens", "captions", "cap_lens", "cap_ids", "img_ids"):
                    assert torch.equal(getattr(a, field), getattr(b, field)), (workers, field)
    assert not torch.equal(epochs[0][0][0].cap_ids, epochs[0][1][0].cap_ids)


def test_a_loader_left_early_stops_its_workers(tmp_path, vocab):
    split, _ = _split(tmp_path)
    loader = TrainBatches(_pairs(split, VocabTokenizer(vocab)),
                          EpochBatchSampler(split.num_captions, 4, 0), 2)
    batches = iter(loader)
    first = next(batches)
    batches.close()  # as a training loop that breaks out of the epoch
    assert first.cap_ids.tolist() == next(iter(loader)).cap_ids.tolist()
    assert not [t for t in threading.enumerate() if t.name.startswith("batches")]


def test_prefetcher_on_the_cpu_hands_out_the_batches(tmp_path, vocab):
    split, _ = _split(tmp_path)
    loader = TrainBatches(_pairs(split, VocabTokenizer(vocab)),
                          EpochBatchSampler(split.num_captions, 8, 0), 0)
    fetched = list(DevicePrefetcher(loader, torch.device("cpu")))
    assert len(fetched) == len(loader) == 7
    assert all(torch.equal(a.captions, b.captions) for a, b in zip(fetched, loader, strict=True))


def test_tokenized_captions_select_in_any_order():
    tokens = TokenizedCaptions(np.arange(6, dtype=np.int32), np.ones(6, bool),
                               np.array([0, 2, 2, 6]))
    ids, starts, lengths = tokens.select(np.array([2, 0, 1]))
    assert ids.tolist() == [2, 3, 4, 5, 0, 1] and lengths.tolist() == [4, 2, 0]
    assert len(starts) == 6 and len(tokens) == 3


def test_no_drop_keeps_captions_and_regions_as_they_are(tmp_path, vocab):
    split, features = _split(tmp_path)
    tok = VocabTokenizer(vocab)
    batch = _pairs(split, tok, region_drop=0.0, augment_captions=False)[(4, np.arange(60))]
    assert np.array_equal(batch.images.numpy(), features[np.arange(60) // 5])
    for k, (row, n) in enumerate(zip(batch.captions.tolist(), batch.cap_lens.tolist(),
                                     strict=True)):
        assert row[:n] == tok.encode(split.captions[k])
