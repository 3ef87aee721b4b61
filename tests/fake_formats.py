"""Generators of the real on-disk dataset formats, tiny, in a temporary directory.

Each writes exactly what the real release looks like (folder trees, pickles, text lists,
YAML lists), so the production loaders run unchanged on them. Images are small JPEGs whose
colour depends on the class (a run can learn something) plus per-image noise.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

RENDITIONS = ("art", "cartoon", "misc", "painting", "sketch", "tattoo")


def class_colour(label: int) -> np.ndarray:
    return np.random.RandomState(label + 7).randint(30, 225, 3)


def image_array(label: int, index: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image (h, w, 3): a class colour with a darker square and noise."""
    w, h = size
    rng = np.random.RandomState(label * 10_007 + index)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = class_colour(label)
    y0, x0 = rng.randint(0, max(1, h // 2)), rng.randint(0, max(1, w // 2))
    img[y0:y0 + h // 3, x0:x0 + w // 3] *= 0.4
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, label: int, index: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(image_array(label, index, size)).save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def wnids(n: int) -> list[str]:
    """ImageNet-style class ids, not in label order when sorted differently (fixed set)."""
    return [f"n{(1_000_000 + 7919 * i) % 10_000_000:08d}" for i in range(n)]


def image_folder(root: Path, classes: list[str], per_class: int | list[int], size=(40, 30), start: int = 0,
                 naming: str = "{rendition}_{i}.jpg") -> list[str]:
    """``root/<class>/<file>`` for every class; returns the relative paths."""
    counts = per_class if isinstance(per_class, list) else [per_class] * len(classes)
    out = []
    for label, (name, n) in enumerate(zip(classes, counts)):
        for i in range(start, start + n):
            rel = f"{name}/" + naming.format(rendition=RENDITIONS[i % len(RENDITIONS)], i=i, label=label)
            write_image(root / rel, label, i, size)
            out.append(rel)
    return out


def imagenet_r_raw(data_root: Path, n_classes: int = 4, per_class: int = 6, size=(40, 30)) -> Path:
    """The Hendrycks release: ``imagenet-r/<wnid>/<rendition>_<n>.jpg`` plus a README."""
    folder = data_root / "imagenet-r"
    image_folder(folder, wnids(n_classes), per_class, size)
    (folder / "README.txt").write_text("ImageNet-R (fake)\n")
    return folder


def presplit(data_root: Path, dirname: str, classes: list[str], train_per_class: int, test_per_class: int,
             size=(40, 30)) -> Path:
    """APER archives: ``<dirname>/train/<class>/…`` and ``<dirname>/test/<class>/…``."""
    folder = data_root / dirname
    image_folder(folder / "train", classes, train_per_class, size)
    image_folder(folder / "test", classes, test_per_class, size, start=train_per_class)
    return folder


def coda_yaml(path: Path, rel_paths: list[str], targets: list[int], prefix: str = "data/imagenet-r") -> Path:
    """CODA-Prompt's list format: a mapping with parallel ``data`` and ``targets`` lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"data": [f"{prefix}/{p}" for p in rel_paths], "targets": [int(t) for t in targets]},
                                   default_flow_style=False))
    return path


def coda_split_for(folder: Path, split_dir: Path, label_perm: list[int] | None = None,
                   test_every: int = 3) -> tuple[Path, Path]:
    """CODA-style train/test YAMLs over an ImageNet-R-like folder; labels from ``label_perm``
    (CODA's ids are not alphabetical), every ``test_every``-th file of a class is test."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    perm = label_perm or list(range(len(classes)))[::-1]
    train, test = ([], []), ([], [])
    for c, name in enumerate(classes):
        for i, f in enumerate(sorted((folder / name).iterdir())):
            side = test if i % test_every == 0 else train
            side[0].append(f"{name}/{f.name}")
            side[1].append(perm[c])
    return (coda_yaml(split_dir / "imagenet-r_train.yaml", *train), coda_yaml(split_dir / "imagenet-r_test.yaml", *test))


def cifar100(data_root: Path, train_per_class: int = 3, test_per_class: int = 2, n_classes: int = 100) -> Path:
    """``cifar-100-python/{train,test,meta}`` pickles with the real keys."""
    folder = data_root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class_{i:03d}" for i in range(n_classes)]
    for split, per, offset in (("train", train_per_class, 0), ("test", test_per_class, 1000)):
        labels = np.repeat(np.arange(n_classes), per)
        images = np.stack([image_array(int(y), offset + i, (32, 32)) for i, y in enumerate(labels)])
        entry = {"filenames": [f"img_{i}.png" for i in range(len(labels))], "batch_label": f"{split} batch",
                 "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                 "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1)}
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}, fh, protocol=2)
    return folder


def cub(data_root: Path, n_classes: int = 4, per_class: int = 5, test_every: int = 2) -> Path:
    """``CUB_200_2011/`` with ``images/<NNN.Name>/…`` and the four metadata text files."""
    folder = data_root / "CUB_200_2011"
    classes = [f"{i + 1:03d}.Bird_{chr(65 + i % 26)}{i}" for i in range(n_classes)]
    images, labels, split = [], [], []
    for c, name in enumerate(classes):
        for i in range(per_class):
            rel = f"{name}/{name.split('.')[1]}_{i:04d}_{c}.jpg"
            write_image(folder / "images" / rel, c, i)
            images.append(rel)
            labels.append(c + 1)
            split.append(0 if i % test_every == 0 else 1)
    ids = range(1, len(images) + 1)
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in zip(ids, images)))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {y}\n" for i, y in zip(ids, labels)))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in zip(ids, split)))
    (folder / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(classes)))
    return folder


def domainnet(data_root: Path, domains=("clipart", "real"), n_classes: int = 4, per_class: int = 3,
              test_every: int = 3) -> Path:
    """``domainnet/<domain>/<class>/<domain>_<cls>_<id>.jpg`` plus ``<domain>_{train,test}.txt``."""
    folder = data_root / "domainnet"
    classes = [f"thing_{chr(97 + i)}" for i in range(n_classes)]
    for domain in domains:
        lines = {"train": [], "test": []}
        for c, name in enumerate(classes):
            for i in range(per_class):
                rel = f"{domain}/{name}/{domain}_{c:03d}_{i:06d}.jpg"
                write_image(folder / rel, c, i + 100 * len(lines["train"]))
                lines["test" if i % test_every == 0 else "train"].append(f"{rel} {c}\n")
        for split, rows in lines.items():
            (folder / f"{domain}_{split}.txt").write_text("".join(rows))
    return folder


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def corrupt(path: Path) -> Path:
    """Replace a file's bytes by garbage (not an image at all)."""
    path.write_bytes(b"this is not an image" * 10)
    return path


def archive(src: Path, dest: Path, arcname: str | None = None) -> Path:
    """Pack ``src`` (a folder) into ``dest`` (.zip, .tar or .tar.gz), under ``arcname``."""
    arcname = arcname or src.name
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w") as zf:
            for f in sorted(src.rglob("*")):
                zf.write(f, f"{arcname}/{f.relative_to(src)}")
    else:
        with tarfile.open(dest, "w:gz" if dest.name.endswith(".gz") else "w") as tf:
            tf.add(src, arcname)
    return dest


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``: compare before/after to prove nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def jpeg_bytes(label: int = 0, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_array(label, 0, size)).save(buf, "JPEG")
    return buf.getvalue()
