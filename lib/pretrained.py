"""Where a BERT-family model comes from: a local folder (checked) or a hub name (reached fast).

``--bert_path`` is either a folder holding a Hugging Face model, or a hub name such as
``distilbert-base-uncased``. A folder is checked for what loading needs before transformers
sees it, so a wrong folder gives one line instead of a library's guess (an empty folder
otherwise reads as a malformed repository id, a folder without a tokenizer as a missing
sentencepiece). A hub name already in the local cache is loaded from there without any network
access; any other name is downloaded, after a connection check of a few seconds, so that an
offline machine fails at once rather than after a minute of retries.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import DataError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
CONNECT_TIMEOUT = 5.0  # seconds to reach the hub before giving up
HINT = "pass --bert_path with a local model folder (config.json, tokenizer and weights)"


@dataclass(frozen=True)
class PretrainedSource:
    """What ``from_pretrained`` gets: the name or folder, and whether to stay offline."""

    name_or_path: str
    local_files_only: bool


def resolve_pretrained(name_or_path: str, need_weights: bool = True,
                       need_tokenizer: bool = True) -> PretrainedSource:
    """Check a local folder, or find a hub name in the cache or make sure the hub answers."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _check_folder(path, need_weights, need_tokenizer)
        return PretrainedSource(str(path), local_files_only=True)
    if path.exists() or _looks_like_path(name_or_path):
        raise DataError(f"--bert_path {name_or_path}: no such model folder; {HINT}")
    if _cached(name_or_path):
        return PretrainedSource(name_or_path, local_files_only=True)
    _check_hub_reachable(name_or_path)
    return PretrainedSource(name_or_path, local_files_only=False)


def _check_folder(path: Path, need_weights: bool, need_tokenizer: bool) -> None:
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if need_tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if need_weights and not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[:2])})")
    if missing:
        raise DataError(f"--bert_path {path}: the folder lacks {', '.join(missing)}; {HINT}")


def _looks_like_path(text: str) -> bool:
    """Hub names are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and \
        os.sep in text


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _check_hub_reachable(name: str) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DataError(f"--bert_path {name}: not in the local cache and HF_HUB_OFFLINE is set; "
                        f"{HINT}")
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise DataError(f"--bert_path {name}: a hub name, but {url.hostname} cannot be reached "
                        f"to download it ({err.strerror or err}); {HINT}") from None
