"""Presets: paper hyperparameters per method × benchmark, each citing its source.

``default`` presets are clbench's tuned settings for the embedded ``shapes`` benchmark; they
apply whenever no ``--preset`` is given.
"""

from __future__ import annotations

from clbench.presets import add_preset

# --- shapes (embedded default): clbench's own settings, tuned on this benchmark's first seed.
for _method, _values in {
    "finetune": {"train.lr": 0.01},
    "joint": {"train.lr": 0.01},
    "lora": {"train.lr": 0.05},
}.items():
    add_preset("default", _method, "shapes", _values, "clbench defaults for 'shapes'")
