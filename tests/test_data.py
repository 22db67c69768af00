import json

import numpy as np
import pytest
import torch
from conftest import write_precomp

from lib.data import (
    DATASET_KINDS,
    Batch,
    CaptionBatch,
    DataError,
    ImageBatch,
    Vocabulary,
    build_dataset,
    eval_loaders,
    open_split,
)
from lib.data.pairs import CaptionFormat, PairBatches
from lib.data.precomp import (
    DEV_CAPTIONS,
    CaptionCollate,
    collate_images,
)
from lib.data.tokenizers import (
    DELETE,
    KEEP,
    MASK,
    RANDOM,
    VocabTokenizer,
    WordPieceTokenizer,
    word_actions,
)
from lib.data.tokens import tokenize_captions
from lib.data.vocab import build_vocab
from lib.data.vocab import main as vocab_main


def _features(n, regions=4, dim=6):
    return np.arange(n * regions * dim, dtype=np.float32).reshape(n, regions, dim)


@pytest.fixture()
def vocab():
    return build_vocab(["a dog runs", "a cat sits", "a dog sits"] * 4)


def _pairs(split, tokenizer, **kwargs):
    return PairBatches(split, tokenize_captions(split.captions, tokenizer),
                       CaptionFormat.of(tokenizer), **kwargs)


def test_five_captions_per_image_and_batches(tmp_path, vocab):
    caps = [f"a dog {i}" for i in range(15)]
    root = write_precomp(tmp_path, "test", _features(3), caps)
    split = open_split(root, "test", 6)
    assert (split.num_images, split.num_captions, split.im_div) == (3, 15, 5)
    tok = VocabTokenizer(vocab)
    batch = _pairs(split, tok)[(0, np.array([0, 7, 14]))]
    assert batch.img_ids.tolist() == [0, 1, 2] and batch.cap_ids.tolist() == [0, 7, 14]
    torch.testing.assert_close(batch.images, torch.from_numpy(_features(3)))  # nothing dropped
    assert batch.images.shape == (3, 4, 6) and batch.img_lens.tolist() == [4, 4, 4]
    assert batch.captions.shape == (3, 8)  # 5 tokens, padded to a multiple of 8
    for row, length in zip(batch.captions.tolist(), batch.cap_lens.tolist(), strict=True):
        assert row[0] == vocab("<start>") and row[length - 1] == vocab("<end>")
        assert set(row[length:]) == {vocab("<pad>")}


def test_batches_move_all_their_tensors_together():
    ids = torch.tensor([4])
    batch = Batch(torch.ones(1, 2, 3), torch.tensor([2]), torch.tensor([[1, 5, 2]]),
                  torch.tensor([3]), ids, ids)
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert isinstance(moved, Batch) and moved is not batch
    for field in ("images", "img_lens", "captions", "cap_lens", "cap_ids", "img_ids"):
        assert torch.equal(getattr(moved, field), getattr(batch, field)), field
    images = collate_images([(torch.ones(3, 2), 7)])
    assert isinstance(images, ImageBatch) and images.img_ids.tolist() == [7]
    captions = CaptionCollate(pad_id=0)([(torch.tensor([1, 2]), 9)])
    assert isinstance(captions, CaptionBatch) and captions.cap_ids.tolist() == [9]


def test_one_caption_per_image(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["x", "y", "z"])
    split = open_split(root, "test", 6)
    assert split.im_div == 1 and split.image_of(2) == 2


def test_dev_is_truncated_to_5000_captions(tmp_path):
    n = DEV_CAPTIONS // 5 + 14
    root = write_precomp(tmp_path, "dev", np.zeros((n, 1, 2), np.float32), ["c"] * (5 * n))
    split = open_split(root, "dev", 2)
    assert (split.num_captions, split.num_images) == (DEV_CAPTIONS, DEV_CAPTIONS // 5)


def test_train_augmentation_is_deterministic_and_drops_regions(tmp_path, vocab):
    root = write_precomp(tmp_path, "train", _features(40, regions=36), ["a dog runs"] * 200)
    pairs = _pairs(open_split(root, "train", 6), VocabTokenizer(vocab), region_drop=0.2, seed=3)
    everything = np.arange(200)
    kept = pairs[(0, everything)].img_lens
    assert 1 <= kept.min() and kept.max() <= 36
    assert 0.7 < kept.float().mean() / 36 < 0.9  # keep probability 0.8
    assert torch.equal(pairs[(0, everything)].img_lens, kept)  # a pure function of the key
    assert not torch.equal(pairs[(1, everything)].img_lens, kept)  # another epoch


def test_word_action_frequencies():
    actions = word_actions(200_000, torch.Generator().manual_seed(0))
    freq = np.bincount(actions, minlength=4) / len(actions)
    assert freq[KEEP] == pytest.approx(0.8, abs=0.005)
    assert freq[MASK] == pytest.approx(0.1, abs=0.003)
    assert freq[RANDOM] == pytest.approx(0.02, abs=0.002)
    assert freq[DELETE] == pytest.approx(0.08, abs=0.003)


def test_wordpiece_augmentation_acts_on_whole_words(minilm_path):
    tok = WordPieceTokenizer(minilm_path)
    caption = "snowboarding skateboarders"  # each word splits into several sub-tokens
    plain = tok.encode(caption)
    assert plain[0] == tok.cls_id and plain[-1] == tok.sep_id and len(plain) > 4
    pieces = tok.tokenizer(caption, add_special_tokens=False)
    words = pieces.word_ids()
    seen_partial_mask = False
    for seed in range(300):
        out = tok.encode(caption, torch.Generator().manual_seed(seed))[1:-1]
        masks = out.count(tok.mask_id)
        # masking replaces every sub-token of a word: counts are sums of whole-word lengths
        word_sizes = [words.count(w) for w in sorted(set(words))]
        if masks:
            assert masks in {word_sizes[0], word_sizes[1], sum(word_sizes)}
            seen_partial_mask |= masks < len(plain) - 2
        # deletion removes whole words: the length is a sum of whole-word lengths
        assert len(out) in {0, word_sizes[0], word_sizes[1], sum(word_sizes)}
    assert seen_partial_mask


def test_vocab_json_round_trip_and_cli(tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("A dog runs.\n" * 4 + "a cat\n")
    out = tmp_path / "v.json"
    vocab_main(["--captions", str(caps), "--out", str(out)])
    vocab = Vocabulary.load(out)
    assert vocab.idx2word[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert {"a", "dog", "runs", "."} <= set(vocab.word2idx) and "cat" not in vocab.word2idx
    assert vocab.idx2word[-1] == "<mask>"  # appended in memory, not written
    assert "<mask>" not in out.read_text()


# -- bad input: one clear message naming the file -----------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found.*precomp"):
        open_split(tmp_path / "nowhere", "test", 6)


def test_missing_file(tmp_path):
    (tmp_path / "precomp").mkdir()
    np.save(tmp_path / "precomp" / "test_ims.npy", _features(2))
    with pytest.raises(DataError, match="missing file: .*test_caps.txt"):
        open_split(tmp_path, "test", 6)


def test_count_mismatch(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 7)
    with pytest.raises(DataError, match=r"test_caps.txt: expected 15 or 3 captions .* found 7"):
        open_split(root, "test", 6)


def test_feature_width_mismatch(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 3)
    with pytest.raises(DataError, match=r"test_ims.npy: expected .*2048.* found \(3, 4, 6\)"):
        open_split(root, "test", 2048)


def test_unreadable_captions(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 3)
    (root / "precomp" / "test_caps.txt").write_bytes(b"\xff\xfe\x00bad\n" * 3)
    with pytest.raises(DataError, match="test_caps.txt:1: expected UTF-8"):
        open_split(root, "test", 6)


def test_unreadable_features(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 3)
    (root / "precomp" / "test_ims.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="test_ims.npy: not a .npy file"):
        open_split(root, "test", 6)


def test_bad_vocabulary_file(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"words": []}')
    with pytest.raises(DataError, match="v.json: expected a SCAN vocabulary"):
        Vocabulary.load(path)
    bad_order = {"idx2word": {"0": "<start>", "1": "<pad>", "2": "<end>", "3": "<unk>"}}
    path.write_text(json.dumps(bad_order))
    with pytest.raises(DataError, match="v.json: vocabulary must map '<pad>' to 0"):
        Vocabulary.load(path)


# -- corrupt feature and caption files --------------------------------------------------------
def test_features_holding_nan_name_the_first_bad_image(tmp_path):
    feats = _features(6)
    feats[4, 2, 1] = np.nan
    feats[5, 0, 0] = np.inf
    root = write_precomp(tmp_path, "test", feats, ["c"] * 6)
    with pytest.raises(DataError, match=r"test_ims.npy: image 4 \(0-based row\) holds NaN"):
        open_split(root, "test", 6)


def test_nan_beyond_the_dev_cut_is_not_read(tmp_path):
    n = DEV_CAPTIONS // 5 + 2
    feats = np.zeros((n, 1, 2), np.float32)
    feats[-1] = np.nan  # image 1,001: outside the 5,000 dev captions that are used
    root = write_precomp(tmp_path, "dev", feats, ["c"] * (5 * n))
    assert open_split(root, "dev", 2).num_images == DEV_CAPTIONS // 5


def test_text_and_pickled_files_as_features(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 3)
    ims = root / "precomp" / "test_ims.npy"
    ims.write_text("0.1 0.2 0.3\n")
    with pytest.raises(DataError, match=r"test_ims.npy: not a .npy file \(it starts with "
                                        r"b'0.1 0\.'"):
        open_split(root, "test", 6)
    np.save(ims, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="test_ims.npy: holds pickled Python objects"):
        open_split(root, "test", 6)
    np.save(ims, _features(3))
    ims.write_bytes(ims.read_bytes()[:-10])  # truncated copy
    with pytest.raises(DataError, match="test_ims.npy: truncated or unreadable"):
        open_split(root, "test", 6)


def test_bad_utf8_names_the_line(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["c"] * 3)
    (root / "precomp" / "test_caps.txt").write_bytes(b"a dog\na cat\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"test_caps.txt:3: expected UTF-8 .* found the byte "
                                        r"b'\\xff'"):
        open_split(root, "test", 6)


def test_empty_caption_lines_are_reported(tmp_path, caplog):
    root = write_precomp(tmp_path, "test", _features(3), ["a dog", "", "a cat"])
    split = open_split(root, "test", 6)
    assert split.captions == ["a dog", "", "a cat"]
    assert "test_caps.txt: 1 empty caption line(s) (line 2)" in caplog.text


def test_a_small_dev_split_is_reported(tmp_path, caplog):
    root = write_precomp(tmp_path, "dev", _features(3), ["c"] * 15)
    open_split(root, "dev", 6)
    assert "15 dev captions, fewer than the 5000 of the published protocol" in caplog.text


def test_word_tokens_follow_nltk_word_tokenize():
    """Sentence split first (as nltk.word_tokenize does), so a period inside a caption is a token
    of its own; known abbreviations keep their period."""
    from lib.data.vocab import tokenize_words

    assert tokenize_words("A dog runs. A cat sits.") == ["a", "dog", "runs", ".", "a", "cat",
                                                          "sits", "."]
    assert tokenize_words("Mr. Smith walks a dog.") == ["mr.", "smith", "walks", "a", "dog", "."]
    assert tokenize_words("A dog, a cat!") == ["a", "dog", ",", "a", "cat", "!"]


# -- another kind of dataset: one opener in DATASET_KINDS, the loaders need nothing else -------
class _MemorySplit:
    """A split held in memory: one caption per image, features given as tensors."""

    def __init__(self, features, captions):
        self.features, self.captions = features, captions
        self.num_images = self.num_captions = len(captions)
        self.feature_dim = features[0].shape[-1]
        self.caps_path = "memory"

    def image_of(self, caption_index):
        return caption_index

    def images(self):
        return self.features


def test_a_new_dataset_kind_plugs_into_the_loaders(monkeypatch, vocab):
    features = [torch.full((n, 3), float(n)) for n in (2, 4, 3)]
    opened = []

    def open_memory(data_path, split, img_dim):
        opened.append((data_path, split, img_dim))
        return _MemorySplit(features, ["a dog", "a cat", "a dog runs"])

    monkeypatch.setitem(DATASET_KINDS, "memory", open_memory)
    images, captions, split = eval_loaders("mem://", "test", 3, VocabTokenizer(vocab),
                                           batch_size=2, workers=0, kind="memory")
    assert opened == [("mem://", "test", 3)] and isinstance(split, _MemorySplit)
    first = next(iter(images))
    assert first.images.shape == (2, 4, 3) and first.img_lens.tolist() == [2, 4]
    assert next(iter(captions)).cap_ids.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown dataset kind 'nope'; choose from precomp"):
        build_dataset("nope", "x", "test")


def test_build_dataset_opens_precomp_splits(tmp_path):
    root = write_precomp(tmp_path, "test", _features(3), ["x", "y", "z"])
    split = build_dataset("precomp", root, "test", 6)
    assert split == open_split(root, "test", 6) and split.images()[2].shape == (4, 6)
