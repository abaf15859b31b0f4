"""``python -m dlde.protocols.fewshot ...``: see :mod:`dlde.protocols.fewshot.cli`.

The command first takes the portable numeric kernels (:func:`dlde.kernels.pin_this_process`;
``--native-kernels`` turns them off), as the benchmark script it replaced did.
"""
import sys

from dlde.kernels import NATIVE_FLAG, pin_this_process

pin_this_process(module="dlde.protocols.fewshot")
sys.argv[1:] = [word for word in sys.argv[1:] if word != NATIVE_FLAG]

from .cli import main  # noqa: E402 - after the pin, which may re-execute the command

main()
