"""Data-path speed: images per second of the file loader against the decoded cache.

``clbench data speed`` writes a synthetic ImageNet-R-like folder (photo-like JPEGs of
500x375, quality 90) or takes the files of a real benchmark, builds the decoded cache, and
times both loaders on the same files with the same pipeline: training transform
(RandomResizedCrop + flip) and evaluation transform (Resize + CenterCrop), in-process and
through DataLoader workers. Files are read once before timing, so both loaders read from the
page cache and the figures compare decoding and transforms, not the disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .cache import build_cache, open_split
from .datasets import LabelledDataset
from .images import ImageFileDataset
from .splits import Samples, SplitLists
from .transforms import Pipeline, pipeline


def synthetic_folder(root: Path, n_images: int, size: tuple[int, int] = (500, 375), n_classes: int = 10,
                     seed: int = 0) -> SplitLists:
    """Photo-like JPEGs (smooth colour fields plus noise) in ``root/<class>/``; all in 'train'."""
    rng = np.random.RandomState(seed)
    paths, targets, sizes = [], [], []
    for i in range(n_images):
        label = i % n_classes
        base = rng.randint(0, 256, (12, 16, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        rel = f"c{label:03d}/img_{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, "JPEG", quality=90)
        paths.append(rel)
        targets.append(label)
        sizes.append((root / rel).stat().st_size)
    train = Samples(root, paths, np.asarray(targets, dtype=np.int64), np.asarray(sizes, dtype=np.int64))
    empty = Samples(root, [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return SplitLists(train, empty, [f"c{c:03d}" for c in range(n_classes)], f"speed:synthetic:{n_images}:{size}", "speed")


def _identity(batch: Any) -> Any:
    return batch  # __getitems__ returns collated batches


def images_per_second(dataset: LabelledDataset, batch_size: int, workers: int, min_seconds: float = 2.0) -> float:
    """Steady-state throughput over repeated full passes (repeated until ``min_seconds``).

    With workers, one persistent loader serves every pass and a first untimed pass starts the
    workers, as in training, where a loader lives for a whole task.
    """
    if workers == 0:
        def one_pass() -> int:
            n = 0
            for lo in range(0, len(dataset), batch_size):
                n += len(dataset.__getitems__(list(range(lo, min(lo + batch_size, len(dataset)))))[0])
            return n
    else:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_identity,
                            shuffle=False, persistent_workers=True)

        def one_pass() -> int:
            return sum(len(x) for x, _ in loader)

        one_pass()  # start the workers
    n, start = 0, time.perf_counter()
    while True:
        n += one_pass()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def measure(lists: SplitLists, pipe: Pipeline, cache_root: Path, workers: list[int], batch_size: int = 64,
            min_seconds: float = 2.0, log=print) -> list[dict[str, Any]]:
    """Rows of (loader, transform, workers, images/s, speed-up of the cache over the files)."""
    samples = lists.train
    for p in samples.paths:  # warm the page cache: time decoding, not the disk
        (samples.root / p).read_bytes()
    start = time.perf_counter()
    directory, meta = build_cache("speed", lists, pipe, cache_root, workers=max(1, max(workers)))
    log(f"decoded cache: {meta['bytes'] / 1e6:.1f} MB for {len(samples)} images in {time.perf_counter() - start:.1f}s")
    files = ImageFileDataset(samples.root, samples.paths, samples.targets, pipe)
    cached, _ = open_split(directory, "train", samples, pipe)
    rows = []
    for augment in (True, False):
        for w in workers:
            torch.manual_seed(0)
            plain = images_per_second(files.with_augment(augment), batch_size, w, min_seconds)
            torch.manual_seed(0)
            fast = images_per_second(cached.with_augment(augment), batch_size, w, min_seconds)
            row = {"transform": "train" if augment else "eval", "workers": w, "files_img_s": round(plain, 1),
                   "cache_img_s": round(fast, 1), "speedup": round(fast / plain, 2)}
            log(f"  {row['transform']:5s} workers={w}: files {plain:8.1f} img/s, cache {fast:8.1f} img/s, x{fast / plain:.1f}")
            rows.append(row)
    return rows


def run(n_images: int = 512, size: tuple[int, int] = (500, 375), workers: list[int] | None = None,
        image_size: int = 224, transforms: str = "pilot", lists: SplitLists | None = None, min_seconds: float = 2.0,
        pipe: Pipeline | None = None, log=print) -> dict[str, Any]:
    """The whole measurement; on synthetic files unless ``lists`` (a real benchmark's, with its
    ``pipe``) is given."""
    workers = workers if workers is not None else [0]
    pipe = pipe or pipeline(transforms, image_size)
    with tempfile.TemporaryDirectory(prefix="clbench-speed-") as tmp:
        tmp_path = Path(tmp)
        if lists is None:
            log(f"writing {n_images} synthetic {size[0]}x{size[1]} JPEGs ...")
            lists = synthetic_folder(tmp_path / "images", n_images, size)
            source = f"synthetic {size[0]}x{size[1]} JPEG q90"
        else:
            keep = np.arange(min(n_images, len(lists.train)))
            lists = SplitLists(lists.train.subset(keep), lists.test.subset(np.zeros(0, dtype=np.int64)),
                               lists.class_names, lists.split_id + f":first={len(keep)}", lists.label_map_id)
            source = lists.split_id
        rows = measure(lists, pipe, tmp_path / "cache", workers, min_seconds=min_seconds, log=log)
    return {"source": source, "images": len(lists.train), "pipeline": pipe.describe(), "torch_threads": torch.get_num_threads(),
            "rows": rows}

