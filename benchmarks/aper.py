"""The pre-split APER sets: ``vtab`` (50 classes, 5 x 10, unshuffled), ``omnibenchmark``
(300 classes, 10 x 30) and ``objectnet`` (200 classes, 20 x 10).

Each is an archive of the APER/RevisitingCIL authors with ``train/<class>/`` and
``test/<class>/`` folders (docs/protocol.md); labels are the alphabetical class folders.
Their image counts are not published in a form checked here, so only the class counts are
verified; the found counts go into the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clbench.data.download import Source
from clbench.data.splits import SplitLists, presplit_folders
from clbench.registry import register_benchmark

from .imagenet_r import APER_NOTE
from .real import RealBenchmark, RealBenchmarkConfig


class AperPresplit(RealBenchmark):
    """An APER archive with ``train/`` and ``test/`` class folders."""

    archive: ClassVar[str] = ""
    md5: ClassVar[str] = ""
    folders: ClassVar[tuple[str, ...]] = ()

    def dirnames(self, cfg: RealBenchmarkConfig) -> tuple[str, ...]:
        return self.folders

    def layout(self, cfg: RealBenchmarkConfig) -> str:
        return f"{self.folders[0]}/train/<class>/* and {self.folders[0]}/test/<class>/* ({self.archive})"

    def sources(self, cfg: RealBenchmarkConfig) -> list[Source]:
        return [Source(self.archive, None, md5=self.md5, note=APER_NOTE)]

    def split_lists(self, cfg: RealBenchmarkConfig, dataset_dir: Path) -> SplitLists:
        return presplit_folders(dataset_dir, self.registered_name)


@dataclass
class VtabConfig(RealBenchmarkConfig):
    n_tasks: int = 5
    class_order: Literal["seeded", "natural"] = "natural"  # each task is one source dataset (APER runs VTAB unshuffled)


@register_benchmark("vtab")
class Vtab(AperPresplit):
    """VTAB (APER): 50 classes from 5 VTAB datasets, 5 tasks in folder order (unshuffled)."""

    Config = VtabConfig
    title, n_classes = "VTAB (APER)", 50
    archive, md5 = "vtab.zip", "a9c37bde6105a2516c900b0c33a437c1"
    folders = ("vtab", "vtab-cil/vtab")


@dataclass
class OmnibenchmarkConfig(RealBenchmarkConfig):
    n_tasks: int = 10


@register_benchmark("omnibenchmark")
class Omnibenchmark(AperPresplit):
    """OmniBenchmark (APER): 300 classes, 10 tasks."""

    Config = OmnibenchmarkConfig
    title, n_classes = "OmniBenchmark (APER)", 300
    archive, md5 = "omnibenchmark.zip", "f1c30808a707f9197c6c811ea52e5cbb"
    folders = ("omnibenchmark",)


@dataclass
class ObjectnetConfig(RealBenchmarkConfig):
    n_tasks: int = 20


@register_benchmark("objectnet")
class Objectnet(AperPresplit):
    """ObjectNet (APER): 200 classes, 20 tasks."""

    Config = ObjectnetConfig
    title, n_classes = "ObjectNet (APER)", 200
    archive, md5 = "objnet.tgz", "63ff7443a47bd682016a8ec59b8cc1bc"
    folders = ("objectnet", "objnet")
