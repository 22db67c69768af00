"""Training batches built a whole batch at a time, and copied to the device ahead of the step.

The per-item pipeline (one caption per ``__getitem__``, then a collate) tokenized, drew random
numbers and read the memory map once per caption, and copied every region three times. Here:

* :class:`EpochBatchSampler` draws the epoch's permutation from (seed, epoch) alone and yields
  ``(epoch, caption indices)`` keys, each batch's indices sorted, so its images are read in
  file order;
* :class:`PairBatches` turns one key into a :class:`Batch`: token ids sliced from the captions
  tokenized once (``tokens.py``), region drop and caption augmentation drawn for the whole batch
  (``augment.py``), and the kept regions of every caption's image gathered from the memory map
  with one sorted index straight into the batch tensor, which lives in shared memory when a
  loader worker builds it (so it reaches the main process without a copy) and in page-locked
  memory when the main process builds it for a GPU;
* :class:`DevicePrefetcher` starts the next batch's host-to-device copy on a side CUDA stream
  while the current step computes.

Shapes are bucketed: regions are always padded to the split's ``R`` (``img_lens`` says how many
are real) and caption rows to a multiple of :data:`CAPTION_MULTIPLE`, so a compiled step meets few
shapes. A batch is a pure function of its key, so any number of workers yields the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .augment import augment_tokens, region_order, wrap_and_pad
from .batch import Batch
from .tokens import TokenizedCaptions

CAPTION_MULTIPLE = 8  # caption rows are padded to a multiple of this many tokens


@dataclass(frozen=True)
class CaptionFormat:
    """What a worker needs of the tokenizer to augment and wrap token ids (not the tokenizer)."""

    start_id: int
    end_id: int
    pad_id: int
    mask_id: int
    vocab_size: int
    max_length: int

    @classmethod
    def of(cls, tokenizer) -> CaptionFormat:
        return cls(tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id, tokenizer.mask_id,
                   tokenizer.vocab_size, tokenizer.max_length)


class EpochBatchSampler:
    """Full batches of caption indices; the order is a pure function of (seed, epoch).

    The global RNG is not touched, so resuming at an epoch boundary replays the same order, and
    batch ``k`` of an epoch can be produced without the ones before it.
    """

    def __init__(self, num_captions: int, batch_size: int, seed: int):
        self.num_captions, self.batch_size, self.seed = num_captions, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_captions // self.batch_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_captions)
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.epoch, np.sort(order[first:first + self.batch_size])


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An empty batch tensor where its next copy is cheapest: shared memory in a loader worker
    (the main process maps it instead of copying it), page-locked memory in the main process
    when batches go to a GPU (an asynchronous copy), ordinary memory otherwise."""
    if get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


class PairBatches(Dataset):
    """``(epoch, caption indices)`` -> the augmented :class:`Batch` of those captions.

    ``split`` must offer ``images().gather`` (precomputed region features do). ``region_drop``
    is the probability of dropping a region; captions are always augmented.
    """

    def __init__(self, split, tokens: TokenizedCaptions, caption_format: CaptionFormat,
                 region_drop: float = 0.0, seed: int = 0, pin: bool = False):
        self.split, self.tokens, self.format = split, tokens, caption_format
        self.region_drop, self.seed, self.pin = region_drop, seed, pin
        self.features = split.images()

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, key: tuple[int, np.ndarray]) -> Batch:
        epoch, captions = key
        images = np.asarray(self.split.image_of(captions), np.int64)  # (B,)
        images_t, img_lens = self._regions(epoch, captions, images)
        rows, cap_lens = self._captions(epoch, captions)
        return Batch(images_t, torch.from_numpy(img_lens), torch.from_numpy(rows),
                     torch.from_numpy(cap_lens), torch.from_numpy(captions),
                     torch.from_numpy(images))

    def _regions(self, epoch: int, captions: np.ndarray, images: np.ndarray):
        """``(B, R, img_dim)`` kept regions first, zeros after, and ``(B,)`` kept counts."""
        num_regions = self.features.num_regions
        available = np.full(len(captions), num_regions)
        order, kept = region_order(self.seed, epoch, captions, available, num_regions,
                                   self.region_drop)
        out = batch_buffer((len(captions), num_regions, self.split.feature_dim), torch.float32,
                           self.pin)
        self.features.gather(images, order, kept, out)
        return out, kept

    def _captions(self, epoch: int, captions: np.ndarray):
        """``(B, L)`` augmented, wrapped and padded token ids and ``(B,)`` lengths."""
        f = self.format
        ids, starts, lengths = self.tokens.select(captions)
        ids, lengths = augment_tokens(self.seed, epoch, captions, ids, starts, lengths,
                                      f.mask_id, f.vocab_size)
        return wrap_and_pad(ids, lengths, f.start_id, f.end_id, f.pad_id, f.max_length,
                            CAPTION_MULTIPLE)


class TrainBatches:
    """The training loader: :class:`PairBatches` keyed by :class:`EpochBatchSampler`, each
    worker building whole batches.

    Workers persist across epochs (the epoch travels in each key), and the loader draws its
    worker seeds from a generator of its own, so loading never consumes the global RNG that
    dropout and a resumed run depend on.
    """

    def __init__(self, dataset: PairBatches, sampler: EpochBatchSampler, workers: int,
                 pin: bool):
        self.dataset, self.sampler = dataset, sampler
        self.loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                                 pin_memory=pin, persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(sampler.seed))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


class DevicePrefetcher:
    """Batches of ``loader`` on ``device``. On CUDA the next batch's copy is issued on a side
    stream before the current batch is handed out, so it overlaps the current step; elsewhere
    each batch is moved when it is reached."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.device.type != "cuda":
            for batch in self.loader:
                yield batch.to(self.device)
            return
        stream = torch.cuda.Stream(self.device)
        batches = iter(self.loader)
        ahead = self._copy(next(batches, None), stream)
        while ahead is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)
            for f in fields(ahead):  # the memory was allocated on the side stream
                getattr(ahead, f.name).record_stream(current)
            batch, ahead = ahead, self._copy(next(batches, None), stream)
            yield batch

    def _copy(self, batch, stream):
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return batch.to(self.device, non_blocking=True)
