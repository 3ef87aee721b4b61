"""Data loading for the trainer: shuffled, resumable training batches, unpadded evaluation
shards, per-rank augmentation randomness and prefetching to the compute device."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from ..data.datasets import LabelledDataset
from .dist import SingleProcess
from .runtime import data_workers

Batch = tuple[torch.Tensor, ...]
WORKER_SEED_STRIDE = 7919  # ranks' loader-worker seeds differ by this prime


def _collate(batch: Any) -> Any:
    return batch  # datasets return collated batches from __getitems__


class TaskBatches(Sampler[list[int]]):
    """This rank's batches of one epoch of a task's training data, resumable at any batch.

    The epoch's order is ``torch.randperm`` seeded with ``seed + epoch``, the same on every
    rank (torch's :class:`DistributedSampler`, ``set_epoch`` per epoch); rank ``r`` takes every
    ``world``-th sample, so the ranks' ``k``-th batches together are the ``k``-th global
    batch of a one-process run. :meth:`start` skips batches without loading them.
    """

    def __init__(self, dataset: LabelledDataset, batch_size: int, seed: int, rank: int, world: int, drop_last: bool):
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.batches = BatchSampler(self.sampler, batch_size, drop_last)
        self.seed = seed
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    @property
    def per_epoch(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


class Loaders:
    """Builds this rank's loaders and moves their batches to the compute device.

    Workers persist across the epochs of a loader (a task's training loader lives for the
    task); batches are pinned on CUDA and copied to the device ahead of use on a side stream.
    Under DDP, augmentation draws come from this rank's own RNG, so the model's randomness on
    torch's global generator stays the same on every rank.
    """

    def __init__(self, dist: SingleProcess, device: torch.device, num_workers: int | str, data_seed: int):
        self.dist = dist
        self.device = device
        self.num_workers = num_workers
        self.data_rng = torch.Generator().manual_seed(data_seed).get_state()

    def _loader(self, dataset: LabelledDataset, **kwargs: Any) -> DataLoader:
        workers = data_workers(self.num_workers, dataset.in_memory, self.dist.world_size)
        # an own generator for the loader's worker seed keeps the global RNG untouched
        return DataLoader(dataset, num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.dist.rank),
                          **kwargs)

    def training(self, dataset: LabelledDataset, batch_size: int, seed: int, drop_last: bool) -> DataLoader:
        """Shuffled batches of this rank (call :meth:`epoch` per epoch)."""
        sampler = TaskBatches(dataset, batch_size, seed, self.dist.rank, self.dist.world_size, drop_last)
        return self._loader(dataset, batch_sampler=sampler)

    def evaluation(self, dataset: LabelledDataset, batch_size: int) -> DataLoader:
        """This rank's unpadded shard of ``dataset``, in order."""
        return self._loader(dataset, batch_size=batch_size, sampler=self.dist.shard(len(dataset)))

    def epoch(self, loader: DataLoader, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Epoch ``epoch`` of a training loader, from batch ``skip`` on, on the device."""
        sampler: TaskBatches = loader.batch_sampler
        sampler.start(epoch, skip)
        loader.generator.manual_seed(sampler.seed + epoch + WORKER_SEED_STRIDE * self.dist.rank)
        return self.on_device(self.fetch(loader))

    def fetch(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        """The loader's batches; under DDP, augmentation draws from this rank's own RNG."""
        if self.dist.world_size == 1:
            yield from loader
            return
        it = iter(loader)
        while True:
            model_rng = torch.get_rng_state()
            torch.set_rng_state(self.data_rng)
            try:
                batch = next(it, None)
            finally:
                self.data_rng = torch.get_rng_state()
                torch.set_rng_state(model_rng)
            if batch is None:
                return
            yield batch

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the compute device; uint8 images become float in [0, 1] there."""
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, y.to(self.device, non_blocking=True)

    def on_device(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """``batches`` on the compute device; on CUDA the next batch is copied on a side
        stream while the current one is used (pinned memory, non-blocking copies)."""
        if self.device.type != "cuda":
            for x, y in batches:
                yield self.to_device(x, y)
            return
        copy_stream = torch.cuda.Stream(self.device)
        ready: Batch | None = None
        for x, y in batches:
            with torch.cuda.stream(copy_stream):
                moved = self.to_device(x, y)
            if ready is not None:
                yield ready
            torch.cuda.current_stream(self.device).wait_stream(copy_stream)
            for tensor in moved:  # the tensors are used on the compute stream from now on
                tensor.record_stream(torch.cuda.current_stream(self.device))
            ready = moved
        if ready is not None:
            yield ready
