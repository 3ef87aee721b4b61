"""``cub200``: CUB-200-2011 (200 bird species, 11,788 images).

Splits: ``presplit`` (default; the APER archive ``cub.zip`` with ``train/`` and ``test/``
folders, what PILOT, APER and InfLoRA read) or ``official`` (``train_test_split.txt`` of the
Caltech release, 5,994 / 5,794). Labels: the class folders ``NNN.Name`` in order (the same
order as ``classes.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clbench.config import option
from clbench.data.download import Source
from clbench.data.splits import Samples, SplitLists, digest, existing_sizes, presplit_folders, require_all_classes
from clbench.errors import DataError
from clbench.registry import register_benchmark

from .imagenet_r import APER_NOTE
from .real import RealBenchmark, RealBenchmarkConfig

CALTECH_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
META_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def read_id_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``<id> <value>...`` lines of a CUB metadata file."""
    if not path.is_file():
        raise DataError(f"CUB metadata file {path} is missing. Extract CUB_200_2011.tgz again ({CALTECH_URL}).")
    table = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.strip().split(maxsplit=columns - 1)
            if not parts:
                continue
            try:
                if len(parts) != columns:
                    raise ValueError
                table[int(parts[0])] = parts[1:]
            except ValueError:
                raise DataError(f"{path}, line {n}: expected {columns} fields, got {line.strip()!r}. The file is "
                                f"corrupt: extract CUB_200_2011.tgz again.") from None
    return table


@dataclass
class Cub200Config(RealBenchmarkConfig):
    """Options of ``cub200``."""

    n_tasks: int = 10
    split: Literal["presplit", "official"] = option(
        "presplit", "presplit: APER cub.zip; official: the dataset's train_test_split.txt")


@register_benchmark("cub200")
class Cub200(RealBenchmark):
    """CUB-200-2011, 200 classes; splits presplit (APER cub.zip) or official train_test_split.txt."""

    Config = Cub200Config
    title = "CUB-200-2011"
    n_classes = 200

    def dirnames(self, cfg: Cub200Config) -> tuple[str, ...]:
        return ("cub", "CUB200", "cub200") if cfg.split == "presplit" else ("CUB_200_2011",)

    def layout(self, cfg: Cub200Config) -> str:
        if cfg.split == "presplit":
            return "cub/train/<NNN.Class>/*.jpg and cub/test/<NNN.Class>/*.jpg (APER cub.zip)"
        return "CUB_200_2011/images/<NNN.Class>/*.jpg with images.txt, image_class_labels.txt, train_test_split.txt, classes.txt"

    def sources(self, cfg: Cub200Config) -> list[Source]:
        if cfg.split == "presplit":
            return [Source("cub.zip", None, md5="85e342a2d5f941e740193602057df7a5", note=APER_NOTE)]
        return [Source("CUB_200_2011.tgz", CALTECH_URL, note="Caltech, about 1.1 GB")]

    def expected_counts(self, cfg: Cub200Config) -> dict[str, int]:
        return {"total": 11_788} if cfg.split == "presplit" else {"train": 5_994, "test": 5_794}

    def split_lists(self, cfg: Cub200Config, dataset_dir: Path) -> SplitLists:
        if cfg.split == "presplit":
            return presplit_folders(dataset_dir, "cub", "For the Caltech release (CUB_200_2011/ with images/ and "
                                    "train_test_split.txt) use --set benchmark.split=official.")
        tables = {name: read_id_table(dataset_dir / name, 2) for name in META_FILES}
        images, labels, is_train, classes = (tables[n] for n in META_FILES)
        ids = sorted(images)
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            missing = [i for i in ids if i not in table]
            if missing:
                raise DataError(f"{dataset_dir / name} has no entry for {len(missing)} image id(s) of images.txt "
                                f"(e.g. {missing[0]}). The metadata is incomplete: extract CUB_200_2011.tgz again.")
        try:
            class_ids = sorted(classes)
            names = [classes[c][0] for c in class_ids]
            label_of = {c: k for k, c in enumerate(class_ids)}
            targets = np.asarray([label_of[int(labels[i][0])] for i in ids], dtype=np.int64)
            train_mask = np.asarray([int(is_train[i][0]) == 1 for i in ids])
        except (KeyError, ValueError) as exc:
            raise DataError(f"The CUB metadata in {dataset_dir} is inconsistent ({type(exc).__name__}: {exc}); "
                            f"extract CUB_200_2011.tgz again.") from None
        root = dataset_dir / "images"
        paths = [images[i][0] for i in ids]
        sizes = existing_sizes(root, paths, str(dataset_dir / "images.txt"),
                               "Extract CUB_200_2011.tgz again so that every image of images.txt exists.")
        require_all_classes(targets[train_mask], targets[~train_mask], names,
                            (f"the train part of {dataset_dir / 'train_test_split.txt'}",
                             f"the test part of {dataset_dir / 'train_test_split.txt'}"))
        everything = Samples(root, paths, targets, sizes)
        split_sha = digest(paths, targets, train_mask.astype(np.int64))
        return SplitLists(everything.subset(train_mask), everything.subset(~train_mask), names,
                          f"cub200:official-train_test_split:train={int(train_mask.sum())},test={int((~train_mask).sum())}"
                          f":files={split_sha}", "cub-classes.txt", {"split": "official", "files_sha": split_sha})
