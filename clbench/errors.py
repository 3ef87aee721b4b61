"""User-facing errors.

A :class:`ClbenchError` is a problem with the user's input or environment (unknown name,
bad config value, missing file). The CLI prints its message as one paragraph, without a
traceback, and exits with a non-zero code. Every message names the problem and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClbenchError(Exception):
    """An error the user can fix; the message says how."""

    exit_code = 2


class ConfigError(ClbenchError):
    """A bad configuration key, value or override."""


class RegistryError(ClbenchError):
    """An unknown method, benchmark, backbone or preset name."""


class DataError(ClbenchError):
    """A dataset, split file or image that is missing, malformed or corrupt."""


class WeightsError(ClbenchError):
    """Pretrained weights that cannot be found or do not match."""


class OutputError(ClbenchError):
    """A results directory that cannot be created or written."""


class DamagedFileError(ClbenchError):
    """A file clbench wrote (record, checkpoint, task state, cache) that is damaged, truncated,
    edited into something else, or not a clbench file at all; it was not used."""


class TrainingDiverged(ClbenchError):
    """The loss became NaN or infinite."""

    exit_code = 3


class NonFiniteMerge(TrainingDiverged):
    """Merging an adapter into backbone weights would make them NaN or infinite (they are left unchanged)."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' hint for ``name`` among ``choices`` (or '')."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""
