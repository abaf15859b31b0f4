"""``python -m dlde.pipeline --config figures.yaml ...``: see :func:`dlde.pipeline.runner.main`."""
import sys

from .runner import main

sys.exit(main())
