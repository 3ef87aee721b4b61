"""The benchmark contract: load a labelled train/test pair and describe its protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from clbench.config import BenchmarkConfig
from clbench.data.datasets import LabelledDataset
from clbench.data.stream import ClassIncrementalStream, class_order


@dataclass
class BenchmarkData:
    """A loaded benchmark: datasets plus the provenance stored in every run record."""

    train: LabelledDataset
    test: LabelledDataset
    class_names: list[str]
    split_id: str  # names the train/test split exactly (variant + checksum or parameters)
    label_map_id: str  # what the integer labels mean (e.g. 'wnid-alphabetical', 'coda-yaml')
    info: dict[str, Any] = field(default_factory=dict)  # extra provenance (realised split, ...)


class Benchmark:
    """Base class of registered benchmarks (register with
    :func:`clbench.registry.register_benchmark`)."""

    Config: ClassVar[type[BenchmarkConfig]] = BenchmarkConfig
    registered_name: ClassVar[str] = ""  # stamped by register_benchmark
    #: Values for other config sections (dotted keys: ``train.epochs``, ``backbone.name``)
    #: that suit this benchmark; methods and presets may override them.
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def input_size(cls, cfg: BenchmarkConfig) -> int | None:
        """Height and width in pixels of the images fed to the model (None: not fixed);
        ``backbone.img_size`` defaults to it."""
        size = getattr(cfg, "image_size", None)
        return int(size) if size is not None else None

    def load(self, cfg: BenchmarkConfig) -> BenchmarkData:
        """Read (or generate) the data; raise :class:`~clbench.errors.DataError` with a fix."""
        raise NotImplementedError

    def stream(self, data: BenchmarkData, cfg: BenchmarkConfig, seed: int) -> ClassIncrementalStream:
        """The class-incremental stream for ``seed`` (class order per ``cfg.class_order``)."""
        n = len(data.class_names)
        order_seed = cfg.order_seed if cfg.order_seed is not None else seed
        order = class_order(n, order_seed if cfg.class_order == "seeded" else None)
        return ClassIncrementalStream(data.train, data.test, order, cfg.n_tasks, cfg.init_cls)
