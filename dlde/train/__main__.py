"""``python -m dlde.train ...`` and ``torchrun ... -m dlde.train ...``: see :func:`dlde.train.cli.main`.

The command first takes the portable numeric kernels (:func:`dlde.kernels.pin_this_process`;
``--native-kernels`` turns them off), then checks the dataset it is asked for
(:func:`dlde.train.preflight.check_dataset`): both before torch loads (``dlde`` and ``dlde.train``
import their public names on first use). Then it trains.
"""
import sys

from dlde.kernels import pin_this_process

pin_this_process(module="dlde.train")

from .preflight import check_dataset  # noqa: E402 - after the pin, which may re-execute the command

check_dataset(sys.argv[1:])

from .cli import main  # noqa: E402 - after the dataset check, which needs no torch

main()
