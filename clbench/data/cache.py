"""The decoded cache: every image decoded once, resized, and packed into one uint8 file.

``clbench data prepare`` decodes each image of a split with PIL, applies the pipeline's eval
resize (shorter side to ``resize``, e.g. 256, with the pipeline's filter), and appends the
HWC bytes to ``<split>.u8``; ``<split>.index.npy`` holds one row per file: byte offset,
stored height and width, original height and width (offset -1: the file could not be
decoded). ``meta.json`` describes the cache. Runs memory-map the file, so loading a batch is a
slice plus a crop/resize, with no JPEG decoding (:class:`CachedImageDataset`).

A cache is identified by the benchmark, the split id, the file list with file sizes, and the
stored resize; a changed dataset or another pipeline simply has another key. Caches live
under ``benchmark.cache_dir``, ``$CLBENCH_CACHE_DIR`` or ``~/.cache/clbench/data``, never in the
dataset directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .datasets import LabelledDataset
from .images import BadImageError, open_rgb
from .splits import Samples, SplitLists, digest
from .transforms import Pipeline, to_chw_batch

CACHE_FORMAT = 1
ENV_CACHE_DIR = "CLBENCH_CACHE_DIR"


def cache_root(configured: str | None = None) -> Path:
    """Where caches live: the configured directory, ``$CLBENCH_CACHE_DIR``, or ``~/.cache/clbench/data``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path.home() / ".cache" / "clbench" / "data"


def cache_key(benchmark: str, lists: SplitLists, pipe: Pipeline) -> str:
    """Identity of a cache: benchmark, split, files (names, labels, sizes) and stored resize."""
    parts = [benchmark, lists.split_id, CACHE_FORMAT, pipe.resize, pipe.eval_interp]
    for s in (lists.train, lists.test):
        parts += [s.paths, s.targets, s.sizes]
    return digest(*parts, n=16)


def cache_dir(root: Path, benchmark: str, lists: SplitLists, pipe: Pipeline) -> Path:
    return root / benchmark / cache_key(benchmark, lists, pipe)


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The cache's ``meta.json`` if the cache is complete, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


class CachedImageDataset(LabelledDataset):
    """Images from a decoded cache file (memory-mapped; reopened lazily in every worker)."""

    in_memory = False

    def __init__(self, data_file: Path, index: np.ndarray, targets: np.ndarray, pipeline: Pipeline):
        if len(index) != len(targets):
            raise ValueError(f"{len(index)} index rows but {len(targets)} labels")
        self.data_file = str(data_file)
        self.index = np.asarray(index, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.pipeline = pipeline
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_data"] = None  # never pickle the mapping (spawned workers map the file again)
        return state

    def _mapped(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.data_file, dtype=np.uint8, mode="r")
        return self._data

    def image(self, i: int) -> np.ndarray:
        """The stored HWC image of sample ``i``."""
        offset, h, w = self.index[i, :3]
        return self._mapped()[offset:offset + h * w * 3].reshape(h, w, 3)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipeline
        if self.augment:
            images = [pipe.train_cached(self.image(i), int(self.index[i, 3]), int(self.index[i, 4])) for i in indices]
        else:
            images = [pipe.eval_cached(self.image(i)) for i in indices]
        return to_chw_batch(images), torch.from_numpy(self.targets[np.asarray(indices, dtype=np.int64)])


def _read_index(directory: Path, split: str, n_files: int) -> np.ndarray:
    """A split's index, checked: one int64 row of 5 per file, every image inside the data
    file. Anything else (truncated, pickled objects, edited) raises :class:`DamagedCache`."""
    path = directory / f"{split}.index.npy"
    try:
        index = np.load(path, allow_pickle=False)
        size = (directory / f"{split}.u8").stat().st_size
    except (OSError, ValueError, EOFError) as exc:  # 'Object arrays cannot be loaded ...', truncated, missing
        raise DamagedCache(f"{path} cannot be read ({exc})") from None
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 5:
        raise DamagedCache(f"{path} holds a {index.dtype} array of shape {index.shape}, not rows of 5 integers")
    if len(index) != n_files:
        raise DamagedCache(f"{split}: {len(index)} index rows for {n_files} files")
    stored = index[index[:, 0] >= 0]
    if len(stored) and ((stored[:, 1:3] <= 0).any() or (stored[:, 0] + stored[:, 1] * stored[:, 2] * 3 > size).any()):
        raise DamagedCache(f"{path} points outside {split}.u8 ({size} bytes)")
    return index


class DamagedCache(DataError):
    """A decoded cache whose files do not fit together (see :func:`cache_problem`)."""


def cache_problem(directory: Path, lists: SplitLists) -> str | None:
    """What is wrong with a complete-looking cache (index unreadable or not matching its
    data file or the split), or None when it is intact."""
    try:
        for split in ("train", "test"):
            _read_index(directory, split, len(getattr(lists, split)))
    except DamagedCache as exc:
        return str(exc)
    return None


def open_split(directory: Path, split: str, samples: Samples, pipe: Pipeline) -> tuple[CachedImageDataset, list[str]]:
    """The cached dataset of one split and the relative paths the cache could not decode."""
    try:
        index = _read_index(directory, split, len(samples))
    except DamagedCache as exc:
        raise DamagedCache(f"The decoded cache {directory} is damaged ({exc}). Delete that folder and run "
                           f"'clbench data prepare' again.") from None
    bad = [samples.paths[i] for i in np.flatnonzero(index[:, 0] < 0)]
    return CachedImageDataset(directory / f"{split}.u8", index, samples.targets, pipe), bad


# ---------------------------------------------------------------------------- building


def _decode(path: str, pipe: Pipeline) -> tuple[np.ndarray | None, tuple[int, int], str | None]:
    try:
        img = open_rgb(path)
    except BadImageError as exc:
        return None, (0, 0), exc.problem
    return pipe.store(img), (img.height, img.width), None


def estimate_bytes(samples: Sequence[Samples], pipe: Pipeline, probe: int = 200) -> int:
    """Projected cache size from the header sizes of up to ``probe`` images per split."""
    total = 0.0
    for s in samples:
        if not len(s):
            continue
        picks = np.linspace(0, len(s) - 1, min(probe, len(s))).astype(int)
        ratios = []
        for i in picks:
            try:
                with Image.open(os.path.join(s.root, s.paths[i])) as img:
                    w, h = img.size
                ratios.append(max(w, h) / max(1, min(w, h)))
            except Exception:
                continue
        total += len(s) * pipe.resize * pipe.resize * (float(np.mean(ratios)) if ratios else 1.0) * 3
    return int(total)


def build_cache(benchmark: str, lists: SplitLists, pipe: Pipeline, root: Path, workers: int = 8,
                on_progress: Callable[[int], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Decode and pack both splits; returns the cache directory and its metadata.

    Unreadable images are recorded (``meta['bad']``), not stored; the cache is written into a
    temporary folder and renamed when complete, so an interrupted build leaves no cache.
    """
    final = cache_dir(root, benchmark, lists, pipe)
    if read_meta(final) is not None and cache_problem(final, lists) is None:
        return final, read_meta(final)
    if final.exists():  # damaged (no readable meta.json, or an index that does not fit): build it again
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    need = estimate_bytes([lists.train, lists.test], pipe)
    free = shutil.disk_usage(final.parent).free
    if need * 1.05 > free:
        raise DataError(f"The decoded cache needs about {need / 1e9:.1f} GB but {final.parent} has {free / 1e9:.1f} GB free. "
                        f"Free some space or choose another place with --cache-dir (or CLBENCH_CACHE_DIR).")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.time()
    bad: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for split, samples in (("train", lists.train), ("test", lists.test)):
                index = np.full((len(samples), 5), -1, dtype=np.int64)
                offset = 0
                window = max(8, 4 * workers)
                with open(tmp / f"{split}.u8", "wb") as out:
                    for lo in range(0, len(samples), window):
                        paths = [os.path.join(samples.root, p) for p in samples.paths[lo:lo + window]]
                        for j, (arr, (oh, ow), problem) in enumerate(pool.map(_decode, paths, [pipe] * len(paths))):
                            i = lo + j
                            if arr is None:
                                bad.append({"split": split, "path": samples.paths[i], "problem": problem})
                                continue
                            out.write(memoryview(np.ascontiguousarray(arr)))
                            index[i] = (offset, arr.shape[0], arr.shape[1], oh, ow)
                            offset += arr.size
                        if on_progress is not None:
                            on_progress(len(paths))
                np.save(tmp / f"{split}.index.npy", index)
                counts[split] = len(samples)
        meta = {
            "format": CACHE_FORMAT, "benchmark": benchmark, "key": final.name, "split_id": lists.split_id,
            "label_map_id": lists.label_map_id, "stored": {"resize": pipe.resize, "interp": pipe.eval_interp},
            "counts": counts, "bytes": sum(f.stat().st_size for f in tmp.glob("*.u8")), "bad": bad,
            "source": {"train": str(lists.train.root), "test": str(lists.test.root)},
            "seconds": round(time.time() - start, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():  # built concurrently by another process
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            from ..records import output_error

            raise output_error(tmp, exc) from exc
        raise
    return final, read_meta(final)
