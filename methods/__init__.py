"""Continual-learning methods, one module each. Importing this package registers them.

The folder is ``methods/`` in the repository and installs as ``clbench.methods``.
"""

from . import finetune, lora, simplecil  # noqa: F401  (register the baselines)
from . import inflora, sdlora  # noqa: F401  (LoRA-based methods)
from . import ease, mos  # noqa: F401  (expandable and mergeable adapters)
from . import coda_prompt, dualprompt, hide_prompt, l2p  # noqa: F401  (prompt methods)
from . import aper  # noqa: F401  (first-session adaptation + prototypes)
from . import fecam, ranpac, slca  # noqa: F401  (pretrained-model baselines: statistics heads)
from .base import CLMethod, Phase, StepOutput, StreamInfo

__all__ = ["CLMethod", "Phase", "StepOutput", "StreamInfo"]
