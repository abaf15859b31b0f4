"""``python -m dlde.train ...`` and ``torchrun ... -m dlde.train ...``: see :func:`dlde.train.cli.main`."""
from .cli import main

main()
