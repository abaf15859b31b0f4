"""``python -m dlde.train.reimprint_cli RUN_DIR [--buckets r c] [--refit STEPS] [--out FILE.json]``: re-imprint a
finished run's class means (:func:`dlde.train.reimprint.reimprint_run`) and print its last metrics and
those of the re-imprinted model.

Nothing in the run folder changes; ``--out`` writes both, refusing a file that exists. Re-imprinting
after the last epoch is the same computation whether the trainer does it (``reimprint='end'``) or this
command does it on the finished run: the same checkpoint, the same pass over the training set, the
same evaluation. ``--refit`` then fits the head's scale and bias again (the trainer's
``reimprint_refit``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from dlde.data.long_tail import BUCKETS
from dlde.files import atomic_write_json
from dlde.kernels import pin_this_process

from .config import TrainConfig
from .reimprint import reimprint_run
from .runs import load_run
from .validation import evaluate_model

#: The metrics printed before and after.
SHOWN = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m dlde.train.reimprint_cli``: the run's last metrics, then re-imprinted ones, as JSON."""
    parser = argparse.ArgumentParser(prog="python -m dlde.train.reimprint_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run folder (its checkpoint and training set are used)")
    parser.add_argument("--buckets", nargs="+", choices=tuple(BUCKETS), default=None,
                        help="re-imprint only the classes of these frequency buckets (default: all)")
    parser.add_argument("--refit", type=int, default=0, metavar="STEPS",
                        help="then fit the head's scale and bias again for this many steps (refit_scores; default 0)")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file (must not exist)")
    args = parser.parse_args(argv)
    if args.out is not None and Path(args.out).exists():
        parser.exit(2, f"{parser.prog}: error: {args.out} exists; choose another --out\n")
    run = load_run(args.run_dir)
    config = TrainConfig.from_dict(run.config).updated({"progress": False})
    if args.refit < 0:
        parser.error(f"--refit must be >= 0, got {args.refit}")
    model, report = reimprint_run(args.run_dir, buckets=args.buckets, refit=args.refit)
    _, val_set = run.datasets()
    metrics = evaluate_model(model, val_set, config, "cpu")
    result = {"run_dir": str(args.run_dir), "buckets": args.buckets, **report,
              "before": {key: run.last.get(key) for key in SHOWN if key in run.last},
              "after": {key: metrics[key] for key in SHOWN if key in metrics}}
    print(json.dumps(result, indent=1))
    if args.out is not None:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    pin_this_process(module="dlde.train.reimprint_cli")
    main()
