"""Data: SCAN precomp splits, tokenizers, loaders, and the embedded toy dataset."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .batch import Batch, CaptionBatch, ImageBatch
from .precomp import (
    SPLITS,
    CaptionCollate,
    CaptionDataset,
    DataError,
    ImageDataset,
    PairCollate,
    PairDataset,
    PrecompSplit,
    collate_images,
    open_split,
)
from .tokenizers import VocabTokenizer, WordPieceTokenizer, resolve_vocab_file
from .vocab import Vocabulary

__all__ = [
    "SPLITS", "Batch", "CaptionBatch", "ImageBatch", "DataError", "PrecompSplit", "open_split", "build_tokenizer", "load_vocab",
    "train_loader", "eval_loaders", "Vocabulary",
]


def load_vocab(vocab_path: str, data_name: str) -> Vocabulary:
    return Vocabulary.load(resolve_vocab_file(vocab_path, data_name))


def build_tokenizer(args, vocab: Vocabulary | None = None):
    """The caption tokenizer for ``args.text_enc_type`` (a vocabulary is needed for BiGRU)."""
    if args.text_enc_type == "bigru":
        if vocab is None:
            raise ValueError("the BiGRU text encoder needs a vocabulary (--vocab_path)")
        return VocabTokenizer(vocab)
    if not args.bert_path:
        raise DataError("--text_enc_type bert needs a model: --bert_path /local/folder, or a hub "
                        "name such as distilbert-base-uncased (downloaded), or --config NAME")
    return WordPieceTokenizer(args.bert_path, max_length=args.max_caption_tokens)


def train_loader(args, tokenizer, split: PrecompSplit) -> DataLoader:
    dataset = PairDataset(split, tokenizer, train=True,
                          region_drop=args.obj_drop_rate if args.drop else 0.0, seed=args.seed)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      num_workers=args.workers, collate_fn=PairCollate(tokenizer.pad_id),
                      pin_memory=torch.cuda.is_available())


def eval_loaders(data_path: str, split_name: str, img_dim: int, tokenizer, batch_size: int,
                 workers: int) -> tuple[DataLoader, DataLoader, PrecompSplit]:
    """Loaders over the split's images (each once) and captions (in file order)."""
    split = open_split(data_path, split_name, img_dim)
    images = DataLoader(ImageDataset(split), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_images)
    captions = DataLoader(CaptionDataset(split, tokenizer), batch_size=batch_size,
                          num_workers=workers, collate_fn=CaptionCollate(tokenizer.pad_id))
    return images, captions, split
