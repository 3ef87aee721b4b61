"""Registries: decorator registration, helpful unknown-name errors."""

import pytest

from clbench.errors import RegistryError
from clbench.registry import BENCHMARKS, METHODS, Entry, Registry


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


def test_register_stamps_the_name_where_the_object_takes_attributes():
    reg = Registry("thing")

    @reg.register("my-thing")
    class Thing:
        """A thing."""

    @reg.register("a-function")
    def make() -> None:
        """Makes."""

    frozen = reg.register("frozen")(Entry("x", None, "", ""))  # a frozen dataclass takes no attributes
    reg.register("number")(7)
    assert (Thing.registered_name, make.registered_name) == ("my-thing", "a-function")
    assert not hasattr(frozen, "registered_name") and reg.get("number") == 7


def test_builtin_methods_and_benchmarks_carry_their_registered_names():
    for registry in (METHODS, BENCHMARKS):
        for entry in registry:
            assert entry.obj.registered_name == entry.name


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "hide-prompt"])
def test_prompt_methods_name_themselves_in_noncomparable_reasons(name):
    cls = METHODS.get(name)
    method = cls.__new__(cls)  # no backbone needed: only the reasons are read
    object.__setattr__(method, "noncomparable", [])
    method.flag_noncomparable(batchwise=True, reshape_bug=True)
    assert len(method.noncomparable) == 2 and all(r.startswith(f"{name}: ") for r in method.noncomparable)
