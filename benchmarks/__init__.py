"""Benchmarks (one module each) and the paper presets. Importing this package registers them."""

from . import random_images, shapes  # noqa: F401  (register the built-in benchmarks)
from . import aper, cifar100, cub200, domainnet, imagenet_a, imagenet_r  # noqa: F401  (real benchmarks)
from . import presets, presets_dino, presets_expandable, presets_lora, presets_prompt  # noqa: F401  (register the presets)
from . import presets_analytic, presets_pilot  # noqa: F401  (pretrained-model baselines' presets)
from . import presets_efficiency  # noqa: F401  (published efficiency on the presets above)
