"""Registries: decorator registration, helpful unknown-name errors."""

import pytest

from clbench.errors import RegistryError
from clbench.registry import BENCHMARKS, METHODS, Registry


def test_builtins_are_registered_with_descriptions():
    for name in ("finetune", "joint", "lora", "simplecil"):
        assert name in METHODS and METHODS.entry(name).description
    assert "shapes" in BENCHMARKS


def test_unknown_name_lists_valid_and_suggests():
    with pytest.raises(RegistryError) as err:
        METHODS.get("finetun")
    msg = str(err.value)
    assert "Unknown method 'finetun'" in msg and "Did you mean 'finetune'" in msg and "simplecil" in msg


def test_duplicate_names_are_rejected():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        """First."""

    with pytest.raises(RegistryError, match="registered twice"):
        @reg.register("a")
        class B:
            """Second."""

    assert reg.entry("a").description == "First."
