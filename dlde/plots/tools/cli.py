"""``python -m dlde.plots.tools COMMAND ...``: the figure tools, one subcommand each.

``compare DIR_A DIR_B`` (:func:`dlde.plots.tools.compare.main`) and ``print-check [...]``
(:func:`dlde.plots.tools.print_check.main`); ``COMMAND --help`` lists a command's flags.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from . import compare, print_check

#: Subcommand -> its main (arguments after the subcommand -> exit status).
COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {"compare": compare.main,
                                                               "print-check": print_check.main}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand ``argv[0]`` with the rest; 2 (and the usage) for a missing or unknown one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m dlde.plots.tools {{{','.join(COMMANDS)}}} ...\n{__doc__.splitlines()[2].strip()}",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return COMMANDS[argv[0]](argv[1:])
