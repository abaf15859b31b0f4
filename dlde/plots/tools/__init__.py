"""Tools that check figure files, behind one command line (:mod:`.cli`)::

    python -m dlde.plots.tools compare figures/ other_clone/figures/   # same bytes, pixels or drawing?
    python -m dlde.plots.tools print-check [--drawn] [--column 3.4]     # readable at its print width?

:mod:`.compare` tells two figure files apart by bytes, pixels (PNG) or drawing (PDF);
:mod:`.print_check` measures each figure at the width it is printed at (text size, series told
apart by colour only, grey levels of the palettes).
"""
