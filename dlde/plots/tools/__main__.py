"""``python -m dlde.plots.tools COMMAND ...``: see :mod:`dlde.plots.tools.cli`."""
import sys

from .cli import main

sys.exit(main())
