"""The command line: help, list, and bad input (clear message, exit code, no traceback, no record)."""

import subprocess
import sys

import pytest

TINY = ["--set", "benchmark.n_classes=4", "--set", "benchmark.n_tasks=2", "--set", "benchmark.train_per_class=8",
        "--set", "benchmark.test_per_class=4", "--set", "train.epochs=1", "--no-progress"]


def clbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "clbench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_and_list():
    assert clbench("--help").returncode == 0
    run_help = clbench("run", "--help")
    assert run_help.returncode == 0 and "--set" in run_help.stdout and "--seeds" in run_help.stdout
    listing = clbench("list")
    assert listing.returncode == 0
    for name in ("finetune", "joint", "lora", "simplecil", "shapes", "vit_micro_patch4_32.shapes_pre"):
        assert name in listing.stdout


@pytest.mark.parametrize("args, message", [
    (["--methods", "sdlroa"], "Unknown method 'sdlroa'"),
    (["--methods", "lora", "--benchmark", "imagenet-r-x"], "Unknown benchmark"),
    (["--methods", "lora", "--set", "train.lr"], "Malformed override"),
    (["--methods", "lora", "--set", "train.lrr=0.1"], "Did you mean 'lr'"),
    (["--methods", "lora", "--set", "train.lr=fast"], "expects a float"),
    (["--methods", "lora", "--set", "backbone.weights=/nonexistent/w.safetensors"], "does not exist"),
    (["--methods", "lora", "--set", "backbone.name=vit_nope"], "Unknown backbone"),
    (["--methods", "lora", "--seeds", "a,b"], "--seeds must be comma-separated integers"),
    ([], "No methods given"),
])
def test_bad_input_is_one_clear_message(tmp_path, args, message):
    out = tmp_path / "results"
    result = clbench("run", *args, "--output-dir", str(out), *TINY)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not out.exists()  # no partial record


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = clbench("run", "--methods", "simplecil", "--output-dir", str(blocker / "results"), *TINY)
    assert result.returncode == 2 and "Cannot write" in result.stderr and "Traceback" not in result.stderr


def test_run_prints_a_results_table(tmp_path):
    result = clbench("run", "--methods", "simplecil,finetune", "--output-dir", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr
    assert "simplecil" in result.stdout and "finetune" in result.stdout and "Acc" in result.stdout
    assert len(list(tmp_path.glob("shapes/*/*/record.json"))) == 2
