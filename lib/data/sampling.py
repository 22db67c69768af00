"""Each rank's share of the training batches and of an evaluation split (torchrun).

Every rank draws the same global batches from (seed, epoch) alone (``pairs.EpochBatchSampler``)
and takes its own contiguous slice of each. Laid end to end in rank order, the slices are
exactly the batch one process trains on, so N ranks see the batches of one process, and a
checkpoint resumes with any number of ranks, mid-epoch included.
"""

from __future__ import annotations

from torch.utils.data import DataLoader


class RankBatches:
    """Rank ``rank``'s slice of every ``(epoch, indices)`` key of a sampler of global batches
    (``pairs.EpochBatchSampler``); the whole key when ``world_size`` is 1."""

    def __init__(self, sampler, rank: int = 0, world_size: int = 1):
        if sampler.batch_size % world_size:
            raise ValueError(f"batch size {sampler.batch_size} does not split among "
                             f"{world_size} ranks")
        self.sampler = sampler
        self.local = sampler.batch_size // world_size
        self.first = rank * self.local  # where this rank's slice starts in a global batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch ``epoch`` from its global batch ``start`` on."""
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for epoch, indices in self.sampler:  # (batch_size,) indices
            yield epoch, indices[self.first:self.first + self.local]  # (local,)


class EpochLoader(DataLoader):
    """A per-item loader (raw images, decoded in worker processes) over the batches of
    ``keys`` (:class:`RankBatches`): its ``set_epoch(epoch, start)`` reaches both the batch
    order and the dataset's augmentation, the two things an epoch decides."""

    def __init__(self, dataset, keys: RankBatches, **kwargs):
        self.keys = keys
        super().__init__(dataset, batch_sampler=_Indices(keys), **kwargs)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.keys.set_epoch(epoch, start)
        self.dataset.set_epoch(epoch)


class _Indices:
    """The index lists of ``(epoch, indices)`` keys, as a DataLoader's ``batch_sampler``."""

    def __init__(self, keys: RankBatches):
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        for _, indices in self.keys:
            yield indices.tolist()


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``num_items`` (shares differ by at most one)."""
    return range(rank * num_items // world_size, (rank + 1) * num_items // world_size)
