"""Config resolution apart from execution: precedence, the source of every value, ranges,
rebuilding a config from a record; with stand-in methods and benchmarks."""

import subprocess
import sys
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from clbench.config import BenchmarkConfig, MethodConfig, option
from clbench.errors import ConfigError
from clbench.presets import PRESETS, Preset
from clbench.registry import Registry
from clbench.resolve import config_from_record, resolve


def test_resolution_imports_neither_torch_nor_the_engine():
    code = ("import sys, clbench.resolve; bad = [m for m in sys.modules if m == 'torch' or m.startswith('clbench.engine')]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@dataclass
class ToyBenchConfig(BenchmarkConfig):
    size: int = option(8, "images per class", ge=1)


class ToyBench:
    """A stand-in benchmark: only what resolution reads."""

    Config = ToyBenchConfig
    defaults = {"train.epochs": 3, "train.lr": 0.5, "benchmark.size": 9}


@dataclass
class ToyMethodConfig(MethodConfig):
    rank: int = option(4, "adapter rank", ge=1)
    alpha: float = 1.0  # a plain field: no help, no range


class ToyMethod:
    """A stand-in method."""

    Config = ToyMethodConfig
    defaults = {"train.lr": 0.2, "train.batch_size": 8}


class OtherMethod(ToyMethod):
    """A second stand-in method."""


METHODS, BENCHMARKS = Registry("method"), Registry("benchmark")
METHODS.register("toy")(ToyMethod)
METHODS.register("other")(OtherMethod)
BENCHMARKS.register("toybench")(ToyBench)


def toy(overrides=(), file_overrides=(), preset=None, selected=None):
    return resolve("toy", "toybench", 1, preset, overrides, selected, file_overrides=file_overrides,
                   methods=METHODS, benchmarks=BENCHMARKS)


@pytest.fixture
def paper():
    p = Preset("paper", "toy", "toybench", {"train.lr": 0.1, "method.rank": 6, "train.momentum": 0.5},
               when={"n_tasks": 10}, source="test")
    PRESETS.append(p)
    yield p
    PRESETS.remove(p)


def test_each_layer_beats_the_one_before_and_every_value_names_its_source(paper):
    run = toy([("train.lr", "0.01")], [("train.lr", "0.05"), ("method.rank", "7"), ("train.weight_decay", "0.1")],
              preset="paper")
    cfg, src = run.config, run.sources
    assert (cfg.train.lr, cfg.method_cfg.rank, cfg.train.weight_decay) == (0.01, 7, 0.1)
    assert (cfg.train.momentum, cfg.train.batch_size, cfg.train.epochs, cfg.benchmark_cfg.size) == (0.5, 8, 3, 9)
    assert src["train.lr"] == "--set" and src["method.rank"] == "file" and src["train.weight_decay"] == "file"
    assert src["train.momentum"] == "preset paper" and src["train.batch_size"] == "method"
    assert src["train.epochs"] == "benchmark" and src["benchmark.size"] == "benchmark"
    assert src["engine.device"] == "default" and src["method.alpha"] == "default"
    sections = cfg.to_dict()
    assert set(src) == {f"{name}.{key}" for name, values in sections.items() for key in values}
    assert run.overrides == [("train.lr", "0.05"), ("method.rank", "7"), ("train.weight_decay", "0.1"),
                             ("train.lr", "0.01")]  # as recorded: file values, then --set values


def test_without_preset_file_or_set_the_defaults_stack():
    run = toy()
    assert run.preset is None and run.config.train.lr == 0.2 and run.sources["train.lr"] == "method"
    assert run.config.train.epochs == 3 and run.sources["train.epochs"] == "benchmark"


def test_method_scoped_keys_reach_only_their_method():
    run = toy([("toy.rank", "5"), ("toy.train.lr", "0.3"), ("other.rank", "9")], selected=["toy", "other"])
    assert (run.config.method_cfg.rank, run.config.train.lr) == (5, 0.3)
    assert run.sources["method.rank"] == "--set" and run.sources["train.lr"] == "--set"
    with pytest.raises(ConfigError, match="targets method 'other', which is not among --methods"):
        toy([("other.rank", "9")])
    with pytest.raises(ConfigError, match="Method 'toy' has no option 'depth'"):
        toy(file_overrides=[("method.depth", "2")])


@pytest.mark.parametrize("overrides, message", [
    ([("train.lr", "-1")], r"'train.lr' must be in \(0, 1000000\], got -1.0\. Fix it, e.g. --set train.lr=0.01"),
    ([("train.lr", "nan")], "'train.lr' must be in \\(0, 1000000\\], got nan"),
    ([("toy.rank", "0")], r"'toy.rank' must be >= 1, got 0\. Fix it, e.g. --set toy.rank=4"),
    ([("benchmark.size", "0")], "'benchmark.size' must be >= 1, got 0"),
])
def test_values_out_of_range_fail_resolution(overrides, message):
    with pytest.raises(ConfigError, match=message):
        toy(overrides)
    toy([("method.alpha", "-5")])  # a plain field has no range


def test_plan_rejects_a_value_out_of_range_before_writing_anything(tmp_path):
    from clbench.experiment import plan

    out = tmp_path / "results"
    with pytest.raises(ConfigError, match="'train.batch_size' must be >= 1, got 0"):
        plan(["finetune"], "shapes", [1], None, [("engine.output_dir", str(out))],
             file_overrides=[("train.batch_size", "0")])
    assert not out.exists()


def record_of(run):
    cfg = run.config
    return {"method": cfg.method, "benchmark": cfg.benchmark, "seed": cfg.seed, "preset": cfg.preset,
            "config": cfg.to_dict()}


def rebuild(record, overrides=(), **kw):
    return config_from_record(record, overrides, methods=METHODS, benchmarks=BENCHMARKS, **kw)


def test_a_record_rebuilds_its_config_with_train_and_engine_changes(paper):
    run = toy([("method.rank", "3")], preset="paper")
    record = record_of(run)
    assert rebuild(record) == run.config
    changed = rebuild(record, [("train.lr", "0.02"), ("engine.device", "cpu")])
    assert (changed.train.lr, changed.engine.device, changed.method_cfg.rank) == (0.02, "cpu", 3)
    with pytest.raises(ConfigError, match="Cannot change 'method.rank' when resuming"):
        rebuild(record, [("method.rank", "5")])
    with pytest.raises(ConfigError, match="Cannot change 'engine.output_dir'"):
        rebuild(record, [("engine.output_dir", "elsewhere")])
    with pytest.raises(ConfigError, match="'train.lr' must be in \\(0, 1000000\\]"):
        rebuild(record, [("train.lr", "0")])
    with pytest.raises(ConfigError, match=r"Cannot change 'train.lr'.*only engine\.\* values"):
        rebuild(record, [("train.lr", "0.02")], changeable=("engine.",))
    record["config"]["method"]["gone"] = 1
    with pytest.raises(ConfigError, match="does not fit this clbench version"):
        rebuild(record)


def test_the_cli_passes_config_file_values_apart_from_set_values(tmp_path, monkeypatch):
    import clbench.experiment
    from clbench.cli import app

    seen = {}

    def fake_plan(methods, benchmark, seeds, preset, overrides, cache, *, file_overrides, **_):
        seen.update(overrides=list(overrides), file_overrides=list(file_overrides))
        raise ConfigError("stop here")

    monkeypatch.setattr(clbench.experiment, "plan", fake_plan)
    config = tmp_path / "c.yaml"
    config.write_text("train: {lr: 0.05}\nlora: {rank: 2}\n")
    result = CliRunner().invoke(app, ["run", "--methods", "lora", "--config", str(config), "--set", "train.lr=0.1",
                                      "--no-progress"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["file_overrides"] == [("train.lr", 0.05), ("lora.rank", 2)]
    assert seen["overrides"] == [("train.lr", "0.1"), ("engine.progress", "false")]
