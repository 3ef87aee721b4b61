"""Config options: help and valid ranges declared next to each field, checked and listed."""

import math
from dataclasses import dataclass, field

import pytest

from clbench.config import (BackboneConfig, BenchmarkConfig, EngineConfig, MethodConfig, TrainConfig, check_options,
                            describe_options, option)
from clbench.errors import ConfigError
from clbench.registry import BENCHMARKS


@pytest.mark.parametrize("cfg, key, shown, fix", [
    (TrainConfig(lr=-1.0), "train.lr", "-1.0", "0.01"),
    (TrainConfig(lr=0.0), "train.lr", "0.0", "0.01"),
    (TrainConfig(batch_size=0), "train.batch_size", "0", "64"),
    (TrainConfig(momentum=1.0), "train.momentum", "1.0", "0.9"),
    (TrainConfig(grad_clip=0.0), "train.grad_clip", "0.0", "1.0"),
    (TrainConfig(epochs=-1), "train.epochs", "-1", "5"),
    (EngineConfig(num_workers=-2), "engine.num_workers", "-2", "auto"),
    (BenchmarkConfig(n_tasks=0), "benchmark.n_tasks", "0", "10"),
])
def test_a_value_out_of_range_names_key_value_range_and_a_fix(cfg, key, shown, fix):
    section = key.split(".")[0]
    with pytest.raises(ConfigError) as err:
        check_options(cfg, section)
    msg = str(err.value)
    assert f"'{key}'" in msg and f"got {shown}" in msg and f"--set {key}={fix}" in msg
    (opt,) = [o for o in describe_options(type(cfg)) if o.name == key.split(".")[1]]
    assert f"must be {opt.range}" in msg


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_out_of_every_bounded_float_range(value):
    with pytest.raises(ConfigError, match=r"'train.lr' must be in \(0, 1000000\]"):
        check_options(TrainConfig(lr=value), "train")
    with pytest.raises(ConfigError, match=r"'train.weight_decay' must be in \[0, 1000000\]"):
        check_options(TrainConfig(weight_decay=value), "train")


def test_tuples_are_checked_element_by_element():
    with pytest.raises(ConfigError, match=r"'train.betas' must have every value in \[0, 1\), got \(0.9, 1.0\).*"
                                          r"--set train.betas=0.9,0.999"):
        check_options(TrainConfig(betas=(0.9, 1.0)), "train")
    with pytest.raises(ConfigError, match="'train.milestones' must have every value >= 0"):
        check_options(TrainConfig(milestones=(3, -1)), "train")
    check_options(TrainConfig(milestones=(3, 6), first_task_milestones=(2,)), "train")


def test_values_that_are_no_numbers_or_none_pass():
    check_options(EngineConfig(num_workers="auto"), "engine")
    check_options(TrainConfig(grad_clip=None, first_task_lr=None), "train")


def test_every_default_is_in_range_and_every_core_option_has_help():
    classes = [EngineConfig, TrainConfig, BackboneConfig, BenchmarkConfig] + [e.obj.Config for e in BENCHMARKS]
    for cls in classes:
        check_options(cls(), cls.__name__)
        missing = [o.name for o in describe_options(cls) if not o.help]
        assert not missing, f"{cls.__name__} options without help: {missing}"


def test_a_subclass_changing_a_default_keeps_the_help_and_range():
    shapes = BENCHMARKS.get("shapes").Config
    (n_tasks,) = [o for o in describe_options(shapes) if o.name == "n_tasks"]
    assert (n_tasks.default, n_tasks.range, n_tasks.help) == (5, ">= 1", "number of tasks")
    with pytest.raises(ConfigError, match="'benchmark.n_tasks' must be >= 1, got 0.*--set benchmark.n_tasks=5"):
        check_options(shapes(n_tasks=0), "benchmark")
    with pytest.raises(ConfigError, match="'benchmark.n_classes' must be in \\[1, 1000000\\), got 0"):
        check_options(shapes(n_classes=0), "benchmark")


@dataclass
class StandInMethodConfig(MethodConfig):
    rank: int = option(4, "adapter rank", ge=1)
    scale: float = option(1.0, "output scale", gt=0, le=10)
    tags: tuple[str, ...] = option(help="free-form tags", default_factory=tuple)
    plain: float = -3.0  # no metadata: no help, no range
    listed: list[int] = field(default_factory=list)


def test_describe_options_lists_name_type_default_help_and_range():
    rows = {o.name: (o.type, o.default, o.help, o.range) for o in describe_options(StandInMethodConfig)}
    assert rows == {
        "rank": ("int", 4, "adapter rank", ">= 1"),
        "scale": ("float", 1.0, "output scale", "in (0, 10]"),
        "tags": ("tuple[str, ...]", (), "free-form tags", ""),
        "plain": ("float", -3.0, "", ""),
        "listed": ("list", [], "", ""),
    }
    train = {o.name: o for o in describe_options(TrainConfig)}
    assert (train["optimizer"].type, train["grad_clip"].type) == ("'sgd' | 'adam' | 'adamw'", "float | None")


def test_method_options_are_checked_under_the_method_name_and_plain_fields_are_free():
    check_options(StandInMethodConfig(plain=-1e9, listed=[-1]), "stand-in")
    with pytest.raises(ConfigError, match=r"'stand-in.rank' must be >= 1, got 0\. Fix it, e.g. --set stand-in.rank=4\."):
        check_options(StandInMethodConfig(rank=0), "stand-in")
    with pytest.raises(ConfigError, match="'stand-in.scale' must be in \\(0, 10\\], got 11.0"):
        check_options(StandInMethodConfig(scale=11.0), "stand-in")
