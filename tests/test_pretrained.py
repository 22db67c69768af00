"""--bert_path: a local folder is checked before loading; a hub name fails fast offline."""

import re
import shutil
import time

import pytest

import lib.pretrained as pretrained
from lib.data import DataError
from lib.data.tokenizers import WordPieceTokenizer
from lib.models.text import BertTextEncoder
from lib.pretrained import resolve_pretrained


def _partial_copy(minilm_path, folder, keep):
    folder.mkdir()
    for name in keep:
        shutil.copy(f"{minilm_path}/{name}", folder / name)
    return folder


def test_a_complete_folder_loads_offline(minilm_path):
    source = resolve_pretrained(minilm_path)
    assert source.local_files_only and source.name_or_path == minilm_path


@pytest.mark.parametrize("keep, lacks", [
    ((), "config.json, a tokenizer"),
    (("config.json", "model.safetensors"), "a tokenizer (tokenizer.json or vocab.txt)"),
    (("config.json", "tokenizer.json"), "weights (model.safetensors or pytorch_model.bin)"),
])
def test_an_incomplete_folder_is_named(minilm_path, tmp_path, keep, lacks):
    folder = _partial_copy(minilm_path, tmp_path / "model", keep)
    with pytest.raises(DataError, match=re.escape(f"--bert_path {folder}: the folder lacks "
                                                  f"{lacks}")):
        WordPieceTokenizer(str(folder)) if "tokenizer" in lacks else BertTextEncoder(
            str(folder), 16)


def test_weights_are_not_needed_when_a_checkpoint_provides_them(minilm_path, tmp_path):
    folder = _partial_copy(minilm_path, tmp_path / "model", ["config.json", "tokenizer.json"])
    encoder = BertTextEncoder(str(folder), 16, pretrained=False)
    assert encoder.linear.out_features == 16
    assert WordPieceTokenizer(str(folder)).pad_id == 0


def test_a_missing_folder_is_not_taken_for_a_hub_name(tmp_path):
    with pytest.raises(DataError, match="no such model folder"):
        resolve_pretrained(str(tmp_path / "models" / "bert"))
    with pytest.raises(DataError, match="no such model folder"):
        resolve_pretrained("./bert-base-uncased")


def test_an_unreachable_hub_fails_within_seconds(monkeypatch):
    calls = []

    def unreachable(address, timeout):
        calls.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(pretrained, "_cached", lambda name: False)
    monkeypatch.setattr(pretrained.socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"--bert_path bert-base-uncased: a hub name, but "
                                        r"huggingface.co cannot be reached .*Network is "
                                        r"unreachable.*pass --bert_path with a local model"):
        resolve_pretrained("bert-base-uncased")
    assert time.perf_counter() - start < 1
    assert calls == [(("huggingface.co", 443), pretrained.CONNECT_TIMEOUT)]


def test_a_cached_hub_name_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(pretrained, "_cached", lambda name: name == "distilbert-base-uncased")
    monkeypatch.setattr(pretrained.socket, "create_connection", no_network)
    source = resolve_pretrained("distilbert-base-uncased")
    assert source.local_files_only and source.name_or_path == "distilbert-base-uncased"
