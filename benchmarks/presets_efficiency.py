"""The SD-LoRA paper's Table 5 (efficiency on ImageNet-R, N=20) on the presets that re-run it.

Wu et al., "SD-LoRA: Scalable Decoupled Low-Rank Adaptation for Class Incremental Learning"
(ICLR 2025), Table 5: inference GFLOPs per image, learnable parameters (M) and stored
features (M) per method. ``clbench report`` shows these beside the measured figures of runs
that are comparable with the preset (see :mod:`clbench.comparability`). The paper's InfLoRA
row is InfLoRA-b5 (its accuracy rows match InfLoRA-b5 digit for digit).
"""

from __future__ import annotations

from clbench.presets import ReportedEfficiency, cite_efficiency

TABLE5 = "SD-LoRA (Wu et al., ICLR 2025) Table 5, ImageNet-R N=20"

# (preset, method): (GFLOPs, learnable params M, stored features M)
_TABLE5 = {
    ("sdlora", "l2p"): (70.14, 0.48, 0.0),
    ("sdlora", "dualprompt"): (70.26, 0.06, 0.0),
    ("sdlora", "coda-prompt"): (70.61, 0.38, 0.0),
    ("sdlora", "hide-prompt"): (70.36, 0.08, 0.15),
    ("sdlora", "inflora-b5"): (35.12, 0.37, 0.10),
    ("paper", "sdlora"): (35.12, 0.37, 0.0),
    ("paper", "sdlora-rr"): (35.12, 0.23, 0.0),
}

for (_preset, _method), (_gflops, _params, _stored) in _TABLE5.items():
    cite_efficiency(_preset, _method, "imagenet_r", ReportedEfficiency(_gflops, _params, _stored, TABLE5), n_tasks=20)
