"""Training batches built a whole batch at a time, and copied to the device ahead of the step.

The per-item pipeline (one caption per ``__getitem__``, then a collate) tokenized, drew random
numbers and read the memory map once per caption, and copied every region three times. Here:

* :class:`EpochBatchSampler` draws the epoch's permutation from (seed, epoch) alone and yields
  ``(epoch, caption indices)`` keys, each batch's indices sorted, so its images are read in
  file order;
* :class:`PairBatches` turns one key into a :class:`Batch`: token ids sliced from the captions
  tokenized once (``tokens.py``), region drop and caption augmentation drawn for the whole batch
  (``augment.py``), and the kept regions of every caption's image gathered from the memory map
  with one sorted index straight into the batch tensor, in page-locked memory when batches go
  to a GPU;
* :class:`TrainBatches` builds batches ahead in ``--workers`` threads of the training process.
  Threads, not loader processes: almost all of a batch is that one gather, which a thread
  writes where the batch will be used, while a worker process would write it to shared memory
  and the main process copy it once more (and fresh shared memory is faulted in 4 KB pages:
  that alone cost ~35 ms per 128 pairs on the 2-core test machine). The gather releases the
  GIL;
* :class:`DevicePrefetcher` starts the next batch's host-to-device copy on a side CUDA stream
  while the current step computes.

Shapes are bucketed: regions are always padded to the split's ``R`` (``img_lens`` says how many
are real) and caption rows to a multiple of :data:`CAPTION_MULTIPLE`, so a compiled step meets few
shapes. A batch is a pure function of its key, so any number of workers yields the same batches.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from itertools import islice

import numpy as np
import torch

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
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch ``epoch`` from its batch ``start`` on (a run resumed mid-epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_captions // self.batch_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_captions)
        for first in range(self.start * self.batch_size, len(self) * self.batch_size,
                           self.batch_size):
            yield self.epoch, np.sort(order[first:first + self.batch_size])


def batch_buffer(shape: tuple[int, ...], pin: bool) -> torch.Tensor:
    """An empty float32 batch tensor. Page-locked when batches go to a GPU (an asynchronous
    copy; torch's pinned allocator reuses blocks once their copy is done); otherwise numpy's
    memory, which numpy backs with huge pages: a fresh 38 MB batch then costs a few dozen page
    faults instead of the ~9,000 of ``torch.empty``'s 4 KB pages."""
    if pin:
        return torch.empty(shape, pin_memory=True)
    return torch.from_numpy(np.empty(shape, np.float32))


class PairBatches:
    """``(epoch, caption indices)`` -> the augmented :class:`Batch` of those captions.

    ``split`` must offer ``images().gather`` (precomputed region features do). ``region_drop``
    is the probability of dropping a region; ``augment_captions`` turns the word augmentation
    on; ``pin``: page-locked batches, for a GPU.
    """

    def __init__(self, split, tokens: TokenizedCaptions, caption_format: CaptionFormat,
                 region_drop: float = 0.0, augment_captions: bool = True, seed: int = 0,
                 pin: bool = False):
        self.split, self.tokens, self.format = split, tokens, caption_format
        self.region_drop, self.augment_captions = region_drop, augment_captions
        self.seed, self.pin = seed, pin
        self.features = split.images()

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, key: tuple[int, np.ndarray]) -> Batch:
        epoch, captions = key
        images = np.asarray(self.split.image_of(captions), np.int64)  # (B,)
        images_t, img_lens = self._regions(epoch, captions, images)
        rows, cap_lens = self._captions(epoch, captions)
        small = [torch.from_numpy(a) for a in (img_lens, rows, cap_lens, captions, images)]
        if self.pin:
            small = [t.pin_memory() for t in small]
        return Batch(images_t, *small)

    def _regions(self, epoch: int, captions: np.ndarray, images: np.ndarray):
        """``(B, R, img_dim)`` kept regions first, zeros after, and ``(B,)`` kept counts."""
        num_regions = self.features.num_regions
        available = np.full(len(captions), num_regions)
        order, kept = region_order(self.seed, epoch, captions, available, num_regions,
                                   self.region_drop)
        out = batch_buffer((len(captions), num_regions, self.split.feature_dim), self.pin)
        self.features.gather(images, order, kept, out)
        return out, kept

    def _captions(self, epoch: int, captions: np.ndarray):
        """``(B, L)`` augmented, wrapped and padded token ids and ``(B,)`` lengths."""
        f = self.format
        ids, starts, lengths = self.tokens.select(captions)
        if self.augment_captions:
            ids, lengths = augment_tokens(self.seed, epoch, captions, ids, starts, lengths,
                                          f.mask_id, f.vocab_size)
        return wrap_and_pad(ids, lengths, f.start_id, f.end_id, f.pad_id, f.max_length,
                            CAPTION_MULTIPLE)


class TrainBatches:
    """The training loader: :class:`PairBatches` of the keys of :class:`EpochBatchSampler`, up to
    ``2 * workers`` batches built ahead by ``workers`` threads (0: built when reached), handed
    out in the sampler's order. Each batch is a pure function of its key, so the number of
    workers changes nothing but the speed, and the global RNG is never used."""

    def __init__(self, dataset: PairBatches, sampler: EpochBatchSampler, workers: int):
        self.dataset, self.sampler, self.workers = dataset, sampler, workers

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        keys = iter(self.sampler)
        if self.workers == 0:
            yield from map(self.dataset.__getitem__, keys)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="batches")
        try:
            ahead = deque(pool.submit(self.dataset.__getitem__, key)
                          for key in islice(keys, 2 * self.workers))
            while ahead:
                batch = ahead.popleft().result()
                ahead.extend(pool.submit(self.dataset.__getitem__, key)
                             for key in islice(keys, 1))
                yield batch
        finally:  # also when the consumer stops early
            pool.shutdown(cancel_futures=True)


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
