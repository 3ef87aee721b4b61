"""The decoded cache: built once, used by runs, exact at evaluation, safe against stale data."""

import pickle

import numpy as np
import pytest
import torch

import fake_formats as ff
from clbench.data import cache as cache_mod
from clbench.statefile import load_state_file
from clbench.errors import DataError
from clbench.experiment import DataCache, execute, plan

from test_data_benchmarks import bench_cfg, load


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    ff.presplit(root, "imagenet-r", ff.wnids(4), 6, 3, size=(48, 36))
    return root


def prepare(root, **values):
    bench, cfg = bench_cfg("imagenet_r", root, **values)
    lists = bench.lists(cfg)
    return cache_mod.build_cache("imagenet_r", lists, bench.pipeline(cfg), cache_mod.cache_root(cfg.cache_dir), workers=2)


def test_runs_use_the_cache_and_it_matches_the_files(data):
    before = ff.snapshot(data)
    files = load("imagenet_r", data)
    directory, meta = prepare(data)
    assert directory.parent.parent == cache_mod.cache_root() and meta["counts"] == {"train": 24, "test": 12}
    assert meta["stored"] == {"resize": 36, "interp": "bicubic"} and meta["bad"] == []
    cached = load("imagenet_r", data)
    assert cached.info["loader"] == "cache" and cached.info["cache"]["key"] == directory.name
    assert cached.split_id == files.split_id and np.array_equal(cached.train.targets, files.train.targets)
    idx = list(range(len(files.test)))
    assert torch.equal(cached.test.__getitems__(idx)[0], files.test.__getitems__(idx)[0])  # eval: bit-exact
    torch.manual_seed(0)
    a = files.train.with_augment(True).__getitems__(idx)[0].float()
    torch.manual_seed(0)
    b = cached.train.with_augment(True).__getitems__(idx)[0].float()
    assert (a - b).abs().mean() < 10  # same crops and flips, resampled from the stored copy
    assert ff.snapshot(data) == before  # nothing written into the data root
    # workers receive the dataset without the mapped file and map it themselves
    assert len(pickle.dumps(cached.train)) < 10_000
    loader = torch.utils.data.DataLoader(cached.test, batch_size=5, num_workers=2, collate_fn=lambda b: b)
    assert torch.equal(torch.cat([x for x, _ in loader]), files.test.__getitems__(idx)[0])


def test_a_changed_dataset_or_pipeline_does_not_use_a_stale_cache(data):
    prepare(data)
    assert load("imagenet_r", data).info["loader"] == "cache"
    assert load("imagenet_r", data, transforms="coda").info["loader"] == "files"  # another stored resize filter
    assert load("imagenet_r", data, cache="off").info["loader"] == "files"
    victim = next((data / "imagenet-r" / "test").rglob("*.jpg"))
    ff.write_image(victim, 0, 99, size=(50, 36))  # same name, other content and size
    assert load("imagenet_r", data).info["loader"] == "files"
    with pytest.raises(DataError, match=r"no decoded cache .*clbench data prepare imagenet_r"):
        load("imagenet_r", data, cache="require")


def test_unreadable_images_in_the_cache_fail_or_are_skipped(data):
    bad = ff.corrupt(data / "imagenet-r" / "train" / ff.wnids(4)[2] / "art_0.jpg")
    directory, meta = prepare(data)
    assert [(b["split"], b["path"]) for b in meta["bad"]] == [("train", f"{ff.wnids(4)[2]}/art_0.jpg")]
    with pytest.raises(DataError, match=r"recorded 1 unreadable image\(s\): .*art_0.jpg.*skip_bad_images=true"):
        load("imagenet_r", data)
    skipped = load("imagenet_r", data, skip_bad_images=True)
    assert skipped.info["loader"] == "cache" and len(skipped.train) == 23
    assert skipped.info["skipped"] == [{"split": "train", "path": f"{ff.wnids(4)[2]}/art_0.jpg"}]
    x, _ = skipped.train.__getitems__(list(range(23)))
    assert x.shape == (23, 3, 32, 32)
    assert bad.exists()


def test_an_interrupted_build_leaves_no_cache(data, monkeypatch):
    calls = []
    real = cache_mod._decode

    def failing(path, pipe):
        calls.append(path)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(path, pipe)

    monkeypatch.setattr(cache_mod, "_decode", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(data)
    root = cache_mod.cache_root() / "imagenet_r"
    assert not any(root.iterdir())
    assert load("imagenet_r", data).info["loader"] == "files"


def test_simplecil_gives_identical_results_from_files_and_from_the_cache(data, tmp_path):
    """Only evaluation transforms are involved, so the two loaders must agree exactly."""
    overrides = [("benchmark.data_root", str(data)), ("benchmark.check_counts", False), ("benchmark.image_size", 32),
                 ("benchmark.n_tasks", 2), ("backbone.name", "vit_micro_patch4_32.shapes_pre"),
                 ("engine.num_workers", 0), ("engine.progress", False), ("engine.output_dir", str(tmp_path / "out"))]
    (run_files,) = plan(["simplecil"], "imagenet_r", [1993], None, overrides)
    rec_files = execute(run_files, cache=DataCache())
    prepare(data)
    rec_cache = execute(run_files, cache=DataCache())
    assert rec_files["protocol"]["data_info"]["loader"] == "files" and rec_cache["protocol"]["data_info"]["loader"] == "cache"
    assert rec_cache["protocol"]["split_id"] == rec_files["protocol"]["split_id"]
    assert [t["correct_per_class"] for t in rec_cache["tasks"]] == [t["correct_per_class"] for t in rec_files["tasks"]]
    # the class prototypes (mean features of eval-transformed training images) are bit-identical
    for a, b in zip(rec_files["tasks"], rec_cache["tasks"]):
        sa = load_state_file(f"{rec_files['run_dir']}/{a['state']['file']}")
        sb = load_state_file(f"{rec_cache['run_dir']}/{b['state']['file']}")
        tensors = [k for k, v in sa.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert tensors and all(torch.equal(sa[k], sb[k]) for k in tensors)


def test_the_data_speed_measurement_runs():
    from clbench.data import speed

    result = speed.run(n_images=6, size=(64, 48), workers=[0], image_size=32, min_seconds=0.01, log=lambda *a: None)
    assert [(r["transform"], r["workers"]) for r in result["rows"]] == [("train", 0), ("eval", 0)]
    assert all(r["files_img_s"] > 0 and r["cache_img_s"] > 0 for r in result["rows"])


@pytest.mark.parametrize("damage", ["pickled", "truncated", "outside"])
def test_a_damaged_cache_index_is_rebuilt(data, damage, capsys):
    directory, _ = prepare(data)
    index_file = directory / "train.index.npy"
    good = np.load(index_file)
    if damage == "pickled":  # 'Object arrays cannot be loaded when allow_pickle=False' before
        np.save(index_file, np.array([{"a": 1}] * len(good), dtype=object), allow_pickle=True)
    elif damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:100])
    else:
        bad = good.copy()
        bad[0, 0] = 10**12
        np.save(index_file, bad)
    cached = load("imagenet_r", data)
    assert "damaged" in capsys.readouterr().err and cached.info["loader"] == "cache"
    assert np.array_equal(np.load(index_file), good)  # rebuilt as it was
    bench, cfg = bench_cfg("imagenet_r", data)
    index_file.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"The decoded cache .* is damaged \(.*train.index.npy cannot be read.*\)\. "
                                        r"Delete that folder and run 'clbench data prepare' again\."):
        cache_mod.open_split(directory, "train", bench.lists(cfg).train, bench.pipeline(cfg))


def test_a_full_disk_while_building_is_one_clear_error_and_leaves_no_cache(data, monkeypatch):
    import errno
    import os

    from clbench.errors import OutputError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.np, "save", full)
    with pytest.raises(OutputError, match=r"Cannot write .*\.tmp-\d+: the disk \(or your quota\) is full"):
        prepare(data)
    monkeypatch.undo()
    assert not [p for p in cache_mod.cache_root().rglob("*") if p.is_dir() and ".tmp-" in p.name]
    assert load("imagenet_r", data).info["loader"] == "files"
