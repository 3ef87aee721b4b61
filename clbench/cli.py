"""The ``clbench`` command line: one Typer app, its commands in the ``cli_*`` modules.

Every command turns a :class:`~clbench.errors.ClbenchError` into a one-paragraph message and
a non-zero exit code, without a traceback (:func:`clbench.cli_common.friendly`).
"""

from __future__ import annotations

import sys

# Each module attaches its commands on import, in the order 'clbench --help' lists them.
from . import cli_run  # noqa: F401  (run, list, pretrain-embedded, bench)
from . import cli_config  # noqa: F401  (config)
from . import cli_data  # noqa: F401  (data)
from . import cli_report  # noqa: F401  (report, landscape)
from . import cli_sweep  # noqa: F401  (sweep)
from .cli_common import app


def main() -> None:
    """Console-script entry point."""
    app(prog_name="clbench")


if __name__ == "__main__":  # pragma: no cover  ('python -m clbench.cli', also under torchrun)
    sys.exit(main())
