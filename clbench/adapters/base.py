"""The :class:`Injection` base: an adapter attached to an untouched timm backbone by hooks.

An injection never replaces timm modules; it registers forward (and state-dict) hooks on them,
so the backbone's parameters keep timm's names. The lifecycle:

* **build**: the subclass resolves every module it needs with :meth:`Injection.module_at` (or
  :meth:`Backbone.qkv <clbench.backbones.Backbone.qkv>`) before registering any hook. A
  backbone without one raises a :class:`~clbench.errors.ConfigError` naming the model, the
  missing module and the fix, at build time rather than as an ``AttributeError`` in a forward.
  Hooks are then registered with :meth:`Injection.hook`, which keeps every handle.
* **use**: the hooks act on every forward of the backbone (some injections only while fed
  inputs, see :mod:`clbench.adapters.prompt`).
* :meth:`Injection.remove`: restores what the injection changed in place (e.g. branches merged
  into weights, from copies of the original rows) and removes every hook; the backbone then
  computes exactly (bit for bit) the forward it had before the injection was built.

``repr`` lists the hooked modules by path (``vit.blocks.0.attn.qkv: forward``), and
:func:`injections` the injections attached to a backbone.

Stacking: two injections of the same kind on the same module are an error at build time (they
would both act, e.g. two low-rank adapters adding to the same rows), and the module's hooks are
left as they were. Injections of different kinds may share a module (e.g. LoRA and key/value
prefixes on one ``qkv``); both show in their reprs.

A new adapter (e.g. a bottleneck adapter next to the MLP, per-channel scale and shift) follows
the same pattern: resolve its modules in ``__init__``, register its hooks with :meth:`hook`,
own its parameters, and override :meth:`_restore` only if it changes weights in place.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..backbones import Backbone
from ..errors import ConfigError

_LIVE: weakref.WeakSet[Injection] = weakref.WeakSet()  # attached injections, on any backbone
_SERIAL = itertools.count()

_REGISTER = {
    "forward": nn.Module.register_forward_hook,
    "forward_pre": nn.Module.register_forward_pre_hook,
    "state_dict": nn.Module.register_state_dict_post_hook,
}


def injections(backbone: Backbone) -> list[Injection]:
    """The injections attached to ``backbone``, in the order they were built."""
    found = [inj for inj in _LIVE if inj.attached and inj._backbone() is backbone]
    return sorted(found, key=lambda inj: inj._serial)


class Injection(nn.Module):
    """Base of every adapter that hooks into a :class:`~clbench.backbones.Backbone`."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone_tag = backbone.tag
        self._backbone = weakref.ref(backbone)  # not a submodule: the backbone is owned elsewhere
        self._serial = next(_SERIAL)
        self._hooks: list[tuple[str, str, RemovableHandle]] = []  # (module path, kind, handle)

    # ------------------------------------------------------------------ build
    def module_at(self, backbone: Backbone, path: str) -> nn.Module:
        """The module at ``path`` (e.g. ``vit.blocks.0.attn.proj``), or a ConfigError saying what is missing."""
        module: nn.Module = backbone
        walked = []
        for name in path.split("."):
            child = module._modules.get(name)
            if child is None:
                at = ".".join(walked) or "the backbone"
                if isinstance(module, (nn.ModuleList, nn.Sequential)):
                    found = (f"'{at}' has {len(module)} entries. Choose indices 0..{len(module) - 1} "
                             f"(the method's block/layer options)")
                else:
                    found = (f"'{at}' has no module '{name}'. Use a timm VisionTransformer-style model (patch_embed, "
                             f"norm_pre, blocks[i].attn with a fused qkv and proj), or a method that does not adapt "
                             f"the backbone")
                raise ConfigError(f"{type(self).__name__} cannot attach to backbone '{self.backbone_tag}': it hooks "
                                  f"'{path}', but {found}.")
            module = child
            walked.append(name)
        return module

    def hook(self, path: str, module: nn.Module, fn: Callable, kind: str = "forward", **options: Any) -> None:
        """Register ``fn`` on ``module`` (found at ``path``) as a ``kind`` hook: ``forward``,
        ``forward_pre`` or ``state_dict`` (a post hook); ``options`` go to torch's register call."""
        for other in injections(self._backbone()):
            same_kind = isinstance(other, type(self)) or isinstance(self, type(other))
            if other is not self and same_kind and path in other.hooked_paths():
                self.remove()
                raise ConfigError(
                    f"Backbone '{self.backbone_tag}' already has a {type(other).__name__} on {path}; a second one "
                    f"would act on the same module on top of it. Use the one already attached, or remove() it first.")
        self._hooks.append((path, kind, _REGISTER[kind](module, fn, **options)))
        _LIVE.add(self)

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def hooked_paths(self) -> list[str]:
        """Paths of the hooked modules, each once, in the order they were hooked."""
        return list(dict.fromkeys(path for path, _, _ in self._hooks))

    def remove(self) -> None:
        """Undo the injection: restore what it changed in place, then remove every hook."""
        if self._hooks:
            self._restore()
        for _, _, handle in self._hooks:
            handle.remove()
        self._hooks = []
        _LIVE.discard(self)

    def _restore(self) -> None:
        """Put back what the injection changed in place (default: nothing; hooks only)."""

    def _require_attached(self) -> None:
        if not self.attached:
            raise RuntimeError(f"this {type(self).__name__} was removed from its backbone")

    def extra_repr(self) -> str:
        if not self._hooks:
            return "hooks=[] (removed)"
        kinds: dict[str, list[str]] = {}
        for path, kind, _ in self._hooks:
            kinds.setdefault(path, [])
            if kind not in kinds[path]:
                kinds[path].append(kind)
        return "hooks=[" + ", ".join(f"{path}: {'+'.join(k)}" for path, k in kinds.items()) + "]"


class SwitchableInjection(Injection):
    """An injection whose hooks can be switched off: inside :meth:`disabled` the backbone
    computes its plain forward (e.g. the pretrained branch next to an adapted one)."""

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        self.enabled = True

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous
