"""Continual-learning methods, one module each. Importing this package registers them.

The folder is ``methods/`` in the repository and installs as ``clbench.methods``.
"""

from . import finetune, inflora, lora, sdlora, simplecil  # noqa: F401  (register the methods)
from .base import CLMethod, Phase, StepOutput, StreamInfo

__all__ = ["CLMethod", "Phase", "StepOutput", "StreamInfo"]
