"""Typed config: coercion, unknown keys, routing of overrides, precedence and presets."""

from typing import Literal

import pytest

from clbench.config import TrainConfig, apply_values, coerce, flatten, parse_set
from clbench.errors import ConfigError, RegistryError
from clbench.experiment import plan
from clbench.presets import PRESETS, Preset, Reported
from clbench.resolve import resolve


@pytest.mark.parametrize("value, tp, expected", [
    ("0.01", float, 0.01), ("1e-3", float, 1e-3), (3, float, 3.0), ("8", int, 8), ("true", bool, True),
    ("no", bool, False), ("none", int | None, None), ("4", int | None, 4), ("10,15", tuple[int, ...], (10, 15)),
    ("[0.9, 0.99]", tuple[float, float], (0.9, 0.99)), ("auto", int | Literal["auto"], "auto"),
    ("2", int | Literal["auto"], 2), ("cosine", Literal["constant", "cosine"], "cosine"),
])
def test_coerce(value, tp, expected):
    assert coerce(value, tp, "k") == expected


@pytest.mark.parametrize("value, tp", [
    ("abc", float), ("1.5", int), (True, int), ("maybe", bool), ("linear", Literal["constant", "cosine"]),
    ("1,2,3", tuple[float, float]), ([1], str),
])
def test_coerce_rejects_wrong_types(value, tp):
    with pytest.raises(ConfigError, match="expects"):
        coerce(value, tp, "train.x")


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="Unknown config key 'train.lrr'.*Did you mean 'lr'"):
        apply_values(TrainConfig(), {"lrr": 0.1}, "train")


def test_parse_set_and_flatten():
    assert parse_set(["train.lr=0.1", "sdlora.rank=8"]) == [("train.lr", "0.1"), ("sdlora.rank", "8")]
    for bad in ["train.lr", "=3", ".lr=1", "train.=1"]:
        with pytest.raises(ConfigError, match="Malformed override"):
            parse_set([bad])
    assert flatten({"train": {"lr": 0.1, "epochs": 2}, "method": {"rank": 4}}) == [
        ("train.lr", 0.1), ("train.epochs", 2), ("method.rank", 4)]


def test_precedence_defaults_benchmark_method_preset_overrides():
    run = resolve("lora", "shapes", 1, None, [])
    cfg = run.config
    assert cfg.train.eval_batch_size == 500  # benchmark default beats the dataclass default (256)
    assert cfg.train.logit_mask == "current"  # method default beats the dataclass default ("seen")
    assert cfg.train.lr == 0.05 and cfg.preset == "default"  # 'default' preset for lora on shapes
    assert cfg.backbone.name == "vit_micro_patch4_32.shapes_pre"
    over = resolve("lora", "shapes", 1, None, [("train.lr", "0.2"), ("lora.rank", "4"), ("lora.train.epochs", "2")], ["lora"])
    assert (over.config.train.lr, over.config.method_cfg.rank, over.config.train.epochs) == (0.2, 4, 2)


def test_method_scoped_overrides_only_touch_their_method():
    runs = plan(["lora", "finetune"], "shapes", [1], None, [("lora.rank", "4"), ("finetune.train.lr", "0.3")])
    lora, finetune = (r.config for r in runs)
    assert lora.method_cfg.rank == 4 and lora.train.lr == 0.05
    assert finetune.train.lr == 0.3


def test_override_errors():
    with pytest.raises(ConfigError, match="Method 'finetune' has no option 'rank'"):
        plan(["lora", "finetune"], "shapes", [1], None, [("method.rank", "4")])
    with pytest.raises(ConfigError, match="Unknown config section 'trian'"):
        resolve("lora", "shapes", 1, None, [("trian.lr", "1")])
    with pytest.raises(ConfigError, match="not among --methods"):
        resolve("lora", "shapes", 1, None, [("finetune.train.lr", "1")], ["lora"])
    with pytest.raises(ConfigError, match="expects a float"):
        resolve("lora", "shapes", 1, None, [("train.lr", "fast")])


@pytest.fixture
def preset():
    p = Preset("paperx", "lora", "shapes", {"train.lr": 0.123, "method.rank": 6}, when={"n_tasks": 2},
               source="test", reported=Reported(70.0, 80.0))
    PRESETS.append(p)
    yield p
    PRESETS.remove(p)


def test_named_preset_applies_only_to_its_setting(preset):
    run = resolve("lora", "shapes", 1, "paperx", [("benchmark.n_tasks", "2")])
    assert run.preset is preset and run.config.train.lr == 0.123 and run.config.method_cfg.rank == 6
    over = resolve("lora", "shapes", 1, "paperx", [("benchmark.n_tasks", "2"), ("train.lr", "0.5")])
    assert over.config.train.lr == 0.5  # the user beats the preset
    with pytest.raises(RegistryError, match=r"exists for the settings \[\{'n_tasks': 2\}\]"):
        resolve("lora", "shapes", 1, "paperx", [])
    with pytest.raises(RegistryError, match="No preset 'nope'"):
        resolve("lora", "shapes", 1, "nope", [])
