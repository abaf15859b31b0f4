"""``python -m dlde.pipeline --config figures.yaml ...``: see :func:`dlde.pipeline.cli.main`.

The command first takes the portable numeric kernels (:func:`dlde.kernels.pin_this_process`;
``--native-kernels`` turns them off); the notebook kernels and torchrun workers it starts inherit
the setting.
"""
import sys

from dlde.kernels import pin_this_process

pin_this_process(module="dlde.pipeline")

from .cli import main  # noqa: E402 - after the pin, which may re-execute the command

sys.exit(main())
