"""Name registries for methods, benchmarks and backbones.

Built-in entries register themselves with decorators when their module is imported.
Third-party packages add entries through the ``clbench.plugins`` entry-point group: each
entry point names a module (or a callable) that is imported (or called) once, the first
time a registry is queried, and registers its entries with the same decorators::

    # pyproject.toml of a plugin package
    [project.entry-points."clbench.plugins"]
    my_methods = "my_package.clbench_methods"
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import RegistryError, closest

T = TypeVar("T")

PLUGIN_GROUP = "clbench.plugins"
_BUILTIN_MODULES = ("clbench.methods", "clbench.benchmarks", "clbench.backbones")
_loaded = False
_loading: Plugin | None = None  # the plugin whose entry point is being loaded


@dataclass(frozen=True)
class Plugin:
    """The installed distribution whose ``clbench.plugins`` entry point registered an entry."""

    distribution: str | None
    version: str | None
    entry_point: str  # 'name = module[:attr]' as the distribution declares it


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its name and one-line description."""

    name: str
    obj: T
    description: str
    source: str  # module that registered it
    plugin: Plugin | None = None  # None: registered by clbench itself (or a direct import)

    def provenance(self, kind: str) -> dict[str, Any]:
        """What a run record lists about a plugin's entry: distribution, version, module file."""
        module = sys.modules.get(self.source)
        return {"kind": kind, "name": self.name, "distribution": self.plugin.distribution if self.plugin else None,
                "version": self.plugin.version if self.plugin else None,
                "entry_point": self.plugin.entry_point if self.plugin else None,
                "module": self.source, "file": getattr(module, "__file__", None)}


class Registry(Generic[T]):
    """A mapping from names to registered objects, filled by :meth:`register`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        The description defaults to the first line of the object's docstring. The object is
        stamped with ``obj.registered_name = name`` where it takes attributes (classes,
        functions), so it never needs to spell its own name again.
        """

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice (by {self._entries[name].source} "
                    f"and {getattr(obj, '__module__', '?')}). Rename one of them."
                )
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc, getattr(obj, "__module__", "?"), _loading)
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):  # frozen dataclasses, builtins: nothing to stamp
                pass
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names raise a helpful error."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        load_plugins()
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(
                f"Unknown {self.kind} '{name}'.{closest(name, self._entries)} "
                f"Valid {self.kind}s: {valid}. Run 'clbench list' to see them with descriptions."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


METHODS: Registry[Any] = Registry("method")
BENCHMARKS: Registry[Any] = Registry("benchmark")
BACKBONES: Registry[Any] = Registry("backbone")

register_method = METHODS.register
register_benchmark = BENCHMARKS.register
register_backbone = BACKBONES.register


def load_plugins() -> None:
    """Import the built-in modules and every ``clbench.plugins`` entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    global _loading
    for ep in entry_points(group=PLUGIN_GROUP):
        dist = getattr(ep, "dist", None)
        _loading = Plugin(dist.metadata["Name"] if dist else None, dist.version if dist else None,
                          f"{ep.name} = {ep.value}")
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:  # a broken plugin must not hide the built-ins
            raise RegistryError(
                f"The clbench plugin '{ep.name}' ({ep.value}) failed to import: {exc}. "
                f"Fix or uninstall the package that provides it."
            ) from exc
        finally:
            _loading = None


def plugins_used(method: str, benchmark: str, backbone: str) -> list[dict[str, Any]]:
    """Provenance of the run's method, benchmark and backbone that plugins registered."""
    used = [(METHODS, method), (BENCHMARKS, benchmark), (BACKBONES, backbone)]
    return [registry.entry(name).provenance(registry.kind) for registry, name in used
            if name in registry and registry.entry(name).plugin is not None]
