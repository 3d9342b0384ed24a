"""The training loader: worker processes decode uint8 batches into shared memory; the training
device does the augmentation (:mod:`alexnet.data.augment`).

Each process reads its own slice of one global shuffle keyed by (seed, epoch), so the samples a
global batch holds do not depend on the number of processes or workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from alexnet.data.format import PreparedDataset


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N×3×H×W
    labels: torch.Tensor  # int64 N
    indices: torch.Tensor  # int64 N, positions in the dataset (the augmentation's key)

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory())


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """One global shuffle per (seed, epoch), the same in every process."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, unpadded shard of ``indices`` for ``rank`` (every element in exactly one shard)."""
    return np.array_split(indices, world_size)[rank]


class _BatchReader(Dataset):
    """Maps a list of dataset indices to a decoded Batch; what DataLoader workers run."""

    def __init__(self, ds: PreparedDataset, batches: list[np.ndarray]) -> None:
        self.ds = ds
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Batch:
        idx = self.batches[b]
        h, w = self.ds.image_size
        out = torch.empty((len(idx), 3, h, w), dtype=torch.uint8)
        if get_worker_info() is not None:
            out.share_memory_()  # decode straight into shared memory: no copy when sent back
        self.ds.read_batch(idx, out=out)
        return Batch(out, torch.from_numpy(self.ds.labels[idx].astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))


def _identity(b: Batch) -> Batch:
    return b


def default_workers(ds: PreparedDataset) -> int:
    # Raw records are one memmap gather per batch: worker processes only add overhead.
    if ds.encoding == "raw":
        return 0
    return max(1, min(16, (os.cpu_count() or 2) - 1))


class BatchLoader:
    """Iterates Batches of one epoch.

    ``batch_size`` is the global batch; with ``world_size`` processes each yields its share.
    Training (``shuffle=True``) drops the last partial batch; evaluation keeps every sample
    exactly once (no padding, no duplicates). ``start_batch`` skips ahead inside an epoch
    (exact resume).
    """

    def __init__(
        self,
        ds: PreparedDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        workers: int = -1,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        limit_batches: int = 0,
        subset: int = 0,
    ) -> None:
        if batch_size % world_size:
            from alexnet.errors import UserError

            raise UserError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        self.ds = ds
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.workers = default_workers(ds) if workers < 0 else workers
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.limit_batches = limit_batches
        self.n = min(subset, len(ds)) if subset > 0 else len(ds)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            order = epoch_permutation(self.n, self.seed, self.epoch)
            nb = self.n // self.batch_size  # drop_last: every step sees a full batch
            batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(nb)]
        else:
            # Evaluation: this process's contiguous shard, in order, every sample once.
            mine = shard(np.arange(self.n), self.rank, self.world_size)
            per = max(1, self.batch_size // self.world_size)
            return [mine[i : i + per] for i in range(0, len(mine), per)]
        if self.limit_batches > 0:
            batches = batches[: self.limit_batches]
        per = self.batch_size // self.world_size
        return [b[self.rank * per : (self.rank + 1) * per] for b in batches]

    def __len__(self) -> int:
        return len(self.global_batches())

    def iterate(self, start_batch: int = 0) -> Iterator[Batch]:
        batches = self.global_batches()[start_batch:]
        if not batches:
            return iter(())
        reader = _BatchReader(self.ds, batches)
        if self.workers == 0:
            return (reader[i] for i in range(len(reader)))
        return iter(
            DataLoader(
                reader, batch_size=None, shuffle=False, num_workers=self.workers, collate_fn=_identity,
                pin_memory=self.pin_memory, persistent_workers=False, prefetch_factor=4,
                multiprocessing_context="fork" if os.name == "posix" else None,
            )
        )

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()
