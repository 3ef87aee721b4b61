"""Image pipelines of the reference code, on PIL images and on the decoded cache.

Two pipelines (docs/protocol.md, "Image pipelines"), both ending in uint8 HWC arrays that the trainer turns
into float [0,1] on the device (what ``ToTensor`` gives, no mean/std normalisation):

``pilot`` (PILOT, APER, SD-LoRA, and InfLoRA on IN-A/CUB)
    train: RandomResizedCrop(224, scale (0.05, 1), ratio (3/4, 4/3), bilinear) + flip;
    eval: Resize(256, bicubic) + CenterCrop(224).
``coda`` (CODA-Prompt, and InfLoRA on IN-R/DomainNet)
    train: RandomResizedCrop(224) (scale (0.08, 1)) + flip;
    eval: Resize(256, bilinear) + CenterCrop(224); CIFAR: Resize(224).

The file path calls torchvision's own functions, so it is the reference pipeline by
construction. The cached path starts from the image as the cache stores it: the eval resize
already applied (:meth:`Pipeline.store`). Its eval transform is then a centre crop, bit-exact
with the file path; its train transform draws the crop box from the same random stream on the
*original* image size, maps the box onto the stored image and resamples it from there. The
differences: it resamples a copy whose shorter side is ``resize`` rather than the original,
the box snaps to stored pixels, and torch's resampling kernel replaces PIL's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from ..errors import ConfigError

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class Pipeline:
    """One train/eval pipeline; all sizes in pixels."""

    name: str
    size: int = 224  # output side (crop size)
    resize: int = 256  # eval: shorter side resized to this, then a centre crop of ``size``
    eval_interp: str = "bicubic"
    train_scale: tuple[float, float] = (0.05, 1.0)
    train_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    train_interp: str = "bilinear"
    flip: bool = True

    def describe(self) -> dict:
        """JSON facts for the run record."""
        return asdict(self)

    # ------------------------------------------------------------------ file path (PIL)
    def train_pil(self, img: Image.Image) -> np.ndarray:
        """RandomResizedCrop + horizontal flip, exactly as torchvision applies them."""
        top, left, h, w = RandomResizedCrop.get_params(img, list(self.train_scale), list(self.train_ratio))
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], _MODES[self.train_interp])
        if self.flip and torch.rand(1) < 0.5:
            img = TF.hflip(img)
        return np.asarray(img)

    def store(self, img: Image.Image) -> np.ndarray:
        """The eval resize (shorter side to ``resize``), as the cache keeps every image."""
        return np.asarray(TF.resize(img, [self.resize], _MODES[self.eval_interp]))

    def eval_pil(self, img: Image.Image) -> np.ndarray:
        """Resize(resize) + CenterCrop(size)."""
        return center_crop(self.store(img), self.size)

    # ------------------------------------------------------------------ cached path (arrays)
    def eval_cached(self, stored: np.ndarray) -> np.ndarray:
        """Eval transform of an image stored by :meth:`store` (bit-exact with :meth:`eval_pil`)."""
        return center_crop(stored, self.size)

    def train_cached(self, stored: np.ndarray, orig_h: int, orig_w: int) -> np.ndarray:
        """Train transform of a stored image whose original size was ``orig_h`` x ``orig_w``.

        Consumes the random stream exactly like :meth:`train_pil` on the original image; the
        crop box is mapped onto the stored image (to the nearest stored pixel) and resampled
        with torch's antialiased uint8 kernel (within 1-2 levels of PIL's, several times faster).
        """
        shape = torch.empty(()).expand(3, orig_h, orig_w)  # get_params only reads the size
        top, left, h, w = RandomResizedCrop.get_params(shape, list(self.train_scale), list(self.train_ratio))
        sy, sx = stored.shape[0] / orig_h, stored.shape[1] / orig_w
        y0, x0 = min(round(top * sy), stored.shape[0] - 1), min(round(left * sx), stored.shape[1] - 1)
        y1, x1 = max(y0 + 1, round((top + h) * sy)), max(x0 + 1, round((left + w) * sx))
        crop = torch.from_numpy(np.array(stored[y0:y1, x0:x1])).permute(2, 0, 1)[None]  # a writable copy of the memmap crop
        out = F.interpolate(crop, size=(self.size, self.size), mode=self.train_interp, antialias=True, align_corners=False)
        out = out[0].permute(1, 2, 0).numpy()
        if self.flip and torch.rand(1) < 0.5:
            out = out[:, ::-1]
        return out


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop on an HWC array (same rounding of the offsets)."""
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of {h}x{w} is smaller than the crop {size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top:top + size, left:left + size]


PIPELINES = ("pilot", "coda")


def pipeline(name: str, size: int = 224, resize: int | None = None) -> Pipeline:
    """The named pipeline at output side ``size``; ``resize`` defaults to ``size * 8/7`` (256 at 224)."""
    resize = resize if resize is not None else int(size * 256 / 224)
    if resize < size:
        raise ConfigError(f"benchmark.resize_size ({resize}) must be at least benchmark.image_size ({size}).")
    if name == "pilot":
        return Pipeline("pilot", size, resize, "bicubic", (0.05, 1.0))
    if name == "coda":
        return Pipeline("coda", size, resize, "bilinear", (0.08, 1.0))
    raise ConfigError(f"Unknown transforms '{name}'. Use one of: {', '.join(PIPELINES)}.")


def to_chw_batch(images: list[np.ndarray]) -> torch.Tensor:
    """Stack HWC uint8 arrays of equal size into one contiguous (N, C, H, W) uint8 tensor."""
    first = images[0]
    out = np.empty((len(images), first.shape[2], first.shape[0], first.shape[1]), dtype=np.uint8)
    for i, arr in enumerate(images):
        out[i] = arr.transpose(2, 0, 1)  # one copy; works for read-only and flipped views
    return torch.from_numpy(out)
