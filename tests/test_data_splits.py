"""Split providers on generated layouts, and CODA-Prompt's real ImageNet-R lists."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import ImageFolder

import fake_formats as ff
from clbench.data.splits import (coda_yaml, decode_mask, encode_mask, image_folder, presplit_folders, read_yaml_list,
                                 seeded_split)
from clbench.errors import DataError


def shared_splits() -> Path | None:
    """``shared/splits/coda-prompt`` beside the repository (or an ancestor of it)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "splits" / "coda-prompt"
        if (candidate / "imagenet-r_train.yaml").is_file():
            return candidate
    return None


CODA = shared_splits()
needs_coda = pytest.mark.skipif(CODA is None, reason="CODA-Prompt split files not found in ../shared/splits/coda-prompt")
CODA_SHA = {"train": "6bcaa14ca9359915ac3a44c48ae71388146385686eb15da79a37844421a0b845",
            "test": "57275ac242d68983a4f39ccb81ec34f48b1bd920b9cd79e6e8040d7c042db02a"}


def test_image_folder_matches_torchvision_order_and_labels(tmp_path):
    folder = tmp_path / "tree"
    ff.image_folder(folder, ["b_cls", "a_cls", "c_cls"], [3, 2, 1])
    ff.write_image(folder / "a_cls" / "nested" / "deep.png", 0, 9)  # ImageFolder walks sub-folders
    (folder / "a_cls" / "notes.txt").write_text("not an image")
    classes, paths, targets, sizes = image_folder(folder, "test tree")
    ref = ImageFolder(str(folder))
    assert classes == ref.classes
    assert [str(folder / p) for p in paths] == [p for p, _ in ref.samples]
    assert targets.tolist() == ref.targets
    assert (sizes > 0).all() and len(sizes) == 7


def test_presplit_folders_and_a_class_missing_from_test(tmp_path):
    folder = ff.presplit(tmp_path, "ds", ["x", "y", "z"], 3, 2)
    lists = presplit_folders(folder, "ds")
    assert (len(lists.train), len(lists.test), lists.class_names) == (9, 6, ["x", "y", "z"])
    assert lists.split_id.startswith("ds:presplit-folders:train=9,test=6:files=")
    assert lists.label_map_id == "folder-alphabetical"
    shutil.rmtree(folder / "test" / "y")
    with pytest.raises(DataError, match=r"class\(es\) y are missing from .*test"):
        presplit_folders(folder, "ds")
    (folder / "test" / "y").mkdir()
    with pytest.raises(DataError, match="hold no images: y"):
        presplit_folders(folder, "ds")


def test_wrong_layout_names_the_fix(tmp_path):
    folder = ff.imagenet_r_raw(tmp_path, 2, 2)
    with pytest.raises(DataError, match="not the pre-split layout.*USE THIS") as exc:
        presplit_folders(folder, "imagenet-r", "USE THIS")
    assert str(folder) in str(exc.value)


def test_seeded_split_is_stratified_deterministic_and_recoverable():
    targets = np.repeat(np.arange(5), [10, 11, 5, 2, 30])
    mask = seeded_split(targets, 0.2, seed=1993)
    assert np.array_equal(mask, seeded_split(targets, 0.2, seed=1993))
    assert not np.array_equal(mask, seeded_split(targets, 0.2, seed=7))
    per_class = np.bincount(targets[mask], minlength=5).tolist()
    assert per_class == [2, 2, 1, 1, 6]  # round(n * 0.2), at least one, never all
    assert np.array_equal(decode_mask(encode_mask(mask), len(mask)), mask)
    big = np.random.RandomState(0).rand(30_000) < 0.2
    assert len(encode_mask(big)) < 6_000  # compact enough for the run record
    with pytest.raises(DataError, match="at least 2"):
        seeded_split(np.array([0, 0, 1]), 0.2, 0)


@needs_coda
def test_coda_imagenet_r_lists_as_published():
    train_paths, train_y, train_sha = read_yaml_list(CODA / "imagenet-r_train.yaml", CODA_SHA["train"], True)
    test_paths, test_y, test_sha = read_yaml_list(CODA / "imagenet-r_test.yaml", CODA_SHA["test"], True)
    assert (len(train_paths), len(test_paths)) == (24_000, 6_000)
    assert (train_sha, test_sha) == (CODA_SHA["train"], CODA_SHA["test"])
    assert all(p.startswith("data/imagenet-r/n") for p in train_paths[:100] + test_paths[:100])
    assert not set(train_paths) & set(test_paths)
    # the label map comes from the files and is not alphabetical (docs/protocol.md)
    label_of = {p.split("/")[2]: int(y) for p, y in zip(train_paths + test_paths, np.concatenate([train_y, test_y]))}
    assert len(label_of) == 200 and sorted(label_of.values()) == list(range(200))
    by_label = {v: k for k, v in label_of.items()}
    assert [by_label[i] for i in range(3)] == ["n02165456", "n03594945", "n02325366"]
    assert [by_label[i] for i in range(200)] != sorted(label_of)


@needs_coda
def test_coda_lists_load_end_to_end_over_the_full_file_set(tmp_path):
    folder = tmp_path / "imagenet-r"
    for name in ("imagenet-r_train.yaml", "imagenet-r_test.yaml"):
        for line in (CODA / name).read_text().splitlines():
            if line.startswith("- data/"):
                f = folder / line[len("- data/imagenet-r/"):]
                f.parent.mkdir(parents=True, exist_ok=True)
                f.touch()  # listing and label maps never decode images
    lists = coda_yaml(folder, CODA / "imagenet-r_train.yaml", CODA / "imagenet-r_test.yaml", "imagenet-r", keep=2,
                      expected=CODA_SHA, verify=True, missing_fix="")
    assert (len(lists.train), len(lists.test), len(lists.class_names)) == (24_000, 6_000, 200)
    assert lists.class_names[:3] == ["n02165456", "n03594945", "n02325366"]
    assert lists.label_map_id == "coda-yaml" and lists.split_id == "imagenet-r:coda-yaml:train=6bcaa14ca935,test=57275ac242d6"
    assert lists.train.paths[0] == "n02128757/sculpture_4.jpg"
    per_class_test = np.bincount(lists.test.targets, minlength=200)
    assert per_class_test.min() >= 5 and per_class_test.max() <= 81  # not stratified, as documented
    assert all(info["verified"] for info in lists.info["split_files"].values())


@needs_coda
def test_a_modified_split_file_is_rejected_with_the_fix(tmp_path):
    copy = tmp_path / "imagenet-r_test.yaml"
    text = (CODA / "imagenet-r_test.yaml").read_text()
    copy.write_text(text.replace("tattoo_75.jpg", "tattoo_76.jpg", 1))
    with pytest.raises(DataError, match="sha256 .* published CODA-Prompt file.*verify_split_checksum=false") as exc:
        read_yaml_list(copy, CODA_SHA["test"], True)
    assert str(copy) in str(exc.value)
    paths, _, sha = read_yaml_list(copy, CODA_SHA["test"], False)  # accepted on purpose: its own sha is kept
    assert sha == hashlib.sha256(copy.read_bytes()).hexdigest() and paths[0].endswith("tattoo_76.jpg")


def test_coda_style_lists_on_a_generated_folder(tmp_path):
    folder = ff.imagenet_r_raw(tmp_path, n_classes=3, per_class=6)
    train_yaml, test_yaml = ff.coda_split_for(folder, tmp_path / "splits", label_perm=[2, 0, 1])
    lists = coda_yaml(folder, train_yaml, test_yaml, "imagenet-r", keep=2, expected=None, verify=True, missing_fix="FIX")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert lists.class_names == [classes[1], classes[2], classes[0]]  # label map from the file
    assert (len(lists.train), len(lists.test)) == (12, 6)
    assert not any(info["verified"] for info in lists.info["split_files"].values())
    (folder / lists.test.paths[0]).unlink()
    with pytest.raises(DataError, match=r"1 of the 6 files listed in .*imagenet-r_test.yaml are missing.*FIX"):
        coda_yaml(folder, train_yaml, test_yaml, "imagenet-r", keep=2, expected=None, verify=True, missing_fix="FIX")


def test_a_class_without_test_entries_in_a_list_is_named(tmp_path):
    folder = ff.imagenet_r_raw(tmp_path, n_classes=2, per_class=4)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = {c: sorted(f.name for f in (folder / c).iterdir()) for c in classes}
    train = ff.coda_yaml(tmp_path / "tr.yaml", [f"{c}/{f}" for c in classes for f in files[c][:3]], [0] * 3 + [1] * 3)
    test = ff.coda_yaml(tmp_path / "te.yaml", [f"{classes[0]}/{files[classes[0]][3]}"], [0])
    with pytest.raises(DataError, match=f"{classes[1]} have no samples in .*te.yaml"):
        coda_yaml(folder, train, test, "imagenet-r", keep=2, expected=None, verify=True, missing_fix="")
