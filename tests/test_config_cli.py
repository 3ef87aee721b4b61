"""See before running: 'clbench config' (resolved values with their sources, as YAML that
--config takes back) and 'clbench run --dry-run' (the same, plus the runs; nothing written)."""

from __future__ import annotations

import os

import pytest
import yaml
from typer.testing import CliRunner

import clbench.cli  # noqa: F401  (attaches the commands)
from clbench.cli_common import app, load_config_file
from clbench.presets import PRESETS, Preset
from clbench.resolve import resolve, to_yaml

SET = [("train.lr", "0.5"), ("lora.rank", "3"), ("benchmark.n_tasks", "2")]


TINY = ["--set", "benchmark.n_classes=4", "--set", "benchmark.n_tasks=2", "--set", "benchmark.train_per_class=4", "--set", "benchmark.test_per_class=2"]


def clbench(*args, cwd=None):
    """The command in this process (no interpreter start-up): its exit code, stdout and stderr."""
    here = os.getcwd()
    try:
        os.chdir(cwd or here)
        return CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(here)


@pytest.fixture
def preset():
    p = Preset("paperx", "lora", "shapes", {"train.lr": 0.123, "train.epochs": 7, "method.rank": 6},
               when={"n_tasks": 2}, source="test")
    PRESETS.append(p)
    yield p
    PRESETS.remove(p)


def resolved(methods, preset_name=None, overrides=(), file_overrides=()):
    return [resolve(m, "shapes", 1, preset_name, overrides, methods, file_overrides=file_overrides)
            for m in methods]


@pytest.mark.parametrize("methods, name", [(["lora"], "paperx"), (["lora", "simplecil"], None)])
def test_config_output_fed_back_gives_identical_values(tmp_path, preset, methods, name):
    first = resolved(methods, name, SET)
    path = tmp_path / "run.yaml"
    path.write_text(to_yaml(first))
    again = resolved(methods, name, file_overrides=load_config_file(path))
    assert [r.config.to_dict() for r in again] == [r.config.to_dict() for r in first]
    changed = {k for r in again for k, v in r.sources.items() if v == "file"}
    assert "train.lr" in changed and "method.rank" in changed


def test_every_value_names_its_source(tmp_path, preset):
    (tmp_path / "f.yaml").write_text("train:\n  weight_decay: 0.25\n")
    [run] = resolved(["lora"], "paperx", SET, load_config_file(tmp_path / "f.yaml"))
    lines = to_yaml([run]).splitlines()
    for expected in ("  lr: 0.5  # --set", "  rank: 3  # --set", "  epochs: 7  # preset paperx",
                     "  weight_decay: 0.25  # file", "  logit_mask: current  # method",
                     "  name: vit_micro_patch4_32.shapes_pre  # benchmark", "  optimizer: sgd  # default",
                     "  img_size: 32  # benchmark input size", "  betas: [0.9, 0.999]  # default",
                     "  first_task_lr: null  # default", "# preset: paperx"):
        assert expected in lines, expected


def test_cli_config_round_trip_and_dry_run_writes_nothing(tmp_path):
    shown = clbench("config", "--methods", "lora,simplecil", "--set", "train.lr=0.25", "--set", "lora.rank=2")
    assert shown.exit_code == 0, shown.stderr
    path = tmp_path / "c.yaml"
    path.write_text(shown.stdout)
    again = clbench("config", "--methods", "lora,simplecil", "--config", str(path))
    assert again.exit_code == 0, again.stderr
    assert yaml.safe_load(again.stdout) == yaml.safe_load(shown.stdout)
    assert yaml.safe_load(shown.stdout)["lora"]["method"]["rank"] == 2 and "rank: 2  # file" in again.stdout

    out = tmp_path / "results"
    dry = clbench("run", "--methods", "lora,simplecil", "--seeds", "1,2", "--output-dir", str(out),
                  "--config", str(path), *TINY, "--dry-run", cwd=tmp_path)
    assert dry.exit_code == 0, dry.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    tree = yaml.safe_load(dry.stdout)  # the configuration, with the run list as comments
    assert tree["lora"]["train"]["lr"] == 0.25 and tree["simplecil"]["engine"]["output_dir"] == str(out)
    assert "4 run(s) would start" in dry.stdout and f"lora seed 2 preset default -> {out}/shapes/lora/" in dry.stdout


def test_dry_run_still_checks_input(tmp_path):
    dry = clbench("run", "--methods", "lora", *TINY, "--set", "benchmark.n_classes=5", "--dry-run",
                  "--output-dir", str(tmp_path / "r"))
    assert dry.exit_code == 2 and "benchmark.init_cls=3" in " ".join(dry.stderr.split()) and not (tmp_path / "r").exists()


def test_run_help_names_the_sections_and_points_to_config():
    text = " ".join(clbench("run", "--help").stdout.split())
    for word in ("engine", "train", "backbone", "benchmark", "method", "clbench config", "--dry-run"):
        assert word in text, word


def test_list_method_shows_every_option_with_type_default_range_and_help():
    text = clbench("list", "--method", "l2p").stdout
    row = next(line for line in text.splitlines() if " pool_size " in line)
    assert all(part in row for part in ("int", "10", ">= 1", "M prompts (and keys) in the pool"))
    assert "train.optimizer=adam" in text  # the training defaults the method sets
    from clbench.config import describe_options
    from clbench.registry import METHODS

    undocumented = {e.name: [o.name for o in describe_options(e.obj.Config) if not o.help] for e in METHODS}
    assert not {k: v for k, v in undocumented.items() if v}, "every built-in method option has a one-line help"
    assert clbench("list", "--method", "nope").exit_code == 2


def test_list_presets_filters_and_prints_conditions_and_missing_numbers(preset):
    text = clbench("list", "--presets", "--method", "lora", "--benchmark", "shapes").stdout
    row = next(line for line in text.splitlines() if "paperx" in line)
    assert "n_tasks = 2" in row and row.count("—") == 3  # no reported Acc, no AAA, no efficiency
    assert not [line for line in text.splitlines() if " sdlora " in line or "imagenet_r" in line]
    everything = clbench("list", "--presets").stdout
    assert "imagenet_r" in everything and "paperx" in everything


def test_version_names_clbench_and_the_key_libraries():
    from importlib import metadata

    text = clbench("--version").stdout
    for pkg in ("clbench", "torch", "timm", "numpy"):
        assert f"{pkg} {metadata.version(pkg)}" in text
    assert "python 3." in text


def test_list_benchmark_shows_its_options_and_defaults():
    text = clbench("list", "--benchmark", "shapes").stdout
    row = next(line for line in text.splitlines() if " n_classes " in line)
    assert "int" in row and "50" in row and "number of classes" in row
    assert "backbone.name=vit_micro_patch4_32.shapes_pre" in text
