"""Shared machinery of the real (on-disk) benchmarks.

A :class:`RealBenchmark` finds its dataset folder under the data root (``benchmark.data_root``,
``--data-root`` or ``$CLBENCH_DATA_ROOT``), asks its split provider for the train/test file
lists, checks class and image counts, and serves the images from the decoded cache when one
exists (``clbench data prepare``) or from the files otherwise. It never writes into the data
root. Subclasses say where their data lives, what it looks like and where to get it.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from clbench.config import BenchmarkConfig, option
from clbench.data import cache as cache_mod
from clbench.data.datasets import LabelledDataset
from clbench.data.download import Source, file_digest
from clbench.data.images import ImageFileDataset, image_problem
from clbench.data.splits import Samples, SplitLists, digest
from clbench.data.transforms import Pipeline, pipeline
from clbench.errors import DataError

from .base import Benchmark, BenchmarkData

ENV_DATA_ROOT = "CLBENCH_DATA_ROOT"
SDLORA_BACKBONE = "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # protocol decision 1


@dataclass
class RealBenchmarkConfig(BenchmarkConfig):
    """Options every real benchmark has."""

    data_root: str | None = option(None, "folder holding the datasets; default: $CLBENCH_DATA_ROOT")
    path: str | None = option(None, "this dataset's own folder, if not at its usual place under data_root")
    transforms: Literal["pilot", "coda"] = option("pilot", "PILOT/SD-LoRA or CODA/InfLoRA pipelines")
    image_size: int = option(224, "input size of the model in pixels", ge=1)
    resize_size: int | None = option(
        None, "eval: shorter side resized to this before the crop; None: 256 at 224", ge=1)
    cache: Literal["auto", "off", "require"] = option("auto", "use the decoded cache (clbench data prepare)")
    cache_dir: str | None = option(
        None, "where decoded caches live; default: $CLBENCH_CACHE_DIR or ~/.cache/clbench/data")
    check_counts: bool = option(True, "the class and image counts must match the published dataset")
    skip_bad_images: bool = option(False, "leave unreadable images out (listed in the record) instead of failing")


@dataclass
class Finding:
    """One line of 'clbench data check': what was checked, whether it is fine, details or the fix."""

    ok: bool
    what: str
    detail: str


class RealBenchmark(Benchmark):
    """Base class of benchmarks read from a data root."""

    Config: ClassVar[type[RealBenchmarkConfig]] = RealBenchmarkConfig
    defaults: ClassVar[dict[str, Any]] = {
        "backbone.name": SDLORA_BACKBONE, "backbone.input_norm": "none",
    }  # the class order follows the run seed (PILOT/SD-LoRA: --seeds 1993 gives the 1993 order)
    title: ClassVar[str] = ""  # e.g. 'ImageNet-R'
    n_classes: ClassVar[int] = 0
    stored_decoded: ClassVar[bool] = False  # images already decoded on disk (no file lists, no decoded cache)

    # ------------------------------------------------------------------ what subclasses say
    def dirnames(self, cfg: RealBenchmarkConfig) -> tuple[str, ...]:
        """Folder names looked for under the data root, first match wins."""
        raise NotImplementedError

    def layout(self, cfg: RealBenchmarkConfig) -> str:
        """The expected layout, in words, relative to the data root."""
        raise NotImplementedError

    def sources(self, cfg: RealBenchmarkConfig) -> list[Source]:
        """What to download (or fetch by hand) for this configuration."""
        raise NotImplementedError

    def split_lists(self, cfg: RealBenchmarkConfig, dataset_dir: Path) -> SplitLists:
        """The train/test file lists (raises :class:`DataError` naming what is wrong)."""
        raise NotImplementedError

    def expected_counts(self, cfg: RealBenchmarkConfig) -> dict[str, int]:
        """Published image counts: any of 'train', 'test', 'total'."""
        return {}

    def file_checksums(self, cfg: RealBenchmarkConfig, dataset_dir: Path) -> list[tuple[Path, str, str]]:
        """(file, algorithm, digest) of dataset files with published checksums ('clbench data check')."""
        return []

    # ------------------------------------------------------------------ locating the data
    def how_to_get(self, cfg: RealBenchmarkConfig, root: str = "DIR") -> str:
        name, steps = self.registered_name, []
        for src in self.sources(cfg):
            if src.url:
                steps.append(f"{src.filename} from {src.url}")
            else:
                steps.append(f"{src.filename} by hand ({src.note}), then 'clbench data download {name} "
                             f"--data-root {root} --archive {src.filename}' verifies and unpacks it")
        auto = any(s.url for s in self.sources(cfg))
        text = f"Expected layout: {self.layout(cfg)}. Files: " + "; ".join(steps) + "."
        if auto:
            text += f" 'clbench data download {name} --data-root {root}' fetches what has a public URL."
        return text + f" Then 'clbench data check {name} --data-root {root}' verifies everything."

    def data_root(self, cfg: RealBenchmarkConfig) -> Path:
        root = cfg.data_root or os.environ.get(ENV_DATA_ROOT)
        if not root and not cfg.path:
            raise DataError(
                f"Benchmark '{self.registered_name}' ({self.title}) reads its images from a data root, and none is "
                f"set. "
                f"Pass --data-root DIR (or set {ENV_DATA_ROOT}=DIR). {self.how_to_get(cfg)}"
            )
        path = Path(root or ".").expanduser()
        if root and not path.is_dir():
            raise DataError(f"The data root {path} does not exist. Create it and put the dataset there. {self.how_to_get(cfg, str(path))}")
        return path

    def dataset_dir(self, cfg: RealBenchmarkConfig) -> Path:
        """This dataset's folder: ``benchmark.path`` or the first usual name found under the root."""
        if cfg.path:
            path = Path(cfg.path).expanduser()
            if not path.is_dir():
                raise DataError(f"benchmark.path {path} does not exist. Point it at the {self.title} folder. {self.how_to_get(cfg)}")
            return path
        root = self.data_root(cfg)
        names = self.dirnames(cfg)
        for name in names:
            if (root / name).is_dir():
                return root / name
        raise DataError(
            f"{self.title} is not in the data root {root}: looked for {', '.join(str(root / n) for n in names)}. "
            f"{self.how_to_get(cfg, str(root))} If it lives elsewhere, pass --set benchmark.path=/its/folder."
        )

    def count_problems(self, cfg: RealBenchmarkConfig, lists: SplitLists) -> list[str]:
        """Differences between the found and the published class/image counts."""
        found = {"train": len(lists.train), "test": len(lists.test), "total": len(lists.train) + len(lists.test)}
        problems = []
        if self.n_classes and len(lists.class_names) != self.n_classes:
            problems.append(f"{len(lists.class_names)} classes instead of {self.n_classes}")
        for key, want in self.expected_counts(cfg).items():
            if found[key] != want:
                problems.append(f"{found[key]:,} {key} images instead of {want:,}")
        return problems

    def lists(self, cfg: RealBenchmarkConfig) -> SplitLists:
        """Split lists with the counts checked (unless ``benchmark.check_counts`` is off)."""
        dataset_dir = self.dataset_dir(cfg)
        lists = self.split_lists(cfg, dataset_dir)
        problems = self.count_problems(cfg, lists)
        if problems and cfg.check_counts:
            raise DataError(
                f"{self.title} at {dataset_dir} has {' and '.join(problems)} ({lists.info.get('split', '')} split). "
                f"The copy is incomplete or a different version: extract it again ({self.layout(cfg)}); "
                f"'clbench data check {self.registered_name}' lists the details. To run on a subset on purpose, "
                f"--set benchmark.check_counts=false."
            )
        lists.info = {"dataset_dir": str(dataset_dir), **lists.info, "counts_checked": not problems,
                      "counts": {"classes": len(lists.class_names), "train": len(lists.train), "test": len(lists.test)}}
        return lists

    def summary(self, cfg: RealBenchmarkConfig) -> str:
        """One line on the data in place (raises :class:`DataError` when it is not usable)."""
        lists = self.lists(cfg)
        return f"{len(lists.class_names)} classes, {len(lists.train):,} train and {len(lists.test):,} test images"

    def pipeline(self, cfg: RealBenchmarkConfig) -> Pipeline:
        return pipeline(cfg.transforms, cfg.image_size, cfg.resize_size)

    # ------------------------------------------------------------------ loading
    def load(self, cfg: RealBenchmarkConfig) -> BenchmarkData:
        lists = self.lists(cfg)
        pipe = self.pipeline(cfg)
        train, test, loader = self.datasets(cfg, lists, pipe)
        split_id = lists.split_id
        if loader.get("skipped"):
            split_id += f":skipped={len(loader['skipped'])}:{digest([s['path'] for s in loader['skipped']])}"
        info = {**lists.info, "transforms": pipe.describe(), **loader}
        return BenchmarkData(train, test, lists.class_names, split_id, lists.label_map_id, info)

    def datasets(self, cfg: RealBenchmarkConfig, lists: SplitLists,
                 pipe: Pipeline) -> tuple[LabelledDataset, LabelledDataset, dict[str, Any]]:
        """(train, test, loader facts): from the decoded cache when present, else from the files."""
        name = self.registered_name
        if cfg.cache != "off":
            directory = cache_mod.cache_dir(cache_mod.cache_root(cfg.cache_dir), name, lists, pipe)
            problem = cache_mod.read_meta(directory) is not None and cache_mod.cache_problem(directory, lists)
            if problem:
                print(f"note: the decoded cache {directory} is damaged ({problem}); rebuilding it.", file=sys.stderr)
                cache_mod.build_cache(name, lists, pipe, cache_mod.cache_root(cfg.cache_dir))
            if cache_mod.read_meta(directory) is not None:
                (train, bad_train), (test, bad_test) = (cache_mod.open_split(directory, s, getattr(lists, s), pipe)
                                                        for s in ("train", "test"))
                bad = [("train", p) for p in bad_train] + [("test", p) for p in bad_test]
                skipped = self._handle_bad(cfg, bad, f"the decoded cache {directory} recorded")
                if skipped:
                    train = _without(train, lists.train, {p for s, p in bad if s == "train"})
                    test = _without(test, lists.test, {p for s, p in bad if s == "test"})
                return train, test, {"loader": "cache", "cache": {"dir": str(directory), "key": directory.name},
                                     "skipped": skipped}
            if cfg.cache == "require":
                raise DataError(f"There is no decoded cache of this {name} split at {directory}. Build it with "
                                f"'clbench data prepare {name}' and the same --data-root and --set options, "
                                f"or use --set benchmark.cache=auto to read the image files.")
            if len(lists.train) + len(lists.test) >= 5000:
                print(f"note: reading {name} from the image files; 'clbench data prepare {name}' builds a "
                      f"decoded cache that loads several times faster.", file=sys.stderr)
        skipped: list[dict[str, str]] = []
        train_s, test_s = lists.train, lists.test
        if cfg.skip_bad_images:
            bad = [(s, p) for s, p, _ in scan_images(lists)]
            skipped = self._handle_bad(cfg, bad, "scanning the images found")
            train_s = _drop(lists.train, {p for s, p in bad if s == "train"})
            test_s = _drop(lists.test, {p for s, p in bad if s == "test"})
        return (ImageFileDataset(train_s.root, train_s.paths, train_s.targets, pipe, name),
                ImageFileDataset(test_s.root, test_s.paths, test_s.targets, pipe, name),
                {"loader": "files", "skipped": skipped})

    def _handle_bad(self, cfg: RealBenchmarkConfig, bad: list[tuple[str, str]], where: str) -> list[dict[str, str]]:
        if not bad:
            return []
        if not cfg.skip_bad_images:
            listed = ", ".join(p for _, p in bad[:5]) + (" …" if len(bad) > 5 else "")
            raise DataError(f"{where} {len(bad)} unreadable image(s): {listed}. Replace or delete them and run "
                            f"'clbench data prepare {self.registered_name}' again, or --set "
                            f"benchmark.skip_bad_images=true to "
                            f"leave them out (the run record lists them).")
        return [{"split": s, "path": p} for s, p in bad]

    # ------------------------------------------------------------------ checking
    def checksum_findings(self, cfg: RealBenchmarkConfig, dataset_dir: Path) -> list[Finding]:
        """One finding per file of :meth:`file_checksums`: present and matching, or what to do."""
        findings = []
        for path, algorithm, want in self.file_checksums(cfg, dataset_dir):
            if not path.exists():
                findings.append(Finding(False, "checksum", f"{path} is missing. {self.how_to_get(cfg)}"))
                continue
            got = file_digest(path, algorithm)
            findings.append(Finding(got == want, "checksum", f"{path}: {algorithm} {got}" + (
                "" if got == want else f", expected {want}: the file is corrupt or another version; download it again.")))
        return findings

    def check(self, cfg: RealBenchmarkConfig, decode: bool = True, workers: int = 8,
              on_progress: Any = None) -> list[Finding]:
        """Everything 'clbench data check' reports, problems with their fixes."""
        findings = []
        try:
            dataset_dir = self.dataset_dir(cfg)
            findings.append(Finding(True, "dataset folder", str(dataset_dir)))
            lists = self.split_lists(cfg, dataset_dir)
        except DataError as exc:
            return findings + [Finding(False, "layout", str(exc))]
        findings.append(Finding(True, "layout", f"{lists.info.get('split', '')}: {self.layout(cfg)}"))
        problems = self.count_problems(cfg, lists)
        counts = f"{len(lists.class_names)} classes, {len(lists.train):,} train, {len(lists.test):,} test images"
        if problems and cfg.check_counts:
            findings.append(Finding(False, "counts", f"{counts}: {'; '.join(problems)}. The copy is incomplete or another "
                                    f"version: extract it again, or --set benchmark.check_counts=false to use it anyway."))
        elif problems:
            findings.append(Finding(True, "counts", f"{counts} ({'; '.join(problems)}; accepted: check_counts=false)"))
        else:
            findings.append(Finding(True, "counts", counts))
        for info in lists.info.get("split_files", {}).values():
            state = "verified against the published sha256" if info.get("verified") else "not verified (no published checksum)"
            findings.append(Finding(True, "split file", f"{info['path']}: sha256 {info['sha256'][:16]}…, {state}"))
        findings += self.checksum_findings(cfg, dataset_dir)
        for src in self.sources(cfg) if decode else []:  # archives kept beside the dataset
            archive = dataset_dir.parent / src.subdir / src.filename
            if src.checksum and src.unpack and archive.is_file():
                algorithm, want = src.checksum
                got = file_digest(archive, algorithm)
                findings.append(Finding(got == want, "archive", f"{archive}: {algorithm} {got}" + (
                    "" if got == want else f", published {want}: the archive is corrupt or another version.")))
        if decode:
            bad = scan_images(lists, workers, on_progress)
            if bad:
                lines = "".join(f"\n  {s}/{p}: {why}" for s, p, why in bad)
                findings.append(Finding(False, "images", f"{len(bad)} unreadable image(s) under {dataset_dir}:{lines}\n"
                                        f"Replace or delete these files (or run with --set benchmark.skip_bad_images=true)."))
            else:
                findings.append(Finding(True, "images", f"all {len(lists.train) + len(lists.test):,} decode"))
        pipe = self.pipeline(cfg)
        directory = cache_mod.cache_dir(cache_mod.cache_root(cfg.cache_dir), self.registered_name, lists, pipe)
        meta = cache_mod.read_meta(directory)
        findings.append(Finding(True, "decoded cache", f"present at {directory} ({meta['bytes'] / 1e9:.2f} GB)" if meta else
                                f"none for this split and resize {pipe.resize} "
                                f"('clbench data prepare {self.registered_name}' builds it)"))
        return findings


def scan_images(lists: SplitLists, workers: int = 8, on_progress: Any = None) -> list[tuple[str, str, str]]:
    """(split, relative path, problem) of every image that does not decode (threads; PIL frees the GIL)."""
    jobs = [(split, s.root, p) for split, s in (("train", lists.train), ("test", lists.test)) for p in s.paths]
    bad = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (split, root, p), problem in zip(jobs, pool.map(lambda j: image_problem(os.path.join(j[1], j[2])), jobs)):
            if problem is not None:
                bad.append((split, p, problem))
            if on_progress is not None:
                on_progress(1)
    return bad


def _drop(samples: Samples, paths: set[str]) -> Samples:
    return samples.subset(np.array([p not in paths for p in samples.paths], dtype=bool)) if paths else samples


def _without(dataset: cache_mod.CachedImageDataset, samples: Samples,
             paths: set[str]) -> cache_mod.CachedImageDataset:
    keep = np.array([p not in paths for p in samples.paths], dtype=bool)
    return cache_mod.CachedImageDataset(Path(dataset.data_file), dataset.index[keep], dataset.targets[keep], dataset.pipeline)
