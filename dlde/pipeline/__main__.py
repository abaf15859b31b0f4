"""``python -m dlde.pipeline --config figures.yaml ...``: see :func:`dlde.pipeline.cli.main`."""
import sys

from .cli import main

sys.exit(main())
