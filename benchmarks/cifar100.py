"""``cifar100``: CIFAR-100 (100 classes, 50,000 / 10,000 images of 32x32), official split.

Reads the python pickles of ``cifar-100-python.tar.gz`` (``<root>/cifar-100-python/{train,test,meta}``)
with an unpickler that accepts only plain containers and NumPy arrays. Labels are the fine
labels (alphabetical class names). Images stay decoded in memory; the transforms upsample to
224 per sample as the references do (the decoded cache is not needed here).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clbench.data.download import Source
from clbench.data.images import ArrayImageDataset
from clbench.data.transforms import Pipeline, pipeline
from clbench.errors import DataError
from clbench.registry import register_benchmark

from .base import BenchmarkData
from .real import Finding, RealBenchmark, RealBenchmarkConfig

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # the MD5 published on cs.toronto.edu/~kriz/cifar.html
FILE_MD5 = {  # the extracted files (as checked by the CODA-Prompt and torchvision loaders)
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle (Python 2 or 3), refusing anything but containers and arrays."""
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} is missing. Extract {URL.rsplit('/', 1)[1]} again "
                        f"('clbench data download cifar100' fetches and unpacks it).")
    try:
        with open(path, "rb") as fh:
            return _SafeUnpickler(fh, encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"Cannot read CIFAR-100 file {path} ({type(exc).__name__}: {exc}). It is corrupt: delete "
                        f"the cifar-100-python folder and download it again ('clbench data download cifar100').") from None


@dataclass
class Cifar100Config(RealBenchmarkConfig):
    """Options of ``cifar100``."""

    n_tasks: int = 10


@register_benchmark("cifar100")
class Cifar100(RealBenchmark):
    """CIFAR-100, 100 classes, official 50k/10k split (python pickles), upsampled to 224."""

    Config = Cifar100Config
    title = "CIFAR-100"
    n_classes = 100
    stored_decoded = True  # python pickles of uint8 arrays

    def dirnames(self, cfg: Cifar100Config) -> tuple[str, ...]:
        return ("cifar-100-python",)

    def layout(self, cfg: Cifar100Config) -> str:
        return "cifar-100-python/{train,test,meta} (python pickles)"

    def sources(self, cfg: Cifar100Config) -> list[Source]:
        return [Source("cifar-100-python.tar.gz", URL, md5=ARCHIVE_MD5, note="Krizhevsky, about 160 MB")]

    def expected_counts(self, cfg: Cifar100Config) -> dict[str, int]:
        return {"train": 50_000, "test": 10_000}

    def file_checksums(self, cfg: Cifar100Config, dataset_dir: Path) -> list[tuple[Path, str, str]]:
        return [(dataset_dir / name, "md5", md5) for name, md5 in FILE_MD5.items()]

    def pipeline(self, cfg: Cifar100Config) -> Pipeline:
        resize = cfg.resize_size
        if resize is None and cfg.transforms == "coda":
            resize = cfg.image_size  # CODA/InfLoRA evaluate CIFAR with Resize(224) only
        return pipeline(cfg.transforms, cfg.image_size, resize)

    def read(self, cfg: Cifar100Config) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
        """(folder, {split: (HWC uint8 images, fine labels)}, class names)."""
        directory = self.dataset_dir(cfg)
        meta = read_pickle(directory / "meta")
        names = meta.get("fine_label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list):
            raise DataError(f"{directory / 'meta'} has no 'fine_label_names'; it is not the CIFAR-100 meta file. "
                            f"Download cifar-100-python.tar.gz again.")
        splits = {}
        for split in ("train", "test"):
            entry = read_pickle(directory / split)
            try:
                data = np.asarray(entry["data"], dtype=np.uint8)
                labels = np.asarray(entry["fine_labels"], dtype=np.int64)
                images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{directory / split} is not a CIFAR-100 pickle ({type(exc).__name__}: {exc}); "
                                f"download cifar-100-python.tar.gz again.") from None
            if len(images) != len(labels) or (len(labels) and (labels.min() < 0 or labels.max() >= len(names))):
                raise DataError(f"{directory / split}: {len(images)} images, {len(labels)} labels outside 0..{len(names) - 1}"
                                f"; the file is corrupt. Download cifar-100-python.tar.gz again.")
            splits[split] = (np.ascontiguousarray(images), labels)
        return directory, splits, [str(n) for n in names]

    def _problems(self, cfg: Cifar100Config, splits: dict, names: list[str]) -> list[str]:
        problems = [] if len(names) == self.n_classes else [f"{len(names)} classes instead of {self.n_classes}"]
        for split, want in self.expected_counts(cfg).items():
            if len(splits[split][1]) != want:
                problems.append(f"{len(splits[split][1]):,} {split} images instead of {want:,}")
        for split in ("train", "test"):
            counts = np.bincount(splits[split][1], minlength=len(names))
            if (counts == 0).any():
                problems.append(f"class(es) {[names[c] for c in np.flatnonzero(counts == 0)][:5]} missing from the {split} file")
        return problems

    def summary(self, cfg: Cifar100Config) -> str:
        _, splits, names = self.read(cfg)
        problems = self._problems(cfg, splits, names)
        if problems and cfg.check_counts:
            raise DataError(f"CIFAR-100 has {' and '.join(problems)}; download cifar-100-python.tar.gz again.")
        return f"{len(names)} classes, {len(splits['train'][1]):,} train and {len(splits['test'][1]):,} test images"

    def load(self, cfg: Cifar100Config) -> BenchmarkData:
        directory, splits, names = self.read(cfg)
        problems = self._problems(cfg, splits, names)
        if problems and cfg.check_counts:
            raise DataError(f"CIFAR-100 at {directory} has {' and '.join(problems)}. It is incomplete or another version: "
                            f"download cifar-100-python.tar.gz again, or --set benchmark.check_counts=false to use it anyway.")
        pipe = self.pipeline(cfg)
        (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
        info = {"dataset_dir": str(directory), "split": "official", "counts_checked": not problems,
                "counts": {"classes": len(names), "train": len(train_y), "test": len(test_y)},
                "transforms": pipe.describe(), "loader": "memory", "skipped": []}
        return BenchmarkData(ArrayImageDataset(train_x, train_y, pipe), ArrayImageDataset(test_x, test_y, pipe), names,
                             f"cifar100:official:train={len(train_y)},test={len(test_y)}", "cifar100-fine-alphabetical", info)

    def check(self, cfg: Cifar100Config, decode: bool = True, workers: int = 8, on_progress: Any = None) -> list[Finding]:
        try:
            directory, splits, names = self.read(cfg)
        except DataError as exc:
            return [Finding(False, "layout", str(exc))]
        findings = [Finding(True, "dataset folder", str(directory)), Finding(True, "layout", self.layout(cfg))]
        problems = self._problems(cfg, splits, names)
        counts = f"{len(names)} classes, {len(splits['train'][1]):,} train, {len(splits['test'][1]):,} test images"
        findings.append(Finding(not problems or not cfg.check_counts, "counts",
                                counts + (f": {'; '.join(problems)}" if problems else "")))
        findings += self.checksum_findings(cfg, directory)
        findings.append(Finding(True, "decoded cache", "not needed (the pickles are already decoded)"))
        return findings
