"""``domainnet``: DomainNet, all 345 classes in 5 tasks of 69 (CODA-Prompt/InfLoRA/SD-LoRA protocol).

Every image of a class, from every included domain, belongs to that class's task. Splits:

``official`` (default)
    the M3SDA lists ``<domain>_train.txt`` / ``<domain>_test.txt`` (lines ``domain/class/file.jpg
    label``) of the domains in ``benchmark.domains``; default: the five domains of the CODA
    lists (quickdraw left out, CODA-Prompt issue #19). Labels: the lists' class ids.
``coda``
    CODA-Prompt's ``domainnet_{train,test}.yaml`` (no published checksum: the record keeps the
    sha256 of the files used). Labels: the YAML targets.

Layout: ``<root>/domainnet/<domain>/<class>/<file>.jpg`` plus the lists in ``<root>/domainnet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clbench.config import option
from clbench.data.download import Source, file_digest
from clbench.data.splits import (Samples, SplitLists, coda_yaml, digest, existing_sizes, label_map_from_lists,
                                 read_file_list, require_all_classes)
from clbench.errors import DataError
from clbench.registry import register_benchmark

from .imagenet_r import coda_split_dir
from .real import RealBenchmark, RealBenchmarkConfig

M3SDA = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
CLEANED = ("clipart", "painting")  # domains whose zips are the cleaned 'groundtruth' versions
ALL_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


@dataclass
class DomainNetConfig(RealBenchmarkConfig):
    """Options of ``domainnet``."""

    n_tasks: int = 5
    split: Literal["official", "coda"] = option(
        "official", "official: the dataset's lists; coda: CODA-Prompt's YAMLs")
    domains: tuple[str, ...] = option(("clipart", "infograph", "painting", "real", "sketch"),
                                      "official: the domains whose lists are read")
    split_dir: str | None = option(None, "coda: folder with domainnet_{train,test}.yaml")


@register_benchmark("domainnet")
class DomainNet(RealBenchmark):
    """DomainNet, 345 classes over 5 domains (no quickdraw), 5 tasks; official lists or CODA YAMLs."""

    Config = DomainNetConfig
    title = "DomainNet"
    n_classes = 345

    def dirnames(self, cfg: DomainNetConfig) -> tuple[str, ...]:
        return ("domainnet", "DomainNet")

    def layout(self, cfg: DomainNetConfig) -> str:
        text = "domainnet/<domain>/<class>/*.jpg"
        if cfg.split == "official":
            return text + f" and domainnet/<domain>_{{train,test}}.txt for {', '.join(cfg.domains)}"
        return text + " plus splits/coda-prompt/domainnet_{train,test}.yaml (or benchmark.split_dir)"

    def sources(self, cfg: DomainNetConfig) -> list[Source]:
        domains = cfg.domains if cfg.split == "official" else tuple(d for d in ALL_DOMAINS if d != "quickdraw")
        out = []
        for d in domains:
            out.append(Source(f"{d}.zip", M3SDA + ("groundtruth/" if d in CLEANED else "") + f"{d}.zip",
                              subdir="domainnet", note="M3SDA, ai.bu.edu/M3SDA"))
            if cfg.split == "official":
                out += [Source(f"{d}_{s}.txt", M3SDA + f"domainnet/txt/{d}_{s}.txt", unpack=False, subdir="domainnet")
                        for s in ("train", "test")]
        if cfg.split == "coda":
            out += [Source(f"domainnet_{s}.yaml", None, unpack=False, subdir="splits/coda-prompt",
                           note="dataloaders/splits/ of github.com/GT-RIPL/CODA-Prompt") for s in ("train", "test")]
        return out

    def _list_file(self, dataset_dir: Path, domain: str, split: str) -> Path:
        for folder in (dataset_dir, dataset_dir / "txt", dataset_dir / "splits"):
            if (folder / f"{domain}_{split}.txt").is_file():
                return folder / f"{domain}_{split}.txt"
        raise DataError(f"The DomainNet list {domain}_{split}.txt is not in {dataset_dir} (nor in txt/ or splits/). "
                        f"Download it from {M3SDA}domainnet/txt/{domain}_{split}.txt ('clbench data download domainnet' "
                        f"fetches all of them).")

    def split_lists(self, cfg: DomainNetConfig, dataset_dir: Path) -> SplitLists:
        if cfg.split == "coda":
            split_dir = coda_split_dir(cfg, dataset_dir)
            files = [split_dir / f"domainnet_{s}.yaml" for s in ("train", "test")]
            return coda_yaml(dataset_dir, files[0], files[1], "domainnet", keep=3, expected=None, verify=False,
                             missing_fix="Unpack the DomainNet domain zips into this folder (<domain>/<class>/<file>).")
        unknown = [d for d in cfg.domains if d not in ALL_DOMAINS]
        if unknown or not cfg.domains:
            raise DataError(f"Unknown DomainNet domain(s) {unknown} in benchmark.domains; choose from {', '.join(ALL_DOMAINS)}.")
        parts: dict[str, list] = {"train": [[], [], []], "test": [[], [], []]}
        shas = []
        for split in ("train", "test"):
            for domain in cfg.domains:
                path = self._list_file(dataset_dir, domain, split)
                paths, labels = read_file_list(path)
                sizes = existing_sizes(dataset_dir, paths, str(path),
                                       f"Unpack {domain}.zip into {dataset_dir} ({domain}/<class>/<file>).")
                parts[split][0] += paths
                parts[split][1].append(labels)
                parts[split][2].append(sizes)
                shas.append(file_digest(path))
        samples = {s: Samples(dataset_dir, p[0], np.concatenate(p[1]), np.concatenate(p[2])) for s, p in parts.items()}
        names = label_map_from_lists([p.split("/")[-2] for p in samples["train"].paths + samples["test"].paths],
                                     np.concatenate([samples["train"].targets, samples["test"].targets]),
                                     f"the DomainNet lists in {dataset_dir}")
        require_all_classes(samples["train"].targets, samples["test"].targets, names,
                            ("the *_train.txt lists", "the *_test.txt lists"))
        lists_sha = digest(*shas)
        return SplitLists(samples["train"], samples["test"], names,
                          f"domainnet:official-lists:domains={'+'.join(cfg.domains)}:train={len(samples['train'])},"
                          f"test={len(samples['test'])}:lists={lists_sha}", "domainnet-list-labels",
                          {"split": "official-lists", "domains": list(cfg.domains), "lists_sha": lists_sha})
