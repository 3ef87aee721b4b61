"""Presets of the pretrained-model baselines from LAMDA-PILOT (APER's five variants).

``paper``: the official APER code (github.com/zhoudw-zdw/RevisitingCIL, ``exps/aper_*/``):
ViT-B/16 AugReg IN-21k (timm 0.6's ``vit_base_patch16_224_in21k``), the seed-1993 class order
(VTAB unshuffled: its five source datasets are the five tasks), inputs in [0, 1], SGD with
momentum 0.9 and a cosine schedule to 0 over the first task's epochs. Reported: Ā (AAA) and
A_B (final accuracy, Acc) of one run, from the result table of the EASE and MOS repositories
(``resources/result-table.png`` of sun-hailong/CVPR24-Ease and sun-hailong/AAAI25-MOS, whose
APER rows are the same); the committed APER logs agree within about 0.5 points.

``pilot``: LAMDA-PILOT's ``exps/aper_*.json`` (CIFAR-100 in 10 tasks, ImageNet-R in 10 tasks;
ViT-B/16 AugReg IN-21k fine-tuned on IN-1k, timm 0.6's ``vit_base_patch16_224``). PILOT's
reproductions are shown in its README only as images, not read here: no reported numbers.
``aper_vpt_shallow_inr.json`` names a backbone without prompts, so PILOT itself stops with
"VPT requires VPT backbone": there is no PILOT ImageNet-R preset for ``aper-vpt-shallow``.
"""

from __future__ import annotations

from clbench.presets import Reported, add_preset

IN21K = "vit_base_patch16_224.augreg_in21k"  # APER's vit_base_patch16_224_in21k
IN1K = "vit_base_patch16_224.augreg_in21k_ft_in1k"  # PILOT's vit_base_patch16_224 (timm 0.6.12)
APER_CODE = "zhoudw-zdw/RevisitingCIL"
TABLE = "EASE (CVPR 2024) / MOS (AAAI 2025) result tables, APER rows (one run, seed 1993)"
VARIANTS = ("aper-finetune", "aper-vpt-shallow", "aper-vpt-deep", "aper-ssf", "aper-adapter")
COMMON = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.schedule": "cosine"}

# (benchmark, n_tasks, official config name): table column
SETTINGS = {
    ("cifar100", 20, "cifar224_5_5"): "CIFAR B0 Inc5",
    ("cub200", 20, "cub_10_10"): "CUB B0 Inc10",
    ("imagenet_r", 40, "imagenetr_5_5"): "IN-R B0 Inc5",
    ("imagenet_a", 20, "imageneta_10_10"): "IN-A B0 Inc20 (sic)",
    ("objectnet", 20, "objectnet_10_10"): "ObjNet B0 Inc10",
    ("omnibenchmark", 10, "omni_30_30"): "OmniBench B0 Inc30",
    ("vtab", 5, "vtab_10_10"): "VTAB B0 Inc10",
}
NOTES = {"imagenet_a": "; the table header says B0 Inc20, but the official config and log run 20 tasks of 10 classes"}

# Reported (AAA, Acc) per variant, in the order of SETTINGS (the table's columns)
REPORTED = {
    "aper-finetune": [(87.67, 81.27), (91.82, 86.39), (70.51, 62.42), (61.01, 49.57), (61.41, 48.34), (73.02, 65.03),
                      (87.47, 80.44)],
    "aper-vpt-shallow": [(90.43, 84.57), (92.02, 86.51), (66.63, 58.32), (58.39, 47.20), (64.54, 52.53),
                         (79.63, 73.68), (87.15, 85.36)],
    "aper-vpt-deep": [(88.46, 82.17), (91.02, 84.99), (68.79, 60.48), (58.48, 48.52), (67.83, 54.65), (81.05, 74.47),
                      (86.59, 83.06)],
    "aper-ssf": [(87.78, 81.98), (91.72, 86.13), (68.94, 60.60), (61.30, 50.03), (69.15, 56.64), (80.53, 74.00),
                 (85.66, 81.92)],
    "aper-adapter": [(90.65, 85.15), (92.21, 86.73), (72.35, 64.33), (60.47, 49.37), (67.18, 55.24), (80.75, 74.37),
                     (85.95, 84.35)],
}


def official_values(method: str, bench: str) -> dict:
    """The official config's optimisation and module values for ``method`` on ``bench``."""
    values = {"train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48, "train.weight_decay": 5e-4}
    if method == "aper-adapter":
        values["method.adapter_rank"] = 64
        if bench == "imagenet_r":
            values.update({"train.lr": 0.05, "train.batch_size": 24, "train.weight_decay": 5e-3})
    elif method in ("aper-vpt-shallow", "aper-vpt-deep"):
        values["method.vpt_length"] = 5
        if method == "aper-vpt-deep" and bench == "objectnet":
            values["train.batch_size"] = 128
        elif method == "aper-vpt-deep" and bench != "omnibenchmark":
            values.update({"train.epochs": 5, "train.lr": 0.05, "train.batch_size": 16})
    elif method == "aper-finetune":
        values.update({"train.epochs": 5, "train.batch_size": 128})
    return values


for _i, ((_bench, _n, _config), _column) in enumerate(SETTINGS.items()):
    _order = {"benchmark.class_order": "natural"} if _bench == "vtab" else \
        {"benchmark.class_order": "seeded", "benchmark.order_seed": 1993}
    for _method in VARIANTS:
        _aaa, _acc = REPORTED[_method][_i]
        _folder = _method.replace("aper-", "aper_")
        add_preset("paper", _method, _bench,
                   {"backbone.name": IN21K, **COMMON, **official_values(_method, _bench), **_order},
                   f"{APER_CODE} exps/{_folder}/{_config}_vit-b_{_method.removeprefix('aper-')}.json",
                   Reported(_acc, _aaa, source=f"{TABLE}, {_column}{NOTES.get(_bench, '')}"), n_tasks=_n)

# The MOS table also reports APER on ImageNet-R in 10 tasks of 20 classes; the settings of those
# runs are not published (no config or log): the official ImageNet-R values are assumed.
for _method, (_aaa, _acc) in {"aper-finetune": (68.54, 58.37), "aper-vpt-shallow": (68.83, 62.03),
                              "aper-vpt-deep": (77.05, 69.47), "aper-ssf": (75.47, 67.02),
                              "aper-adapter": (75.82, 67.95)}.items():
    add_preset("paper", _method, "imagenet_r",
               {"backbone.name": IN21K, **COMMON, **official_values(_method, "imagenet_r"),
                "benchmark.class_order": "seeded", "benchmark.order_seed": 1993},
               f"{APER_CODE} exps/aper_*/imagenetr_5_5 values applied to 10 tasks (assumption: the run behind the "
               f"reported number has no published config)",
               Reported(_acc, _aaa, source="MOS (AAAI 2025) result table, APER rows, IN-R B0 Inc20 "
                                           "(unverified: settings of that run unknown)"), n_tasks=10)

# --------------------------------------------------------------------- PILOT (sun-hailong/LAMDA-PILOT exps/)
PILOT = {
    "aper-adapter": {"cifar100": ("aper_aperpter.json", {"train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48,
                                                         "train.weight_decay": 5e-4, "method.adapter_rank": 64}),
                     "imagenet_r": ("aper_aperpter_inr.json", {"train.epochs": 10, "train.lr": 0.05,
                                                               "train.batch_size": 16, "train.weight_decay": 5e-3,
                                                               "method.adapter_rank": 64})},
    "aper-ssf": {bench: (f"aper_ssf{suffix}.json", {"train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48,
                                                    "train.weight_decay": 5e-4})
                 for bench, suffix in (("cifar100", ""), ("imagenet_r", "_inr"))},
    "aper-vpt-deep": {"cifar100": ("aper_vpt_deep.json", {"train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48,
                                                          "train.weight_decay": 5e-4, "method.vpt_length": 5}),
                      "imagenet_r": ("aper_vpt_deep_inr.json", {"train.epochs": 20, "train.lr": 0.05,
                                                                "train.batch_size": 24, "train.weight_decay": 5e-4,
                                                                "method.vpt_length": 30})},
    "aper-vpt-shallow": {"cifar100": ("aper_vpt_shallow.json", {"train.epochs": 20, "train.lr": 0.01,
                                                                "train.batch_size": 48, "train.weight_decay": 5e-4,
                                                                "method.vpt_length": 5})},
    "aper-finetune": {"cifar100": ("aper_finetune.json", {"train.epochs": 6, "train.lr": 0.01, "train.batch_size": 128,
                                                          "train.weight_decay": 0.05}),
                      "imagenet_r": ("aper_finetune_inr.json", {"train.epochs": 5, "train.lr": 0.01,
                                                                "train.batch_size": 144, "train.weight_decay": 5e-3})},
}
for _method, _benches in PILOT.items():
    for _bench, (_file, _values) in _benches.items():
        add_preset("pilot", _method, _bench,
                   {"backbone.name": IN1K, **COMMON, **_values, "benchmark.class_order": "seeded",
                    "benchmark.order_seed": 1993},
                   f"sun-hailong/LAMDA-PILOT exps/{_file} (no reported number read: PILOT's README shows its "
                   f"results as images)", n_tasks=10)
