"""The per-task state file: a method's tensors as safetensors, its non-tensor (extra-state)
entries as JSON in the file's metadata.

Written by :func:`clbench.records.save_state`; read back with :func:`load_state_file` and
loaded into a fresh method with :func:`clbench.engine.state.restore_state`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import DamagedFileError

_META_PREFIX = "extra:"


def split_extra(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors, and JSON strings for the non-tensor (extra-state) entries."""
    tensors, meta = {}, {}
    for key, value in state.items():
        if torch.is_tensor(value):
            tensors[key] = value.detach().to("cpu").contiguous().clone()
        else:
            meta[_META_PREFIX + key] = json.dumps(value)
    return tensors, meta


def load_state_file(path: str | Path) -> dict[str, Any]:
    """Read a state saved by :func:`clbench.records.save_state` (tensors + extra states).

    A file that is not such a state (truncated, corrupt, hostile) raises
    :class:`~clbench.errors.DamagedFileError` naming it; nothing in it is executed."""
    from safetensors import safe_open

    state: dict[str, Any] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                state[key] = fh.get_tensor(key)
            for key, value in (fh.metadata() or {}).items():
                if key.startswith(_META_PREFIX):
                    state[key[len(_META_PREFIX):]] = json.loads(value)
    except FileNotFoundError:
        raise DamagedFileError(f"The task state {path} does not exist; it was removed. Re-run the task's run with "
                               f"--set engine.save_task_state=always to have it again.") from None
    except Exception as exc:  # safetensors reports damage as SafetensorError, UnicodeDecodeError, OSError, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedFileError(f"The task state {path} is damaged or no safetensors state written by clbench "
                               f"({detail}). Restore it from a copy, or re-run the run to write it again.") from None
    return state
