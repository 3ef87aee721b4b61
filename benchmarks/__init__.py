"""Benchmarks (one module each) and the paper presets. Importing this package registers them."""

from . import random_images, shapes  # noqa: F401  (register the built-in benchmarks)
from . import presets  # noqa: F401  (registers the presets)
from . import presets_prompt  # noqa: F401  (presets of the prompt methods)

DEFAULT_BENCHMARK = "shapes"
