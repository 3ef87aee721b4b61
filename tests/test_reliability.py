"""Bad values, corrupt files, full disks and killed runs end in one clear message, never a
traceback (issue 16). Every bad input is generated here."""

from __future__ import annotations

import pytest

from clbench.errors import ConfigError
from clbench.experiment import DataCache, plan

from conftest import TINY


def _plan(tmp_path, *overrides, method="lora", cache=None):
    return plan([method], "shapes", [1993], None, TINY + [("engine.output_dir", str(tmp_path / "out")), *overrides],
                cache)


@pytest.mark.parametrize("key, value, message", [
    ("train.lr", "nan", r"'train.lr' must be in \(0, 1000000\], got nan\. Fix it, e\.g\. --set train\.lr=0\.01\."),
    ("train.lr", "-0.1", r"'train.lr' must be in \(0, 1000000\], got -0\.1\."),
    ("train.lr", "1e300", r"'train.lr' must be in \(0, 1000000\], got 1e\+300\."),  # Adam/SGD overflowed
    ("train.first_task_lr", "inf", r"'train.first_task_lr' must be in \(0, 1000000\], got inf\."),
    ("train.batch_size", "0", r"'train.batch_size' must be >= 1, got 0\. Fix it, e\.g\. --set train\.batch_size=64\."),
    ("train.epochs", "0", r"'train.epochs' must be >= 1, got 0\. Fix it, e\.g\. --set train\.epochs=5\."),
    ("train.epochs", "-2", r"'train.epochs' must be >= 1, got -2\."),
    ("train.first_task_epochs", "0", r"'train.first_task_epochs' must be >= 1, got 0\."),
    ("benchmark.n_classes", "0", r"'benchmark.n_classes' must be in \[1, \d+\), got 0\."),
    ("benchmark.n_tasks", "0", r"'benchmark.n_tasks' must be >= 1, got 0\."),
    ("engine.checkpoint_every", "-1", r"'engine.checkpoint_every' must be >= 0, got -1\."),
    ("lora.rank", "0", r"'lora.rank' must be >= 1, got 0\. Fix it, e\.g\. --set lora\.rank=10\."),
])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, (key, value))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, key, value, message", [
    ("inflora", "inflora.rank", "0", r"'inflora.rank' must be >= 1"),
    ("inflora", "inflora.lamb", "1.5", r"'inflora.lamb' must be in \[0, 1\], got 1\.5\. Fix it, e\.g\. --set inflora\.lamb=0\.95"),
    ("inflora", "inflora.blocks", "0,-1", r"'inflora.blocks' must have every value >= 0"),
    ("dualprompt", "dualprompt.pool_size", "0", r"'dualprompt.pool_size' must be >= 1"),
    ("dualprompt", "dualprompt.e_length", "0", r"'dualprompt.e_length' must be >= 1"),
    ("coda-prompt", "coda-prompt.prompt_length", "0", r"'coda-prompt.prompt_length' must be >= 2"),
    ("coda-prompt", "coda-prompt.ortho_mu", "-1", r"'coda-prompt.ortho_mu' must be >= 0"),
])
def test_method_options_have_ranges(tmp_path, method, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, (key, value), method=method)


def test_every_method_option_has_help_and_a_range_its_default_meets():
    from clbench.config import check_options, describe_options
    from clbench.registry import METHODS

    for name in ("lora", "inflora", "inflora-b5", "dualprompt", "coda-prompt", "finetune", "simplecil"):
        cls = METHODS.get(name).Config
        check_options(cls(), name)
        options = describe_options(cls)
        assert all(o.help for o in options), name
        assert all(o.range for o in options if o.type in ("int", "float", "tuple[int, ...]")), name


def test_a_run_that_would_not_train_is_refused(tmp_path):
    """16 training samples per task, batch 32, drop_last: zero steps. Refused for a method
    that trains; fine for one that trains nothing by design."""
    bad = [("train.batch_size", 32), ("train.drop_last", "true")]
    with pytest.raises(ConfigError, match=r"Task 1 of shapes has 32 training samples, which with train\.batch_size=64 "
                                          r"and train\.drop_last=true gives no training step: 'lora' would record a run "
                                          r"that did not train\. Fix it, e\.g\. --set train\.batch_size=32 or "
                                          r"--set train\.drop_last=false\."):
        _plan(tmp_path, ("train.batch_size", 64), ("train.drop_last", "true"), cache=DataCache())
    assert not (tmp_path / "out").exists()
    _plan(tmp_path, *bad, cache=DataCache())  # 2 classes x 16 = 32 samples: one step
    (run,) = _plan(tmp_path, ("train.batch_size", 64), ("train.drop_last", "true"), method="simplecil",
                   cache=DataCache())
    assert run.config.train.batch_size == 64
