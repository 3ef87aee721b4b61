"""The real benchmarks' loaders on generated copies of every on-disk format, and bad data."""

import numpy as np
import pytest
import torch

import fake_formats as ff
from clbench.config import apply_values
from clbench.data.images import BadImageError
from clbench.errors import DataError
from clbench.registry import BENCHMARKS

SMALL = {"image_size": 32, "check_counts": False}


def bench_cfg(name, root, **values):
    bench = BENCHMARKS.get(name)()
    base = {k.split(".", 1)[1]: v for k, v in bench.defaults.items() if k.startswith("benchmark.")}
    return bench, apply_values(bench.Config(), {**base, "data_root": str(root), **SMALL, **values}, "benchmark")


def load(name, root, **values):
    bench, cfg = bench_cfg(name, root, **values)
    return bench.load(cfg)


def first_batch(dataset, augment=False, n=4):
    x, y = dataset.with_augment(augment).__getitems__(list(range(min(n, len(dataset)))))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
    return x, y


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLBENCH_DATA_ROOT", raising=False)
    return tmp_path / "cache"


def test_imagenet_r_presplit_loads_and_leaves_the_data_root_untouched(tmp_path, cache_dir):
    root = tmp_path / "data"
    ff.presplit(root, "imagenet-r", ff.wnids(4), 5, 2)
    before = ff.snapshot(root)
    data = load("imagenet_r", root)
    assert (len(data.train), len(data.test), data.class_names) == (20, 8, sorted(ff.wnids(4)))
    assert data.split_id.startswith("imagenet-r:presplit-folders:train=20,test=8") and data.label_map_id == "folder-alphabetical"
    assert data.info["loader"] == "files" and data.info["transforms"]["name"] == "pilot"
    x, y = first_batch(data.train, augment=True)
    assert y.tolist() == [0, 0, 0, 0]
    first_batch(data.test)
    assert ff.snapshot(root) == before


def test_imagenet_r_counts_are_checked_against_the_published_30000(tmp_path, cache_dir):
    ff.presplit(tmp_path, "imagenet-r", ff.wnids(3), 2, 1)
    with pytest.raises(DataError, match=r"3 classes instead of 200 and 9 total images instead of 30,000.*check_counts=false"):
        load("imagenet_r", tmp_path, check_counts=True)


def test_imagenet_r_coda_split_from_a_split_dir(tmp_path, cache_dir):
    folder = ff.imagenet_r_raw(tmp_path, n_classes=3, per_class=6)
    ff.coda_split_for(folder, tmp_path / "splits" / "coda-prompt", label_perm=[1, 2, 0])
    data = load("imagenet_r", tmp_path, split="coda", verify_split_checksum=False)  # default split_dir under the root
    assert data.label_map_id == "coda-yaml" and (len(data.train), len(data.test)) == (12, 6)
    classes = sorted(ff.wnids(3))
    assert data.class_names == [classes[2], classes[0], classes[1]]
    # the published checksums are enforced by default: a generated list is not the CODA file
    with pytest.raises(DataError, match="published CODA-Prompt file"):
        load("imagenet_r", tmp_path, split="coda")
    with pytest.raises(DataError, match=r"split lists are not in .*nowhere.*clbench data download imagenet_r"):
        load("imagenet_r", tmp_path, split="coda", split_dir=str(tmp_path / "nowhere"))


def test_seeded_split_is_recorded_and_reproducible(tmp_path, cache_dir):
    from clbench.data.splits import decode_mask

    ff.imagenet_r_raw(tmp_path, n_classes=3, per_class=10)
    a = load("imagenet_r", tmp_path, split="seeded")
    b = load("imagenet_r", tmp_path, split="seeded")
    c = load("imagenet_r", tmp_path, split="seeded", split_seed=5)
    assert a.split_id == b.split_id != c.split_id and a.train.paths == b.train.paths != c.train.paths
    assert (len(a.train), len(a.test)) == (24, 6)
    rec = a.info["seeded_split"]
    mask = decode_mask(rec["test_mask"], rec["n_files"])
    everything = sorted(a.train.paths + a.test.paths, key=lambda p: (p.split("/")[0], p))
    assert [p for p, m in zip(everything, mask) if m] == a.test.paths  # the record alone restores the split


@pytest.mark.parametrize("split, wrong", [("presplit", "raw"), ("seeded", "presplit"), ("coda", "presplit")])
def test_wrong_layout_is_explained(tmp_path, cache_dir, split, wrong):
    if wrong == "raw":
        ff.imagenet_r_raw(tmp_path, 2, 3)
    else:
        ff.presplit(tmp_path, "imagenet-r", ff.wnids(2), 2, 1)
    with pytest.raises(DataError, match="benchmark.split=") as exc:
        load("imagenet_r", tmp_path, split=split)
    assert str(tmp_path / "imagenet-r") in str(exc.value)


def test_missing_data_root_says_what_to_download_and_where(tmp_path, cache_dir, monkeypatch):
    bench, cfg = bench_cfg("imagenet_r", tmp_path)
    cfg.data_root = None
    with pytest.raises(DataError, match=r"--data-root DIR \(or set CLBENCH_DATA_ROOT=DIR\).*imagenet-r/train/<wnid>.*"
                                        r"imagenet-r.zip.*clbench data download imagenet_r"):
        bench.load(cfg)
    with pytest.raises(DataError, match=r"data root .*nope does not exist"):
        load("imagenet_r", tmp_path / "nope")
    with pytest.raises(DataError, match=r"not in the data root .*looked for .*imagenet-r.*benchmark.path"):
        load("imagenet_r", tmp_path)
    ff.presplit(tmp_path / "elsewhere", "renamed", ff.wnids(2), 2, 1)
    data = load("imagenet_r", tmp_path, path=str(tmp_path / "elsewhere" / "renamed"))
    assert len(data.train) == 4
    monkeypatch.setenv("CLBENCH_DATA_ROOT", str(tmp_path / "elsewhere"))  # the environment variable is the fallback
    (tmp_path / "elsewhere" / "renamed").rename(tmp_path / "elsewhere" / "imagenet-r")
    assert len(bench.load(cfg).train) == 4


def test_imagenet_a_presplit_and_seeded(tmp_path, cache_dir):
    ff.presplit(tmp_path / "aper", "imagenet-a", ff.wnids(3), 4, 2)
    ff.imagenet_r_raw(tmp_path / "raw", 3, 5)
    (tmp_path / "raw" / "imagenet-r").rename(tmp_path / "raw" / "imagenet-a")
    a = load("imagenet_a", tmp_path / "aper")
    b = load("imagenet_a", tmp_path / "raw", split="seeded")
    assert (len(a.train), len(a.test)) == (12, 6) and (len(b.train), len(b.test)) == (12, 3)
    first_batch(b.train, augment=True)


def test_cifar100_pickles(tmp_path, cache_dir):
    ff.cifar100(tmp_path, train_per_class=2, test_per_class=1)
    data = load("cifar100", tmp_path)
    assert (len(data.train), len(data.test), len(data.class_names)) == (200, 100, 100)
    assert data.split_id == "cifar100:official:train=200,test=100" and data.info["loader"] == "memory"
    x, y = first_batch(data.test)
    assert y.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"200 train images instead of 50,000 and 100 test images instead of 10,000"):
        load("cifar100", tmp_path, check_counts=True)
    coda = load("cifar100", tmp_path, transforms="coda")
    assert coda.info["transforms"]["resize"] == 32  # Resize(image_size) only, as CODA evaluates CIFAR


def test_cifar100_corrupt_and_foreign_pickles(tmp_path, cache_dir):
    folder = ff.cifar100(tmp_path, 1, 1)
    ff.truncate(folder / "train")
    with pytest.raises(DataError, match=r"Cannot read CIFAR-100 file .*train.*download it again"):
        load("cifar100", tmp_path)
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="unexpected object"):
        load("cifar100", tmp_path)


@pytest.mark.parametrize("split", ["official", "presplit"])
def test_cub200_official_list_and_presplit(tmp_path, cache_dir, split):
    if split == "official":
        ff.cub(tmp_path, n_classes=3, per_class=4)
    else:
        ff.presplit(tmp_path, "cub", ["001.A", "002.B", "003.C"], 2, 2)
    data = load("cub200", tmp_path, split=split)
    assert (len(data.train), len(data.test)) == (6, 6) and data.class_names[0].startswith("001.")
    first_batch(data.train, augment=True)


def test_cub200_incomplete_metadata(tmp_path, cache_dir):
    folder = ff.cub(tmp_path, n_classes=2, per_class=4)
    lines = (folder / "train_test_split.txt").read_text().splitlines()
    (folder / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"train_test_split.txt has no entry for 1 image id"):
        load("cub200", tmp_path, split="official")


def test_domainnet_official_lists(tmp_path, cache_dir):
    ff.domainnet(tmp_path, domains=("clipart", "real"), n_classes=3, per_class=3)
    data = load("domainnet", tmp_path, domains="clipart,real")
    assert data.class_names == ["thing_a", "thing_b", "thing_c"] and data.label_map_id == "domainnet-list-labels"
    assert (len(data.train), len(data.test)) == (12, 6)
    assert "domains=clipart+real" in data.split_id
    with pytest.raises(DataError, match=r"sketch_train.txt is not in"):
        load("domainnet", tmp_path, domains="clipart,sketch")
    (tmp_path / "domainnet" / data.test.paths[0]).unlink()
    with pytest.raises(DataError, match=r"1 of the \d+ files listed in .*_test.txt are missing.*Unpack"):
        load("domainnet", tmp_path, domains="clipart,real")


@pytest.mark.parametrize("name, dirname, n_tasks", [("vtab", "vtab", 5), ("omnibenchmark", "omnibenchmark", 10),
                                                    ("objectnet", "objectnet", 20)])
def test_aper_presplit_sets(tmp_path, cache_dir, name, dirname, n_tasks):
    ff.presplit(tmp_path, dirname, ["c0", "c1"], 2, 1)
    bench, cfg = bench_cfg(name, tmp_path)
    data = bench.load(cfg)
    assert cfg.n_tasks == n_tasks and len(data.train) == 4
    assert cfg.class_order == ("natural" if name == "vtab" else "seeded")


def test_benchmark_defaults_are_the_sdlora_protocol():
    from clbench.resolve import resolve

    cfg = resolve("simplecil", "imagenet_r", 7, None).config
    assert cfg.backbone.name == "vit_base_patch16_224.augreg2_in21k_ft_in1k" and cfg.backbone.input_norm == "none"
    assert cfg.benchmark_cfg.transforms == "pilot" and cfg.benchmark_cfg.order_seed is None
    assert cfg.benchmark_cfg.n_tasks == 10 and resolve("simplecil", "domainnet", 7, None).config.benchmark_cfg.n_tasks == 5


def test_a_corrupt_image_stops_the_loader_with_the_file_and_the_fix(tmp_path, cache_dir):
    folder = ff.presplit(tmp_path, "imagenet-r", ff.wnids(2), 3, 2)
    bad = ff.truncate(folder / "train" / ff.wnids(2)[0] / "art_0.jpg", 0.3)
    data = load("imagenet_r", tmp_path)
    with pytest.raises(BadImageError, match=r"Cannot decode image .*art_0.jpg.*clbench data check imagenet_r.*skip_bad_images"):
        data.train.__getitems__([0])
    # a data-loader worker re-raises it as type(exc)(its traceback text): still one clean message
    from torch._utils import ExceptionWrapper

    try:
        data.train.__getitems__([0])
    except BadImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError) as exc:
        wrapped.reraise()
    assert "Traceback" not in str(exc.value) and str(exc.value).startswith(f"Cannot decode image {bad}")


def test_skip_bad_images_leaves_them_out_and_records_them(tmp_path, cache_dir):
    folder = ff.presplit(tmp_path, "imagenet-r", ff.wnids(2), 3, 2)
    ff.corrupt(folder / "test" / ff.wnids(2)[1] / "painting_3.jpg")
    clean = load("imagenet_r", tmp_path)
    data = load("imagenet_r", tmp_path, skip_bad_images=True)
    assert len(data.test) == len(clean.test) - 1
    assert data.info["skipped"] == [{"split": "test", "path": f"{ff.wnids(2)[1]}/painting_3.jpg"}]
    assert data.split_id.startswith(clean.split_id + ":skipped=1:")
    first_batch(data.test, n=3)
    assert np.all(data.test.targets == np.array([0, 0, 1]))
