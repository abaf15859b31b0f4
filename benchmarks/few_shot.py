"""Few-shot, unknown-object and retrieval tables on the digits: ``python -m dlde.protocols.fewshot``
(:mod:`dlde.protocols.fewshot.cli`) under its earlier name, with the same flags and the same table file.

Examples::

    python benchmarks/few_shot.py              # full size: preset digits, 3 base seeds, k 1..30, 5 draws
    python benchmarks/few_shot.py --preset tiny --epochs 1 --base-seeds 0 1 --shots 1 2 --draws 2 --steps 2 \\
        --max-images 8 --base-runs-dir runs/tiny/fewshot_benchmark # a smoke test in about a minute
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde.kernels import pin_script  # noqa: E402
from dlde.protocols.fewshot.cli import main  # noqa: E402

if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
