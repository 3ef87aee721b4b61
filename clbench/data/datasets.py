"""Labelled datasets as the engine sees them.

Every clbench dataset has ``targets`` (an int array of labels, readable without loading any
image), ``__len__``, ``__getitems__(indices) -> (images, labels)`` returning a collated
batch, and ``with_augment(flag)`` returning the same samples with the training or the
evaluation transform. Images come back as uint8 (converted to float in [0,1] on the compute
device, which keeps host-to-device copies small) or as float tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class LabelledDataset(Dataset):
    """Base class: a sized dataset with integer ``targets`` and batched access."""

    targets: np.ndarray
    augment: bool = False
    in_memory: bool = False  # True: batches are cheap slices; the loader uses no workers

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([index])
        return x[0], int(y[0])

    def with_augment(self, augment: bool) -> LabelledDataset:
        """The same samples with training (``True``) or evaluation transforms."""
        if augment == self.augment:
            return self
        other = copy.copy(self)
        other.augment = augment
        return other


BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class TensorImageDataset(LabelledDataset):
    """Images held in memory as one uint8 tensor (N, C, H, W).

    ``train_transform`` is applied to whole uint8 batches when ``augment`` is on; it must
    draw its randomness from torch's global generator so that seeding makes runs repeatable.
    """

    def __init__(self, images: torch.Tensor, targets: np.ndarray, train_transform: BatchTransform | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("TensorImageDataset expects a uint8 tensor of shape (N, C, H, W)")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.train_transform = train_transform
        self.in_memory = True

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]
        if self.augment and self.train_transform is not None:
            x = self.train_transform(x)
        return x, torch.from_numpy(self.targets[idx.numpy()])


class Relabelled(LabelledDataset):
    """A subset of ``base`` with labels mapped through ``label_map`` (original → new)."""

    def __init__(self, base: LabelledDataset, indices: np.ndarray, label_map: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_map = label_map
        self.targets = label_map[base.targets[self.indices]]
        self.augment = base.augment
        self.in_memory = base.in_memory

    def with_augment(self, augment: bool) -> Relabelled:
        if augment == self.augment:
            return self
        return Relabelled(self.base.with_augment(augment), self.indices, self.label_map)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base.__getitems__(self.indices[np.asarray(indices, dtype=np.int64)].tolist())
        return x, torch.from_numpy(self.label_map[y.numpy()])


def random_flip(batch: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of a random half of a batch (torch global RNG)."""
    flip = torch.rand(len(batch)) < 0.5
    out = batch.clone()
    out[flip] = out[flip].flip(-1)
    return out


def random_crop_flip(padding: int) -> BatchTransform:
    """Random crop after reflect-padding by ``padding`` pixels, then a random flip."""

    def transform(batch: torch.Tensor) -> torch.Tensor:
        n, _, h, w = batch.shape
        padded = torch.nn.functional.pad(batch.float(), (padding,) * 4, mode="reflect").to(batch.dtype)
        dx = torch.randint(0, 2 * padding + 1, (n,))
        dy = torch.randint(0, 2 * padding + 1, (n,))
        rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
        out = padded[torch.arange(n)[:, None, None, None], torch.arange(batch.shape[1])[None, :, None, None], rows, cols]
        return random_flip(out)

    return transform
