"""Split providers: which files are train and test, and what their labels mean.

Every provider returns :class:`SplitLists`: relative file paths and integer labels per split,
the class names in label order, a split id (variant + checksum or parameters), a label-map id,
and compact provenance for the run record. None of them writes to the dataset directory.

* :func:`presplit_folders`: ``train/<class>/…`` and ``test/<class>/…`` (the APER archives);
  labels are the alphabetical class folders (torchvision ``ImageFolder``).
* :func:`coda_yaml`: CODA-Prompt's YAML lists (``data``/``targets``), sha256 checked; the label
  map is taken from the file.
* :func:`file_list_split`: lists of ``relative/path label`` lines (DomainNet's official lists).
* :func:`seeded_split`: a stratified ``test_fraction`` split drawn with ``RandomState(seed)``
  over a sorted file list; the realised split goes into the record (:func:`encode_mask`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .download import file_digest
from .images import IMG_EXTENSIONS


@dataclass
class Samples:
    """Files of one split: ``root / paths[i]`` has label ``targets[i]``; ``sizes`` in bytes."""

    root: Path
    paths: list[str]
    targets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> Samples:
        """The samples selected by a boolean mask or an index array."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return Samples(self.root, [self.paths[i] for i in idx], self.targets[idx], self.sizes[idx])


@dataclass
class SplitLists:
    """A train/test split of files with its provenance."""

    train: Samples
    test: Samples
    class_names: list[str]
    split_id: str
    label_map_id: str
    info: dict[str, Any] = field(default_factory=dict)


def digest(*parts: Any, n: int = 12) -> str:
    """Short sha256 over the string forms of ``parts`` (stable ids for lists)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part.astype(np.int64)).tobytes())
        elif isinstance(part, (list, tuple)):
            h.update("\n".join(map(str, part)).encode())
        else:
            h.update(str(part).encode())
        h.update(b"\x00")
    return h.hexdigest()[:n]


# ---------------------------------------------------------------------------- folders


def class_dirs(directory: Path) -> list[str]:
    """Sorted names of the sub-directories of ``directory`` (the ImageFolder classes)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def image_folder(directory: Path, what: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(classes, relative paths, labels, sizes) of an ImageFolder tree, in torchvision's order.

    ``what`` names the folder in error messages (e.g. 'the imagenet-r train/ folder').
    """
    if not directory.is_dir():
        raise DataError(f"Folder {directory} ({what}) does not exist.")
    classes = class_dirs(directory)
    if not classes:
        raise DataError(f"Folder {directory} ({what}) has no class sub-folders; expected {directory}/<class>/<image>.")
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        before = len(paths)
        for dirpath, _, filenames in sorted(os.walk(directory / name, followlinks=True)):
            for fname in sorted(filenames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    full = os.path.join(dirpath, fname)
                    paths.append(os.path.relpath(full, directory).replace(os.sep, "/"))
                    sizes.append(os.stat(full).st_size)
                    labels.append(label)
        if len(paths) == before:
            empty.append(name)
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) in {directory} ({what}) hold no images: {', '.join(empty[:5])}"
            f"{' …' if len(empty) > 5 else ''}. The extraction is incomplete: extract the archive again."
        )
    return classes, paths, np.asarray(labels, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def presplit_folders(dataset_dir: Path, dataset: str, wrong_layout_fix: str = "") -> SplitLists:
    """``train/<class>/`` and ``test/<class>/`` folders (APER/PILOT archives)."""
    missing = [s for s in ("train", "test") if not (dataset_dir / s).is_dir()]
    if missing:
        found = class_dirs(dataset_dir) if dataset_dir.is_dir() else []
        seen = f"it holds {len(found)} folders ({', '.join(found[:3])}{', …' if len(found) > 3 else ''})" if found else "it is empty"
        raise DataError(
            f"{dataset_dir} has no {' and no '.join(m + '/' for m in missing)} folder, so it is not the pre-split "
            f"layout <{dataset_dir.name}>/train/<class>/…, <{dataset_dir.name}>/test/<class>/… ({seen}). "
            f"{wrong_layout_fix}".strip()
        )
    train_cls, train_p, train_y, train_s = image_folder(dataset_dir / "train", f"{dataset} train/")
    test_cls, test_p, test_y, test_s = image_folder(dataset_dir / "test", f"{dataset} test/")
    if train_cls != test_cls:
        only_train = sorted(set(train_cls) - set(test_cls))
        only_test = sorted(set(test_cls) - set(train_cls))
        parts = []
        if only_train:
            parts.append(f"class(es) {', '.join(only_train[:5])} are missing from {dataset_dir / 'test'}")
        if only_test:
            parts.append(f"class(es) {', '.join(only_test[:5])} are missing from {dataset_dir / 'train'}")
        raise DataError(
            f"The {dataset} train/ and test/ folders disagree: {'; '.join(parts)}. Every class needs a folder "
            f"with images in both; extract the archive again (it may be incomplete)."
        )
    files = digest(train_p, train_y, test_p, test_y)
    return SplitLists(
        Samples(dataset_dir / "train", train_p, train_y, train_s),
        Samples(dataset_dir / "test", test_p, test_y, test_s),
        train_cls, f"{dataset}:presplit-folders:train={len(train_p)},test={len(test_p)}:files={files}",
        "folder-alphabetical", {"split": "presplit-folders", "files_sha": files},
    )


# ---------------------------------------------------------------------------- list files


def read_yaml_list(path: Path, expected_sha256: str | None, verify: bool) -> tuple[list[str], np.ndarray, str]:
    """(paths, targets, sha256) of a CODA-Prompt split YAML (parallel ``data``/``targets`` lists)."""
    import yaml

    if not path.is_file():
        raise DataError(f"Split file {path} does not exist.")
    sha = file_digest(path)
    if verify and expected_sha256 and sha != expected_sha256:
        raise DataError(
            f"Split file {path} has sha256 {sha}, but the published CODA-Prompt file has {expected_sha256}. "
            f"It is corrupt or modified: download it again ('clbench data download' with the coda split), or, "
            f"to use a modified list on purpose, --set benchmark.verify_split_checksum=false (the record keeps its sha256)."
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path) as fh:
            tree = yaml.load(fh, Loader=loader)
        paths, targets = list(tree["data"]), np.asarray(tree["targets"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"Split file {path} is not a CODA-style YAML with 'data' and 'targets' lists ({type(exc).__name__}: {exc}).") from None
    if len(paths) != len(targets):
        raise DataError(f"Split file {path} has {len(paths)} paths but {len(targets)} targets; download it again.")
    return [str(p) for p in paths], targets, sha


def strip_components(paths: Sequence[str], keep: int) -> list[str]:
    """The last ``keep`` path components (re-roots CODA's ``data/imagenet-r/<wnid>/<file>``)."""
    return ["/".join(p.replace("\\", "/").split("/")[-keep:]) for p in paths]


def label_map_from_lists(name_of: Sequence[str], targets: np.ndarray, source: str) -> list[str]:
    """Class names in label order from (class name, label) pairs; each name has one label."""
    pairs = {}
    for name, label in zip(name_of, targets.tolist()):
        if pairs.setdefault(label, name) != name:
            raise DataError(f"{source}: label {label} is used for both '{pairs[label]}' and '{name}'; the list is corrupt.")
    n = len(pairs)
    if sorted(pairs) != list(range(n)):
        raise DataError(f"{source}: labels are not 0..{n - 1} (found {min(pairs)}..{max(pairs)} with gaps); the list is corrupt.")
    names = [pairs[i] for i in range(n)]
    if len(set(names)) != n:
        dup = sorted({x for x in names if names.count(x) > 1})[:3]
        raise DataError(f"{source}: class(es) {dup} carry more than one label; the list is corrupt.")
    return names


def existing_sizes(root: Path, paths: Sequence[str], source: str, fix: str) -> np.ndarray:
    """File sizes of ``root / p``; raise naming the missing files when any are absent."""
    sizes = np.empty(len(paths), dtype=np.int64)
    missing = []
    for i, p in enumerate(paths):
        try:
            sizes[i] = os.stat(os.path.join(root, p)).st_size
        except OSError:
            missing.append(p)
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(paths)} files listed in {source} are missing under {root} "
            f"(e.g. {', '.join(missing[:3])}). {fix}"
        )
    return sizes


def require_all_classes(train: np.ndarray, test: np.ndarray, class_names: list[str], where: tuple[str, str]) -> None:
    """Every class of the label map must have samples in both splits."""
    for targets, source in ((train, where[0]), (test, where[1])):
        counts = np.bincount(targets, minlength=len(class_names))
        missing = [class_names[c] for c in np.flatnonzero(counts == 0)]
        if missing:
            raise DataError(
                f"Class(es) {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} have no samples in {source}; "
                f"every class needs train and test samples. Restore the missing files or use the complete split file."
            )


def coda_yaml(dataset_dir: Path, train_yaml: Path, test_yaml: Path, dataset: str, keep: int,
              expected: dict[str, str] | None, verify: bool, missing_fix: str) -> SplitLists:
    """CODA-Prompt YAML lists, re-rooted at ``dataset_dir`` (keeping the last ``keep`` components)."""
    lists, shas = {}, {}
    for split, path in (("train", train_yaml), ("test", test_yaml)):
        raw, targets, sha = read_yaml_list(path, (expected or {}).get(split), verify)
        rel = strip_components(raw, keep)
        lists[split] = (rel, targets, existing_sizes(dataset_dir, rel, str(path), missing_fix))
        shas[split] = sha
    all_paths = lists["train"][0] + lists["test"][0]
    all_targets = np.concatenate([lists["train"][1], lists["test"][1]])
    class_of = [p.split("/")[-2] for p in all_paths]
    names = label_map_from_lists(class_of, all_targets, f"{train_yaml.name} + {test_yaml.name}")
    require_all_classes(lists["train"][1], lists["test"][1], names, (str(train_yaml), str(test_yaml)))
    overlap = set(lists["train"][0]) & set(lists["test"][0])
    if overlap:
        raise DataError(f"{len(overlap)} files are in both {train_yaml} and {test_yaml} (e.g. {sorted(overlap)[0]}); the lists are corrupt.")
    verified = bool(verify and expected)
    return SplitLists(
        Samples(dataset_dir, *lists["train"]), Samples(dataset_dir, *lists["test"]), names,
        f"{dataset}:coda-yaml:train={shas['train'][:12]},test={shas['test'][:12]}", "coda-yaml",
        {"split": "coda-yaml", "split_files": {s: {"path": str(p), "sha256": shas[s], "verified": verified}
                                               for s, p in (("train", train_yaml), ("test", test_yaml))}},
    )


def read_file_list(path: Path) -> tuple[list[str], np.ndarray]:
    """``relative/path label`` lines (DomainNet's official lists)."""
    if not path.is_file():
        raise DataError(f"List file {path} does not exist.")
    paths, labels = [], []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                paths.append(parts[0])
                labels.append(int(parts[1]))
            except ValueError:
                raise DataError(f"{path}, line {n}: expected 'relative/path.jpg <label>', got {line.strip()!r}. "
                                f"The list is corrupt: download it again.") from None
    return paths, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------- seeded split


def seeded_split(targets: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: per class (label order), ``RandomState(seed)`` permutes the class's
    files (in their sorted order) and the first ``round(n * test_fraction)`` (at least 1, at
    most n-1) become test files. Deterministic across NumPy versions (legacy stream)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"benchmark.test_fraction must be between 0 and 1, got {test_fraction}.")
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(targets), dtype=bool)
    for label in range(int(targets.max()) + 1 if len(targets) else 0):
        idx = np.flatnonzero(targets == label)
        if len(idx) < 2:
            raise DataError(f"Class {label} has {len(idx)} file(s); a seeded split needs at least 2 per class.")
        n_test = min(len(idx) - 1, max(1, int(round(len(idx) * test_fraction))))
        mask[idx[rng.permutation(len(idx))[:n_test]]] = True
    return mask


def encode_mask(mask: np.ndarray) -> str:
    """A boolean mask as base64 of zlib-compressed bits (about 1 KB per 10,000 files)."""
    return base64.b64encode(zlib.compress(np.packbits(mask.astype(bool)).tobytes(), 9)).decode()


def decode_mask(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`."""
    return np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8))[:n].astype(bool)


def apply_seeded_split(dataset_dir: Path, dataset: str, test_fraction: float, seed: int) -> SplitLists:
    """Split the ImageFolder tree ``dataset_dir`` into train/test with :func:`seeded_split`;
    nothing is moved."""
    classes, paths, targets, sizes = image_folder(dataset_dir, f"the {dataset} folder")
    mask = seeded_split(targets, test_fraction, seed)
    files = digest(paths, targets)
    all_files = Samples(dataset_dir, paths, targets, sizes)
    return SplitLists(
        all_files.subset(~mask), all_files.subset(mask), classes,
        f"{dataset}:seeded:test_fraction={test_fraction},seed={seed}:files={files}", "folder-alphabetical",
        {"split": "seeded", "seeded_split": {
            "seed": seed, "test_fraction": test_fraction, "stratified": True, "n_files": len(paths),
            "files_sha": files, "file_order": "sorted ImageFolder order (class folder, then path)",
            "test_mask": encode_mask(mask), "test_mask_encoding": "base64(zlib(numpy.packbits(mask)))",
        }},
    )
