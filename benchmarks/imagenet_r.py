"""``imagenet_r``: ImageNet-R (200 ImageNet classes, 30,000 renditions), 5/10/20 tasks.

Splits (``benchmark.split``; docs/protocol.md says why they differ):

``presplit`` (default; what SD-LoRA and PILOT used)
    the APER archive ``imagenet-r.zip``: ``<root>/imagenet-r/{train,test}/<wnid>/*.jpg``;
    labels are the alphabetical wnids.
``coda``
    CODA-Prompt's YAML lists (24,000 / 6,000, sha256 verified) over the Hendrycks release
    ``<root>/imagenet-r/<wnid>/*.jpg``; the label map is the one in the files.
``seeded``
    a stratified 80/20 split of the Hendrycks release drawn with ``RandomState(split_seed)``;
    nothing is moved, the realised split is stored in the run record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clbench.config import option
from clbench.data.download import Source
from clbench.data.splits import SplitLists, apply_seeded_split, coda_yaml, presplit_folders
from clbench.errors import DataError
from clbench.registry import register_benchmark

from .real import RealBenchmark, RealBenchmarkConfig

BERKELEY = "https://people.eecs.berkeley.edu/~hendrycks/"
CODA_SPLITS_URL = "https://raw.githubusercontent.com/GT-RIPL/CODA-Prompt/main/dataloaders/splits/"
CODA_SHA256 = {  # of GT-RIPL/CODA-Prompt dataloaders/splits/imagenet-r_{train,test}.yaml
    "train": "6bcaa14ca9359915ac3a44c48ae71388146385686eb15da79a37844421a0b845",
    "test": "57275ac242d68983a4f39ccb81ec34f48b1bd920b9cd79e6e8040d7c042db02a",
}
APER_NOTE = ("the APER/RevisitingCIL authors' archive, linked from the README of github.com/zhoudw-zdw/RevisitingCIL "
             "(Google Drive / OneDrive)")


def coda_split_dir(cfg, dataset_dir: Path) -> Path:
    """Where the CODA YAML lists are: ``benchmark.split_dir``, else ``splits/coda-prompt`` under
    the data root (or beside the dataset folder)."""
    if cfg.split_dir:
        return Path(cfg.split_dir).expanduser()
    root = Path(cfg.data_root).expanduser() if cfg.data_root else dataset_dir.parent
    return root / "splits" / "coda-prompt"


def raw_folder_fix(dirname: str) -> str:
    return (f"The pre-split archive has train/ and test/ folders; the Hendrycks release has one folder per wnid "
            f"({dirname}/<wnid>/*.jpg). For the pre-split layout use --set benchmark.split=presplit; for the "
            f"Hendrycks release use --set benchmark.split=coda or seeded.")


@dataclass
class ImageNetRConfig(RealBenchmarkConfig):
    """Options of ``imagenet_r``."""

    n_tasks: int = 10
    split: Literal["presplit", "coda", "seeded"] = option(
        "presplit", "presplit: APER (SD-LoRA); coda: CODA-Prompt's YAML lists; seeded: a seeded split")
    split_dir: str | None = option(
        None, "coda: folder with imagenet-r_{train,test}.yaml; default <data_root>/splits/coda-prompt")
    verify_split_checksum: bool = option(True, "coda: the YAMLs must have the published sha256")
    test_fraction: float = option(0.2, "seeded: share of each class's images held out for testing", gt=0, lt=1)
    split_seed: int = option(1993, "seeded: seed of the split", ge=0, lt=2**32)


@register_benchmark("imagenet_r")
class ImageNetR(RealBenchmark):
    """ImageNet-R, 200 classes; splits presplit (APER, SD-LoRA), coda (YAML lists) or seeded 80/20."""

    Config = ImageNetRConfig
    title = "ImageNet-R"
    n_classes = 200

    def dirnames(self, cfg: ImageNetRConfig) -> tuple[str, ...]:
        return ("imagenet-r",)

    def layout(self, cfg: ImageNetRConfig) -> str:
        if cfg.split == "presplit":
            return "imagenet-r/train/<wnid>/*.jpg and imagenet-r/test/<wnid>/*.jpg (APER imagenet-r.zip)"
        text = "imagenet-r/<wnid>/*.jpg (Hendrycks imagenet-r.tar)"
        if cfg.split == "coda":
            text += " plus splits/coda-prompt/imagenet-r_{train,test}.yaml (or benchmark.split_dir)"
        return text

    def sources(self, cfg: ImageNetRConfig) -> list[Source]:
        if cfg.split == "presplit":
            return [Source("imagenet-r.zip", None, md5="730aa3fb9c7d2ec0b6381c6b23040681", note=APER_NOTE)]
        out = [Source("imagenet-r.tar", BERKELEY + "imagenet-r.tar", note="Hendrycks et al., about 2 GB")]
        if cfg.split == "coda":
            split_dir = Path(cfg.split_dir).expanduser() if cfg.split_dir else None
            for part in ("train", "test"):
                out.append(Source(f"imagenet-r_{part}.yaml", CODA_SPLITS_URL + f"imagenet-r_{part}.yaml",
                                  sha256=CODA_SHA256[part], unpack=False,
                                  subdir=str(split_dir) if split_dir else "splits/coda-prompt",
                                  note="CODA-Prompt split list (MIT licence)"))
        return out

    def expected_counts(self, cfg: ImageNetRConfig) -> dict[str, int]:
        if cfg.split == "coda":
            return {"train": 24_000, "test": 6_000}
        return {"total": 30_000}

    def split_lists(self, cfg: ImageNetRConfig, dataset_dir: Path) -> SplitLists:
        if cfg.split == "presplit":
            return presplit_folders(dataset_dir, "imagenet-r", raw_folder_fix(dataset_dir.name))
        if (dataset_dir / "train").is_dir() and (dataset_dir / "test").is_dir():
            raise DataError(f"{dataset_dir} holds train/ and test/ folders (the pre-split APER layout), but "
                            f"benchmark.split is '{cfg.split}'. " + raw_folder_fix(dataset_dir.name))
        if cfg.split == "coda":
            split_dir = coda_split_dir(cfg, dataset_dir)
            files = [split_dir / f"imagenet-r_{s}.yaml" for s in ("train", "test")]
            if not all(f.is_file() for f in files):
                raise DataError(
                    f"The CODA-Prompt split lists are not in {split_dir} (looked for imagenet-r_train.yaml and "
                    f"imagenet-r_test.yaml). Download them with 'clbench data download imagenet_r --set "
                    f"benchmark.split=coda --data-root DIR' (from {CODA_SPLITS_URL}, sha256 checked), or pass "
                    f"their folder with --set benchmark.split_dir=/folder.")
            return coda_yaml(dataset_dir, files[0], files[1], "imagenet-r", keep=2,
                             expected=CODA_SHA256, verify=cfg.verify_split_checksum,
                             missing_fix=f"The CODA lists name files of the Hendrycks release; extract imagenet-r.tar "
                                         f"({BERKELEY}imagenet-r.tar) so that {dataset_dir}/<wnid>/<file> exists.")
        return apply_seeded_split(dataset_dir, "imagenet-r", cfg.test_fraction, cfg.split_seed)
