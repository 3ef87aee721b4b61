"""Datasets of image files (decoded with PIL every time) and of in-memory uint8 arrays.

Both apply a :class:`~clbench.data.transforms.Pipeline` per sample and return collated uint8
batches (N, C, H, W). An image that cannot be read raises :class:`BadImageError`, a
:class:`~clbench.errors.DataError` that names the file and the fix, also from inside a
data-loader worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .datasets import LabelledDataset
from .transforms import Pipeline, to_chw_batch

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(DataError):
    """An image file that is missing, truncated or not an image."""

    def __init__(self, message: str, problem: str | None = None):
        self.problem = problem or message  # short reason, without the fix
        # A DataLoader worker re-raises as ``type(exc)(text with the worker's traceback)``;
        # keep only our own message so the CLI prints one clear paragraph.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def bad_image_fix(benchmark: str = "<benchmark>") -> str:
    return (f"Replace or delete the file; 'clbench data check {benchmark}' lists every unreadable image, "
            f"and --set benchmark.skip_bad_images=true leaves such files out of the run (recorded in the run record).")


def open_rgb(path: str | os.PathLike, benchmark: str = "<benchmark>") -> Image.Image:
    """Open and fully decode an image as RGB (what the reference loaders do)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"Image file {path} is missing. {bad_image_fix(benchmark)}", "file missing") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise BadImageError(f"Cannot decode image {path} ({problem}). {bad_image_fix(benchmark)}", problem) from None


def image_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes."""
    try:
        open_rgb(path)
    except BadImageError as exc:
        return exc.problem
    return None


class ImageFileDataset(LabelledDataset):
    """Image files under ``root`` (relative ``paths``), decoded with PIL on every access."""

    in_memory = False

    def __init__(self, root: str | Path, paths: Sequence[str], targets: np.ndarray, pipeline: Pipeline,
                 benchmark: str = "<benchmark>"):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} labels")
        self.root = str(root)
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.pipeline = pipeline
        self.benchmark = benchmark

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        transform = self.pipeline.train_pil if self.augment else self.pipeline.eval_pil
        images = [transform(open_rgb(os.path.join(self.root, self.paths[i]), self.benchmark)) for i in indices]
        return to_chw_batch(images), torch.from_numpy(self.targets[np.asarray(indices, dtype=np.int64)])


class ArrayImageDataset(LabelledDataset):
    """Decoded uint8 HWC images in memory (e.g. CIFAR), transformed per sample through PIL.

    ``in_memory`` stays False: at 224 pixels the per-sample transforms cost enough that
    loader workers pay off.
    """

    in_memory = False

    def __init__(self, images: np.ndarray, targets: np.ndarray, pipeline: Pipeline):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError("ArrayImageDataset expects uint8 images of shape (N, H, W, 3)")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.pipeline = pipeline

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        transform = self.pipeline.train_pil if self.augment else self.pipeline.eval_pil
        images = [transform(Image.fromarray(self.images[i])) for i in indices]
        return to_chw_batch(images), torch.from_numpy(self.targets[np.asarray(indices, dtype=np.int64)])
