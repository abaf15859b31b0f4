"""``python -m dlde.train ...`` and ``torchrun ... -m dlde.train ...``: see :func:`dlde.train.loop.main`."""
from .loop import main

main()
