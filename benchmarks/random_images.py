"""``random``: random images of any size, for speed measurements only (nothing to learn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clbench.config import BenchmarkConfig, option
from clbench.data.datasets import TensorImageDataset
from clbench.registry import register_benchmark

from .base import Benchmark, BenchmarkData


@dataclass
class RandomImagesConfig(BenchmarkConfig):
    n_tasks: int = 20
    n_classes: int = option(200, "number of classes", ge=1)
    image_size: int = option(224, "height and width of the images in pixels", ge=1)
    train_per_class: int = option(4, "training images per class", ge=1)
    test_per_class: int = option(1, "test images per class", ge=1)


@register_benchmark("random")
class RandomImages(Benchmark):
    """Random uint8 images of any size (timing and memory measurements only; no signal)."""

    Config = RandomImagesConfig
    defaults = {"backbone.weights": "none"}

    def load(self, cfg: RandomImagesConfig) -> BenchmarkData:
        g = torch.Generator().manual_seed(0)

        def split(per_class: int) -> TensorImageDataset:
            n = per_class * cfg.n_classes
            images = torch.randint(0, 256, (n, 3, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8)
            return TensorImageDataset(images, np.repeat(np.arange(cfg.n_classes), per_class))

        return BenchmarkData(split(cfg.train_per_class), split(cfg.test_per_class),
                             [f"c{i}" for i in range(cfg.n_classes)], "random", "random")
