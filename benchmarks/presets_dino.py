"""``dino`` presets: the runs behind the SD-LoRA paper's Fig. 5 (self-supervised DINO ViT-B/16).

Fig. 5 plots the average accuracy after each task of eight methods on (a) ImageNet-A N=10,
(b) ImageNet-R N=10 and (c) ImageNet-R N=5 with the DINO ViT-B/16 (Caron et al., ICCV 2021)
instead of the supervised IN-21k/IN-1k one. Each ``dino`` preset is the method's preset of
the SD-LoRA tables for that setting (``paper`` for the SD-LoRA family, ``sdlora`` for the
other methods) with the backbone swapped: timm's ``vit_base_patch16_224.dino`` (the name
``vit_base_patch16_224_dino`` commented out in the released ``models/sdlora.py`` is timm's
deprecated alias of it). The paper gives no table for Fig. 5, so no numbers are attached;
``clbench report`` plots the regenerated curves (accuracy after each task per method).
"""

from __future__ import annotations

from clbench.presets import PRESETS, add_preset

from . import presets_lora, presets_prompt  # noqa: F401  (the presets these are derived from)

DINO_BACKBONE = "vit_base_patch16_224.dino"
FIG5_SETTINGS = (("imagenet_a", 10, "a"), ("imagenet_r", 10, "b"), ("imagenet_r", 5, "c"))
FIG5_METHODS = {"l2p": "sdlora", "dualprompt": "sdlora", "coda-prompt": "sdlora", "hide-prompt": "sdlora",
                "inflora-b5": "sdlora", "sdlora": "paper", "sdlora-rr": "paper", "sdlora-kd": "paper"}


def _base(name: str, method: str, benchmark: str, n_tasks: int):
    for preset in PRESETS:
        if (preset.name, preset.method, preset.benchmark) == (name, method, benchmark) and \
                preset.when.get("n_tasks") == n_tasks:
            return preset
    raise LookupError(f"no '{name}' preset of {method} on {benchmark} N={n_tasks} to derive the DINO preset from")


for _bench, _n, _panel in FIG5_SETTINGS:
    for _method, _from in FIG5_METHODS.items():
        _preset = _base(_from, _method, _bench, _n)
        add_preset("dino", _method, _bench, {**_preset.values, "backbone.name": DINO_BACKBONE},
                   f"SD-LoRA (Wu et al., ICLR 2025) Fig. 5({_panel}), DINO ViT-B/16 ({DINO_BACKBONE}); otherwise the "
                   f"'{_from}' preset: {_preset.source}; a figure only, no reported numbers",
                   n_tasks=_n)
