"""A user's data is never touched or mismatched: toy generation, data set names, vocabularies,
and overlong captions."""

import logging
import os
import shutil
import stat

import pytest
import torch

import train as train_cli
from lib.checkpoint import LATEST, load_checkpoint
from lib.config import parse_train_args
from lib.data import DataError, build_tokenizer, load_vocab, open_split, train_loader
from lib.data.naming import dataset_name
from lib.data.toy import EMBEDDED_ROOT, VERSION, build_toy, ensure_toy, is_embedded
from lib.data.vocab import build_vocab, tokenize_words

LONG_LINE = 37  # 1-based line of train_caps.txt that the long-caption tests replace


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _copy_as(tiny_toy, root, name):
    """The tiny toy set copied to ``root/name`` with its vocabulary named after ``name``."""
    shutil.copytree(tiny_toy / "toy", root / name)
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_toy / "vocab" / "toy_precomp_vocab.json",
                root / "vocab" / f"{name}_precomp_vocab.json")
    return root / name


def _train_args(data_path, run, *extra):
    return ["--data_path", str(data_path), "--text_enc_type", "bigru", "--embed_size", "64",
            "--word_dim", "32", "--batch_size", "32", "--workers", "0", "--num_epochs", "1",
            "--model_name", str(run), "--no_progress", *extra]


def test_data_name_is_read_from_the_folder(tmp_path):
    args = parse_train_args(["--data_path", str(tmp_path / "f30k"), "--text_enc_type", "bigru"])
    assert args.data_name == "f30k"
    assert dataset_name(tmp_path / "coco_precomp", None) == "coco"
    assert dataset_name(tmp_path / "my_set", None) == "my_set"
    assert dataset_name(tmp_path / "my_set", "f30k") == "f30k"  # an unknown folder name: the flag


def test_contradicting_data_name_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--data_path", str(tmp_path / "f30k"), "--data_name", "coco",
                          "--text_enc_type", "bigru"])
    err = capsys.readouterr().err
    assert "--data_name coco contradicts the data folder" in err and "f30k" in err


def test_training_without_data_name_writes_nothing_into_the_data_root(tiny_toy, tmp_path):
    data = _copy_as(tiny_toy, tmp_path / "data", "f30k")
    before = _listing(tmp_path / "data")
    train_cli.main(_train_args(data, tmp_path / "run"))
    assert _listing(tmp_path / "data") == before  # no toy/ and no toy vocabulary beside f30k
    assert load_checkpoint(tmp_path / "run" / LATEST)["config"]["data_name"] == "f30k"


def test_a_user_folder_named_toy_is_never_replaced(tiny_toy, tmp_path):
    data = _copy_as(tiny_toy, tmp_path, "toy")
    (data / "VERSION").unlink()
    (data / "MY_NOTES.txt").write_text("mine")
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=f"{data} exists and was not written by the toy"):
        ensure_toy(tmp_path)
    with pytest.raises(DataError, match="not written by the toy generator"):
        build_toy(tmp_path, sizes={"train": 10})
    train_cli.main(_train_args(data, tmp_path / "run"))  # a toy folder elsewhere is just data
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_a_stray_toy_vocabulary_is_never_replaced(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "toy_precomp_vocab.json").write_text("my vocabulary")
    with pytest.raises(DataError, match="toy_precomp_vocab.json exists"):
        build_toy(tmp_path, sizes={"train": 10})
    assert (tmp_path / "vocab" / "toy_precomp_vocab.json").read_text() == "my vocabulary"
    assert not (tmp_path / "toy").exists()


def test_a_stale_generated_toy_set_is_rebuilt_with_ordinary_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        build_toy(tmp_path, sizes={"train": 10, "dev": 2})
        (tmp_path / "toy" / "VERSION").write_text("0")  # written by an older generator
        (tmp_path / "toy" / "precomp" / "stale.txt").write_text("old")
        ensure_toy(tmp_path)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "toy" / "VERSION").read_text() == VERSION
    assert not (tmp_path / "toy" / "precomp" / "stale.txt").exists()
    assert stat.S_IMODE((tmp_path / "toy").stat().st_mode) == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".toy-")]


def test_toy_generation_happens_only_at_the_embedded_location(tmp_path):
    assert is_embedded(EMBEDDED_ROOT / "toy")
    assert not is_embedded(tmp_path / "toy")
    args = parse_train_args(_train_args(tmp_path / "toy", tmp_path / "run"))
    with pytest.raises(DataError, match=f"python -m lib.data.toy --out {tmp_path}"):
        train_cli.prepare_data(args)
    assert list(tmp_path.iterdir()) == []


def test_a_vocabulary_of_another_data_set_is_refused(tiny_toy, tmp_path):
    data = _copy_as(tiny_toy, tmp_path, "f30k")
    toy_vocab = tiny_toy / "vocab" / "toy_precomp_vocab.json"
    args = parse_train_args(_train_args(data, tmp_path / "run", "--vocab_path", str(toy_vocab)))
    with pytest.raises(DataError, match=f"vocabulary {toy_vocab} belongs to toy, but the data "
                                        f"set is f30k"):
        train_cli.prepare_data(args)

    # named right but built from other captions: most training words are unknown to it
    build_vocab(["a zebra grazes on the savanna"] * 4).save(
        tmp_path / "vocab" / "f30k_precomp_vocab.json")
    split = open_split(data, "train")
    with pytest.raises(DataError, match=r"f30k_precomp_vocab.json does not belong to .*"
                                        r"train_caps.txt: \d+% of the words"):
        load_vocab(str(tmp_path / "vocab"), "f30k", split)


def _with_long_caption(tiny_toy, tmp_path, words=5000):
    data = _copy_as(tiny_toy, tmp_path, "toy")
    caps = data / "precomp" / "train_caps.txt"
    lines = caps.read_text().split("\n")
    lines[LONG_LINE - 1] = " ".join(["dog"] * words)
    caps.write_text("\n".join(lines))
    return data


def test_a_5000_word_caption_is_cut_and_reported(tiny_toy, tmp_path, caplog):
    data = _with_long_caption(tiny_toy, tmp_path)
    args = parse_train_args(_train_args(data, tmp_path / "run"))
    split, vocab, tokenizer = train_cli.prepare_data(args)
    assert len(tokenizer.encode(split.captions[LONG_LINE - 1])) == args.max_caption_tokens
    with caplog.at_level(logging.WARNING):
        loader = train_loader(args, tokenizer, split)
    reports = [r.getMessage() for r in caplog.records if "were cut" in r.getMessage()]
    assert reports == [f"{split.caps_path}: 1 caption(s) longer than 128 tokens were cut to "
                       f"128 (--max_caption_tokens); the longest, line {LONG_LINE}, has 5002"]
    longest = max(int(batch.cap_lens.max()) for batch in loader)
    assert longest == args.max_caption_tokens  # every batch stays bounded


def test_a_5000_word_caption_trains_in_bounded_memory(tiny_toy, tmp_path):
    data = _with_long_caption(tiny_toy, tmp_path)
    train_cli.main(_train_args(data, tmp_path / "run", "--max_caption_tokens", "40"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "1 caption(s) longer than 40 tokens were cut to 40" in log
    assert f"line {LONG_LINE}, has 5002" in log


def test_wordpiece_captions_are_cut_and_counted(tmp_path, minilm_path):
    args = parse_train_args(["--data_path", str(tmp_path / "f30k"), "--bert_path", minilm_path,
                             "--max_caption_tokens", "16"])
    tokenizer = build_tokenizer(args)
    caption = "snowboarding skateboarders " * 20
    assert len(tokenizer.encode(caption, torch.Generator().manual_seed(0))) <= 16
    assert len(tokenizer.encode(caption)) == 16
    assert tokenizer.count(caption) > 40


def test_only_captions_with_enough_characters_are_tokenized(tiny_toy):
    from lib.data.tokenizers import find_long_captions

    class Counting:
        max_length = 6
        calls = 0

        def count(self, caption):
            Counting.calls += 1
            return len(tokenize_words(caption)) + 2

    found = find_long_captions(["a b c d", "a dog, a cat.", "x" * 4], Counting(), "caps.txt")
    # 'a b c d' has 4 non-space characters (at most 4 tokens + 2): never tokenized
    assert (found.count, found.longest_line, found.longest_tokens) == (1, 2, 8)
    assert Counting.calls == 1


def test_a_missing_vocabulary_says_how_to_build_one(tiny_toy, tmp_path):
    data = _copy_as(tiny_toy, tmp_path, "f30k")
    (tmp_path / "vocab" / "f30k_precomp_vocab.json").unlink()
    args = parse_train_args(_train_args(data, tmp_path / "run"))
    with pytest.raises(DataError, match=r"vocabulary not found: .*f30k_precomp_vocab.json .*"
                                        r"python -m lib.data.vocab --captions"):
        train_cli.prepare_data(args)
