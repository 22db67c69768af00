"""Data: SCAN precomp splits, tokenizers, loaders, and the embedded toy dataset.

``build_dataset(kind, data_path, split)`` opens one split of a dataset; the loaders turn it into
batches (``batch.py``). A split is described by ``captions`` (list of str), ``num_images``,
``num_captions``, ``image_of(caption_index)``, ``feature_dim`` and ``images()`` (a reader of one
image's ``(R, img_dim)`` features by index, picklable into loader workers; for training batches
it also offers ``num_regions`` and ``gather``, see ``pairs.py``). A new kind of data
is a function returning such a description, added to :data:`DATASET_KINDS`. Raw images
(``images.py``, kind ``"images"``) have their own datasets, since decoding and augmentation
need the pixels, and yield the same batch classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .batch import Batch, CaptionBatch, ImageBatch
from .images import (
    ImagePairCollate,
    ImagePairDataset,
    ImageSplit,
    RawImageDataset,
    collate_raw_images,
    open_images,
)
from .naming import check_vocab_coverage, check_vocab_name, dataset_name
from .pairs import CaptionFormat, EpochBatchSampler, PairBatches, TrainBatches
from .precomp import (
    SPLITS,
    CaptionCollate,
    CaptionDataset,
    DataError,
    ImageDataset,
    PrecompSplit,
    collate_images,
    open_split,
)
from .sampling import EpochLoader, RankBatches, shard_range
from .tokenizers import VocabTokenizer, WordPieceTokenizer, find_long_captions, resolve_vocab_file
from .tokens import tokenize_captions
from .vocab import Vocabulary

log = logging.getLogger(__name__)

__all__ = [
    "SPLITS", "DATASET_KINDS", "Batch", "CaptionBatch", "ImageBatch", "DataError", "PrecompSplit",
    "ImageSplit", "build_dataset", "open_split", "build_tokenizer", "load_vocab", "train_loader",
    "eval_loaders", "Vocabulary", "dataset_name",
]


# kind -> opener(data_path, split, img_dim) of a split description; "images": raw images for
# the backbone grid encoder (images.py)
DATASET_KINDS = {"precomp": open_split, "images": open_images}


def build_dataset(kind: str, data_path: str | Path, split: str, img_dim: int | None = None):
    """Open split ``split`` of the ``kind`` dataset at ``data_path``; ``img_dim``, when given, is
    the expected feature width. Raises :class:`DataError` naming the bad file."""
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(DATASET_KINDS)}")
    return DATASET_KINDS[kind](data_path, split, img_dim)


def load_vocab(vocab_path: str, data_name: str, train_split: PrecompSplit | None = None
               ) -> Vocabulary:
    """The BiGRU vocabulary of ``data_name``; refused when its file is named after another data
    set or when it leaves most words of ``train_split``'s captions unknown."""
    path = resolve_vocab_file(vocab_path, data_name)
    check_vocab_name(path, data_name)
    vocab = Vocabulary.load(path)
    if train_split is not None:
        check_vocab_coverage(vocab, path, train_split.captions, train_split.caps_path)
    return vocab


def build_tokenizer(args, vocab: Vocabulary | None = None):
    """The caption tokenizer for ``args.text_enc_type`` (a vocabulary is needed for BiGRU)."""
    if args.text_enc_type == "bigru":
        if vocab is None:
            raise ValueError("the BiGRU text encoder needs a vocabulary (--vocab_path)")
        return VocabTokenizer(vocab, max_length=args.max_caption_tokens)
    if not args.bert_path:
        raise DataError("--text_enc_type bert needs a model: --bert_path /local/folder, or a hub "
                        "name such as distilbert-base-uncased (downloaded), or --config NAME")
    return WordPieceTokenizer(args.bert_path, max_length=args.max_caption_tokens)


def report_long_captions(split: PrecompSplit | ImageSplit, tokenizer) -> int:
    """Log once how many captions of ``split`` the tokenizer cuts; returns that count."""
    found = find_long_captions(split.captions, tokenizer, split.caps_path)
    if found.count:
        log.warning("%s", found)
    return found.count


def train_loader(args, tokenizer, split: PrecompSplit | ImageSplit, rank: int = 0,
                 world_size: int = 1) -> TrainBatches | EpochLoader:
    """Training batches of ``split``, drawn from (seed, epoch); with ``world_size`` ranks
    (torchrun), this rank's slice of each (``sampling.py``). Region features: built a batch at
    a time (``pairs.py``) from captions tokenized once (cached in ``--token_cache`` when
    given). Raw images: item by item in loader processes, which decode and augment the pixels.

    ``--drop`` switches caption augmentation and region drop together, as CHAN's flag does; raw
    images are always cropped and flipped, their cells dropped by the grid encoder.
    """
    report_long_captions(split, tokenizer)
    sampler = EpochBatchSampler(split.num_captions, args.batch_size, args.seed)
    keys = RankBatches(sampler, rank, world_size)
    if isinstance(split, ImageSplit):
        dataset = ImagePairDataset(split, tokenizer, train=True, image_size=args.image_size,
                                   seed=args.seed, augment_captions=args.drop)
        return EpochLoader(dataset, keys, num_workers=args.workers,
                           collate_fn=ImagePairCollate(tokenizer.pad_id),
                           pin_memory=torch.cuda.is_available())
    cache = check_token_cache(args.token_cache, args.data_path)
    tokens = tokenize_captions(split.captions, tokenizer, cache)
    dataset = PairBatches(split, tokens, CaptionFormat.of(tokenizer),
                          region_drop=args.obj_drop_rate if args.drop else 0.0,
                          augment_captions=args.drop, seed=args.seed,
                          pin=torch.cuda.is_available())
    return TrainBatches(dataset, keys, args.workers)


def check_token_cache(cache: str | None, data_path: str) -> str | None:
    """``--token_cache``, refused inside the data folder: nothing is written there."""
    if cache and Path(cache).resolve().is_relative_to(Path(data_path).resolve()):
        raise DataError(f"--token_cache {cache} is inside the data folder {data_path}; "
                        f"name a folder outside it (the data is only read)")
    return cache


def eval_loaders(data_path: str, split_name: str, img_dim: int | None, tokenizer,
                 batch_size: int, workers: int, kind: str = "precomp",
                 image_size: int | None = None, shard: tuple[int, int] = (0, 1)
                 ) -> tuple[DataLoader, DataLoader, object]:
    """Loaders over the split's images (each once) and captions (in file order).
    ``image_size``: the network input side, for raw images (``kind="images"``).

    ``shard = (rank, world_size)``: only this rank's contiguous share of the images and of the
    captions, so that the shares of all ranks, in rank order, are the whole split.
    """
    split = build_dataset(kind, data_path, split_name, img_dim)
    report_long_captions(split, tokenizer)
    if isinstance(split, ImageSplit):
        images, collate = RawImageDataset(split, image_size), collate_raw_images
    else:
        images, collate = ImageDataset(split), collate_images
    captions = CaptionDataset(split, tokenizer)
    if shard[1] > 1:
        images, captions = (Subset(data, shard_range(len(data), *shard))
                            for data in (images, captions))
    images = DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    captions = DataLoader(captions, batch_size=batch_size, num_workers=workers,
                          collate_fn=CaptionCollate(tokenizer.pad_id))
    return images, captions, split
