"""Saving and restoring method state whose structure grows task by task.

Methods add parameters as tasks arrive (heads grow, adapters are frozen and concatenated,
prompt components are appended). :func:`restore_state` loads a state dict into a freshly
built method whatever the shapes: parameters and buffers adopt the saved shapes, and
parameters that are ``None`` in the fresh module (e.g. no current adapter branch yet) are
created. Python-side structure travels in ``get_extra_state`` (JSON-serialisable values).

The contract every method meets (tested for all registered methods): loading the state
saved after task ``t`` (``task_state()``) into a fresh instance on the pretrained backbone
reproduces that instance's predictions after task ``t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

EXTRA = "_extra_state"


class StateMismatch(ValueError):
    """A saved state that does not fit the freshly built module (callers name the file)."""


def restore_state(module: nn.Module, state: Mapping[str, Any], omitted: tuple[str, ...] = ("backbone.",)) -> None:
    """Load ``state`` into ``module``, adopting saved shapes and creating missing parameters.

    Keys under the ``omitted`` prefixes may be absent from ``state`` (task states leave out
    the pretrained backbone); any other mismatch, including a method's ``set_extra_state``
    refusing the saved structure, is a :class:`StateMismatch`.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    for key, value in state.items():
        if key.endswith(EXTRA) or not torch.is_tensor(value):
            continue
        path, _, name = key.rpartition(".")
        try:
            owner = module.get_submodule(path) if path else module
        except AttributeError:
            continue  # no such module: load_state_dict reports the key as unexpected
        if name in owner._parameters:
            current = owner._parameters[name]
            if current is None or current.shape != value.shape:
                flag = True if current is None else current.requires_grad
                owner._parameters[name] = nn.Parameter(torch.empty_like(value, device=device), requires_grad=flag)
        elif name in owner._buffers:
            current = owner._buffers[name]
            if current is None or current.shape != value.shape:
                owner._buffers[name] = torch.empty_like(value, device=device)
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except (KeyError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        raise StateMismatch(f"state does not fit {type(module).__name__}: {exc}") from exc
    missing = [k for k in missing if not k.startswith(omitted)]
    if missing or unexpected:
        raise StateMismatch(f"state does not fit {type(module).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")

