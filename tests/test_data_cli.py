"""`clbench data check/prepare/list` and `clbench run` on generated real-format datasets."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import fake_formats as ff
from clbench.cli import app

RUN = ["--set", "backbone.name=vit_micro_patch4_32.shapes_pre", "--set", "benchmark.image_size=32",
       "--set", "benchmark.check_counts=false", "--set", "benchmark.n_tasks=2", "--set", "train.epochs=1",
       "--set", "train.batch_size=8", "--set", "engine.num_workers=0", "--no-progress"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLBENCH_DATA_ROOT", raising=False)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_data_check_passes_on_a_good_copy_and_lists_every_bad_file(tmp_path):
    root = tmp_path / "data"
    ff.presplit(root, "vtab", [f"class{i:02d}" for i in range(50)], 1, 1, size=(24, 24))
    ok = subprocess.run([sys.executable, "-m", "clbench.cli", "data", "check", "vtab", "--data-root", str(root)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "everything checked is in order" in ok.stdout and "all 100 decode" in ok.stdout
    ff.corrupt(root / "vtab" / "train" / "class03" / "art_0.jpg")
    ff.truncate(root / "vtab" / "test" / "class41" / "cartoon_1.jpg", 0.4)
    bad = invoke("data", "check", "vtab", "--data-root", root)
    assert bad.exit_code == 2
    assert "2 unreadable" in bad.output and "class03/art_0.jpg" in bad.output and "class41/cartoon_1.jpg" in bad.output
    assert "Traceback" not in bad.output


def test_data_check_names_layout_count_and_root_problems(tmp_path):
    ff.imagenet_r_raw(tmp_path, 3, 2)
    layout = invoke("data", "check", "imagenet_r", "--data-root", tmp_path)
    assert layout.exit_code == 2 and "benchmark.split=coda or seeded" in layout.output
    counts = invoke("data", "check", "imagenet_r", "--data-root", tmp_path, "--set", "benchmark.split=seeded")
    assert counts.exit_code == 2 and "3 classes instead of 200" in counts.output and "check_counts=false" in counts.output
    relaxed = invoke("data", "check", "imagenet_r", "--data-root", tmp_path, "--set", "benchmark.split=seeded",
                     "--set", "benchmark.check_counts=false", "--quick")
    assert relaxed.exit_code == 0, relaxed.output
    missing = invoke("data", "check", "cub200", "--data-root", tmp_path)
    assert missing.exit_code == 2 and "cub.zip" in missing.output and "85e342a2d5f941e740193602057df7a5" not in missing.output
    assert invoke("data", "check", "shapes").exit_code == 2
    listing = invoke("data", "list", "--data-root", tmp_path)
    assert listing.exit_code == 0 and "imagenet_r" in listing.output and "yes (imagenet-r)" in listing.output
    aper = tmp_path / "aper"
    ff.presplit(aper, "imagenet-r", ff.wnids(2), 2, 1)
    ff.archive(aper / "imagenet-r", aper / "imagenet-r.zip")  # an archive kept beside the dataset is verified too
    kept = invoke("data", "check", "imagenet_r", "--data-root", aper, "--set", "benchmark.check_counts=false")
    assert kept.exit_code == 2 and "published 730aa3fb9c7d2ec0b6381c6b23040681" in kept.output


def test_cifar_check_verifies_the_published_file_checksums(tmp_path):
    ff.cifar100(tmp_path, 1, 1)
    result = invoke("data", "check", "cifar100", "--data-root", tmp_path, "--set", "benchmark.check_counts=false")
    assert result.exit_code == 2  # generated pickles are not the published files
    assert result.output.count("expected 16019d7e3df5f24257cddd939b257f8d") == 1


def test_decoded_benchmarks_need_no_cache_and_have_no_file_speed(tmp_path):
    ff.cifar100(tmp_path, 1, 1)
    args = ("--data-root", tmp_path, "--set", "benchmark.check_counts=false")
    prepared = invoke("data", "prepare", "cifar100", *args)
    assert prepared.exit_code == 0 and "needs no cache" in prepared.output
    timed = invoke("data", "speed", "--benchmark", "cifar100", "--images", 4, *args)
    assert timed.exit_code == 2 and "stored decoded already" in timed.output and timed.exception.__class__ is SystemExit


def test_run_prepare_run_on_imagenet_r(tmp_path):
    root, out = tmp_path / "data", tmp_path / "results"
    ff.presplit(root, "imagenet-r", ff.wnids(4), 6, 3, size=(48, 36))
    before = ff.snapshot(root)
    first = invoke("run", "--methods", "lora,simplecil", "--benchmark", "imagenet_r", "--data-root", root,
                   "--output-dir", out, *RUN)
    assert first.exit_code == 0, first.output
    records = [json.loads(p.read_text()) for p in sorted(out.glob("imagenet_r/*/*/record.json"))]
    assert len(records) == 2 and all(r["status"] == "complete" for r in records)
    for rec in records:
        assert rec["protocol"]["split_id"].startswith("imagenet-r:presplit-folders:train=24,test=12")
        assert rec["protocol"]["data_info"]["loader"] == "files" and rec["config"]["benchmark"]["data_root"] == str(root)
    prep = invoke("data", "prepare", "imagenet_r", "--data-root", root, "--set", "benchmark.image_size=32",
                  "--set", "benchmark.check_counts=false")
    assert prep.exit_code == 0, prep.output
    assert "shorter side 36 px (bicubic)" in prep.output
    second = invoke("run", "--methods", "simplecil", "--benchmark", "imagenet_r", "--data-root", root,
                    "--output-dir", tmp_path / "results2", *RUN)
    assert second.exit_code == 0, second.output
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "results2").glob("imagenet_r/*/*/record.json")]
    assert rec["protocol"]["data_info"]["loader"] == "cache"
    simple = next(r for r in records if r["method"] == "simplecil")
    assert rec["accuracy_matrix"] == simple["accuracy_matrix"]
    assert ff.snapshot(root) == before


def test_run_without_data_and_with_a_corrupt_image(tmp_path):
    out = tmp_path / "results"
    missing = invoke("run", "--methods", "simplecil", "--benchmark", "imagenet_r", "--output-dir", out, *RUN)
    assert missing.exit_code == 2 and "--data-root DIR" in missing.output and "imagenet-r.zip" in missing.output
    assert not out.exists()  # the data is checked before anything is written
    root = tmp_path / "data"
    folder = ff.presplit(root, "imagenet-r", ff.wnids(4), 4, 2)
    bad = ff.truncate(folder / "test" / ff.wnids(4)[1] / "sketch_4.jpg", 0.2)
    failed = invoke("run", "--methods", "simplecil", "--benchmark", "imagenet_r", "--data-root", root, "--output-dir", out, *RUN)
    assert failed.exit_code == 2 and f"Cannot decode image {bad}" in failed.output and "skip_bad_images" in failed.output
    (rec,) = [json.loads(p.read_text()) for p in out.glob("imagenet_r/*/*/record.json")]
    assert rec["status"] == "failed" and "sketch_4.jpg" in rec["error"]
    skipped = invoke("run", "--methods", "simplecil", "--benchmark", "imagenet_r", "--data-root", root,
                     "--output-dir", tmp_path / "results2", "--set", "benchmark.skip_bad_images=true", *RUN)
    assert skipped.exit_code == 0, skipped.output
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "results2").glob("imagenet_r/*/*/record.json")]
    assert rec["protocol"]["data_info"]["skipped"] == [{"split": "test", "path": f"{ff.wnids(4)[1]}/sketch_4.jpg"}]
    assert sum(rec["test_counts"]["per_class"]) == 7
