"""``imagenet_a``: ImageNet-A (200 classes, 7,500 natural adversarial images).

Splits: ``presplit`` (default; the APER archive ``ina.zip`` with ``train/`` and ``test/``
folders, what InfLoRA, PILOT and SD-LoRA read) or ``seeded`` (a stratified split of the
Hendrycks release ``imagenet-a/<wnid>/*.jpg``, nothing moved). Labels: alphabetical wnids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clbench.config import option
from clbench.data.download import Source
from clbench.data.splits import SplitLists, apply_seeded_split, presplit_folders
from clbench.errors import DataError
from clbench.registry import register_benchmark

from .imagenet_r import APER_NOTE, BERKELEY
from .real import RealBenchmark, RealBenchmarkConfig


@dataclass
class ImageNetAConfig(RealBenchmarkConfig):
    """Options of ``imagenet_a``."""

    n_tasks: int = 10
    split: Literal["presplit", "seeded"] = option(
        "presplit", "presplit: APER ina.zip (SD-LoRA); seeded: a seeded split")
    test_fraction: float = option(0.2, "seeded: share of each class's images held out for testing", gt=0, lt=1)
    split_seed: int = option(1993, "seeded: seed of the split", ge=0, lt=2**32)


@register_benchmark("imagenet_a")
class ImageNetA(RealBenchmark):
    """ImageNet-A, 200 classes; splits presplit (APER ina.zip, SD-LoRA) or seeded 80/20."""

    Config = ImageNetAConfig
    title = "ImageNet-A"
    n_classes = 200

    def dirnames(self, cfg: ImageNetAConfig) -> tuple[str, ...]:
        return ("imagenet-a", "ina")

    def layout(self, cfg: ImageNetAConfig) -> str:
        if cfg.split == "presplit":
            return "imagenet-a/train/<wnid>/*.jpg and imagenet-a/test/<wnid>/*.jpg (APER ina.zip)"
        return "imagenet-a/<wnid>/*.jpg (Hendrycks imagenet-a.tar)"

    def sources(self, cfg: ImageNetAConfig) -> list[Source]:
        if cfg.split == "presplit":
            return [Source("ina.zip", None, md5="7f4aaf0b1532b7a0bd670822c152d3c5", note=APER_NOTE)]
        return [Source("imagenet-a.tar", BERKELEY + "imagenet-a.tar", note="Hendrycks et al.")]

    def expected_counts(self, cfg: ImageNetAConfig) -> dict[str, int]:
        return {"total": 7_500}

    def split_lists(self, cfg: ImageNetAConfig, dataset_dir: Path) -> SplitLists:
        fix = ("For the pre-split layout use --set benchmark.split=presplit; for the Hendrycks release "
               "(one folder per wnid) use --set benchmark.split=seeded.")
        if cfg.split == "presplit":
            return presplit_folders(dataset_dir, "imagenet-a", fix)
        if (dataset_dir / "train").is_dir() and (dataset_dir / "test").is_dir():
            raise DataError(f"{dataset_dir} holds train/ and test/ folders (the pre-split layout), but benchmark.split "
                            f"is 'seeded'. {fix}")
        return apply_seeded_split(dataset_dir, "imagenet-a", cfg.test_fraction, cfg.split_seed)
