"""``python -m dlde.train ...`` and ``torchrun ... -m dlde.train ...``: see :func:`dlde.train.cli.main`.

The command first takes the portable numeric kernels (:func:`dlde.kernels.pin_this_process`;
``--native-kernels`` turns them off), then trains.
"""
from dlde.kernels import pin_this_process

pin_this_process(module="dlde.train")

from .cli import main  # noqa: E402 - after the pin, which may re-execute the command

main()
