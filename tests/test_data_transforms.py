"""Pipelines: the file path is torchvision's reference pipeline; the cached path matches it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clbench.data.transforms import center_crop, pipeline, to_chw_batch
from clbench.errors import ConfigError

from fake_formats import image_array


def photo(w=120, h=90, label=3):
    return Image.fromarray(image_array(label, 0, (w, h)))


def reference(name, train):
    """The references' torchvision pipelines (docs/protocol.md), up to ToTensor."""
    if name == "pilot":
        if train:
            return T.Compose([T.RandomResizedCrop(64, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip(), T.PILToTensor()])
        return T.Compose([T.Resize(73, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64), T.PILToTensor()])
    if train:
        return T.Compose([T.RandomResizedCrop(64), T.RandomHorizontalFlip(), T.PILToTensor()])
    return T.Compose([T.Resize(73), T.CenterCrop(64), T.PILToTensor()])


@pytest.mark.parametrize("name", ["pilot", "coda"])
@pytest.mark.parametrize("size", [(120, 90), (90, 121), (80, 80)])
def test_file_path_is_the_reference_pipeline(name, size):
    pipe = pipeline(name, 64)
    assert pipe.resize == 73  # 64 * 256/224
    img = photo(*size)
    for seed in range(4):
        torch.manual_seed(seed)
        ours = torch.from_numpy(np.array(pipe.train_pil(img))).permute(2, 0, 1)
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(name, True)(img))
    assert torch.equal(torch.from_numpy(np.array(pipe.eval_pil(img))).permute(2, 0, 1), reference(name, False)(img))


@pytest.mark.parametrize("name", ["pilot", "coda"])
def test_cached_eval_is_bit_exact_and_cached_train_follows_the_same_random_stream(name):
    pipe = pipeline(name, 64)
    img = photo(150, 100)
    stored = pipe.store(img)
    assert min(stored.shape[:2]) == pipe.resize
    assert np.array_equal(pipe.eval_cached(stored), pipe.eval_pil(img))
    diffs = []
    for seed in range(6):
        torch.manual_seed(seed)
        a = pipe.train_pil(img).astype(float)
        after_a = torch.rand(1)
        torch.manual_seed(seed)
        b = pipe.train_cached(stored, img.height, img.width).astype(float)
        assert torch.equal(torch.rand(1), after_a)  # same number of draws
        diffs.append(np.abs(a - b).mean())
    # same crop box and flip, resampled from the stored copy: small differences only
    assert max(diffs) < 12, diffs
    torch.manual_seed(0)
    other = pipe.train_cached(stored, img.height, img.width).astype(float)
    assert np.abs(other - pipe.train_cached(stored, img.height, img.width).astype(float)).mean() > 5  # it is random


def test_pipeline_parameters_and_cifar_eval():
    pilot, coda = pipeline("pilot"), pipeline("coda")
    assert (pilot.size, pilot.resize, pilot.eval_interp, pilot.train_scale) == (224, 256, "bicubic", (0.05, 1.0))
    assert (coda.size, coda.resize, coda.eval_interp, coda.train_scale) == (224, 256, "bilinear", (0.08, 1.0))
    # CODA evaluates CIFAR with Resize(224) only: resize == size gives exactly that
    small = Image.fromarray(image_array(1, 0, (32, 32)))
    coda_cifar = pipeline("coda", 224, 224)
    expected = T.Compose([T.Resize(224), T.PILToTensor()])(small)
    assert torch.equal(torch.from_numpy(np.array(coda_cifar.eval_pil(small))).permute(2, 0, 1), expected)
    with pytest.raises(ConfigError, match="resize_size"):
        pipeline("pilot", 224, 200)
    with pytest.raises(ConfigError, match="Unknown transforms"):
        pipeline("timm")


def test_center_crop_rounding_and_batching():
    arr = np.arange(5 * 8 * 3, dtype=np.uint8).reshape(5, 8, 3)
    ref = T.CenterCrop(3)(torch.from_numpy(arr).permute(2, 0, 1))
    assert torch.equal(torch.from_numpy(center_crop(arr, 3)).permute(2, 0, 1), ref)
    batch = to_chw_batch([arr, arr[:, ::-1]])
    assert batch.shape == (2, 3, 5, 8) and batch.is_contiguous() and batch.dtype == torch.uint8
    assert torch.equal(batch[1], batch[0].flip(-1))
