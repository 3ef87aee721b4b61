"""``shapes``: the embedded default benchmark (procedural images, runs offline in minutes).

Every class is a random draw of a procedural image family: a shape (8 kinds) with its own
size, aspect and orientation, filled with a coloured grating, on a background of another
colour and grating. Samples of a class vary in position, scale, rotation, grating phase,
colour and noise. Class ``c`` is fully determined by ``RandomState(c)``, so the benchmark
is identical on every machine and needs no files.

The pretrained backbone (``vit_micro_patch4_32.shapes_pre``) was trained by
:func:`pretrain_backbone` on classes ``PRETRAIN_CLASS_BASE + i``, which never appear in the
benchmark (classes ``0..n_classes-1``): the pretrained-model setting of the real benchmarks,
in miniature. Re-create it with ``clbench pretrain-embedded`` (see README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from clbench.backbones import EMBEDDED_BACKBONE
from clbench.config import BenchmarkConfig, option
from clbench.data.datasets import TensorImageDataset, random_crop_flip
from clbench.registry import register_benchmark

from .base import Benchmark, BenchmarkData

IMAGE_SIZE = 32
N_SHAPES = 8
PRETRAIN_CLASS_BASE = 1_000_000  # pretraining classes live far from benchmark class ids


@dataclass(frozen=True)
class ClassSpec:
    """The parameters that define one procedural class."""

    shape: int
    radius: float
    aspect: float
    angle: float
    fg: np.ndarray
    bg: np.ndarray
    fg_freq: float
    fg_theta: float
    bg_freq: float
    bg_theta: float

    @classmethod
    def draw(cls, class_id: int) -> ClassSpec:
        rng = np.random.RandomState(class_id)
        return cls(
            shape=int(rng.randint(N_SHAPES)),
            radius=float(rng.uniform(6.0, 11.0)),
            aspect=float(rng.uniform(0.6, 1.0)),
            angle=float(rng.uniform(0, math.pi)),
            fg=rng.uniform(0.05, 0.95, 3),
            bg=rng.uniform(0.05, 0.95, 3),
            fg_freq=float(rng.uniform(1.0, 6.0)),
            fg_theta=float(rng.uniform(0, math.pi)),
            bg_freq=float(rng.uniform(1.0, 6.0)),
            bg_theta=float(rng.uniform(0, math.pi)),
        )


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft mask of a unit-size shape in rotated, scaled coordinates (u, v)."""
    r = np.sqrt(u**2 + v**2)
    if kind == 0:  # disk
        d = r - 1.0
    elif kind == 1:  # square
        d = np.maximum(np.abs(u), np.abs(v)) - 0.85
    elif kind == 2:  # triangle
        d = np.maximum(np.maximum(-v - 0.5, v * 0.5 + u * 0.866 - 0.5), v * 0.5 - u * 0.866 - 0.5) * 1.6
    elif kind == 3:  # cross
        d = np.minimum(np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0), np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3))
    elif kind == 4:  # ring
        d = np.abs(r - 0.75) - 0.25
    elif kind == 5:  # diamond
        d = (np.abs(u) + np.abs(v)) - 1.0
    elif kind == 6:  # two bars
        d = np.maximum(np.abs(np.abs(u) - 0.5) - 0.2, np.abs(v) - 1.0)
    else:  # five-pointed star
        phi = np.arctan2(v, u)
        d = r - (0.65 + 0.35 * np.cos(5 * phi))
    return 1.0 / (1.0 + np.exp(np.clip(d * 8.0, -30, 30)))  # soft edge


def render_class(class_id: int, n: int, seed: int) -> np.ndarray:
    """Render ``n`` samples of class ``class_id`` as uint8 (n, 3, 32, 32); ``seed`` picks the samples."""
    spec = ClassSpec.draw(class_id)
    rng = np.random.RandomState((seed * 1_000_003 + class_id) % (2**32))
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    xx = xx[None] - (s - 1) / 2
    yy = yy[None] - (s - 1) / 2
    cx = rng.uniform(-4, 4, (n, 1, 1))
    cy = rng.uniform(-4, 4, (n, 1, 1))
    scale = spec.radius * rng.uniform(0.8, 1.15, (n, 1, 1))
    ang = spec.angle + rng.uniform(-0.35, 0.35, (n, 1, 1))
    x0, y0 = xx - cx, yy - cy
    u = (x0 * np.cos(ang) + y0 * np.sin(ang)) / scale
    v = (-x0 * np.sin(ang) + y0 * np.cos(ang)) / (scale * spec.aspect)
    mask = _shape_mask(spec.shape, u, v)[:, None]  # (n, 1, s, s)

    def grating(freq: float, theta: float) -> np.ndarray:
        t = theta + rng.uniform(-0.15, 0.15, (n, 1, 1))
        phase = rng.uniform(0, 2 * math.pi, (n, 1, 1))
        w = 2 * math.pi * freq / s
        return np.sin(w * (xx * np.cos(t) + yy * np.sin(t)) + phase)[:, None]

    jitter = lambda: rng.uniform(-0.08, 0.08, (n, 3, 1, 1))  # noqa: E731
    fg = (spec.fg[None, :, None, None] + jitter()) * (1 + 0.35 * grating(spec.fg_freq, spec.fg_theta))
    bg = (spec.bg[None, :, None, None] + jitter()) * (1 + 0.2 * grating(spec.bg_freq, spec.bg_theta))
    img = mask * fg + (1 - mask) * bg
    img = img * rng.uniform(0.85, 1.15, (n, 1, 1, 1)) + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_split(class_ids: list[int], per_class: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Images and labels (positions in ``class_ids``) for ``per_class`` samples of each class."""
    images = np.concatenate([render_class(c, per_class, seed) for c in class_ids])
    labels = np.repeat(np.arange(len(class_ids)), per_class)
    return torch.from_numpy(images), labels


@dataclass
class ShapesConfig(BenchmarkConfig):
    """Options of the embedded ``shapes`` benchmark."""

    n_tasks: int = 5
    n_classes: int = option(50, "number of classes (ids 0..n_classes-1)", ge=1, lt=PRETRAIN_CLASS_BASE)
    train_per_class: int = option(100, "training images per class", ge=1)
    test_per_class: int = option(40, "test images per class", ge=1)
    data_seed: int = option(0, "which samples are drawn (the classes themselves never change)", ge=0)
    augment: bool = option(True, "random crop (pad 2) and horizontal flip during training")


@register_benchmark("shapes")
class Shapes(Benchmark):
    """Embedded default: 50 procedural shape/texture classes, 32 px, 5 tasks; offline, no files."""

    Config = ShapesConfig
    defaults = {
        "backbone.name": EMBEDDED_BACKBONE,
        "train.epochs": 5,
        "train.batch_size": 64,
        "train.eval_batch_size": 500,
    }

    @classmethod
    def input_size(cls, cfg: ShapesConfig) -> int:
        return 32

    def load(self, cfg: ShapesConfig) -> BenchmarkData:
        classes = list(range(cfg.n_classes))
        train_x, train_y = render_split(classes, cfg.train_per_class, seed=2 * cfg.data_seed)
        test_x, test_y = render_split(classes, cfg.test_per_class, seed=2 * cfg.data_seed + 1)
        transform = random_crop_flip(2) if cfg.augment else None
        return BenchmarkData(
            train=TensorImageDataset(train_x, train_y, transform),
            test=TensorImageDataset(test_x, test_y),
            class_names=[f"shape{c:03d}" for c in classes],
            split_id=f"shapes-v1:classes={cfg.n_classes}:train={cfg.train_per_class}:test={cfg.test_per_class}:seed={cfg.data_seed}",
            label_map_id="shapes-v1-class-id",
        )


def pretrain_backbone(out: str | None = None, n_classes: int = 400, per_class: int = 60, epochs: int = 30,
                      batch_size: int = 128, lr: float = 1e-3, seed: int = 0, log=print) -> str:
    """Pretrain the embedded backbone on ``n_classes`` pretraining classes (disjoint from the
    benchmark's) and save it as fp16 safetensors; returns the file's SHA-256.

    This is what ``clbench pretrain-embedded`` runs; with the defaults it reproduces the
    bundled ``vit_micro_patch4_32.shapes_pre`` weights (about 25 minutes on 2 CPU cores).
    """
    import time
    from pathlib import Path

    from safetensors.torch import save_file
    from torch.nn import functional as F

    from clbench.backbones import ASSETS, create_backbone
    from clbench.config import BackboneConfig
    from clbench.data.download import file_digest

    torch.manual_seed(seed)
    classes = [PRETRAIN_CLASS_BASE + i for i in range(n_classes)]
    images, labels = render_split(classes, per_class, seed=seed)
    labels_t = torch.from_numpy(labels)
    augment = random_crop_flip(2)
    backbone = create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights="none"))
    head = torch.nn.Linear(backbone.embed_dim, n_classes)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.05)
    for epoch in range(epochs):
        start, correct, seen = time.time(), 0, 0
        perm = torch.randperm(len(images))
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x = augment(images[idx]).float() / 255
            logits = head(backbone(x))
            loss = F.cross_entropy(logits, labels_t[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels_t[idx]).sum())
            seen += len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train acc {100 * correct / seen:.1f}%, {time.time() - start:.0f}s")
    path = Path(out) if out else ASSETS / f"{EMBEDDED_BACKBONE}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in backbone.vit.state_dict().items()}
    save_file(state, str(path), metadata={"source": "clbench pretrain-embedded", "classes": str(n_classes),
                                          "per_class": str(per_class), "epochs": str(epochs), "seed": str(seed)})
    return file_digest(path)
