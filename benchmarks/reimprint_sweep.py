"""Re-imprinting measured on the finished runs of a sweep: each run as trained, and its class means
re-imprinted after the last epoch from one pass over its training set (all classes, or only the
classes of some frequency buckets), evaluated on its validation set.

Re-imprinting after the last epoch does not change the training, so it is measured on the runs
the sweep trained (:func:`dlde.train.reimprint.reimprint_run`) instead of training the arm again:
the same checkpoint, the same pass, the same evaluation as the trainer's ``reimprint='end'``.

Example::

    python benchmarks/reimprint_sweep.py --config figures.yaml --sweep vocabulary_longtail \\
        --arms C=1000,dlde,center --buckets all r,c --table figures/ablations/vocabulary_reimprint.md

Each run's numbers are kept in ``--cache`` (default ``runs/reimprint``, one JSON per run and choice of
buckets) and reused; the run folders are never written. ``--table`` writes mean ± sd [95 % t-interval]
over seeds per arm and choice, with the provenance line of :func:`dlde.tables.write_table_file`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dlde.analysis.sweep_stats import summarize_arms
from dlde.files import atomic_write_json
from dlde.kernels import pin_script
from dlde.pipeline.sweeps import make_sweep_plan
from dlde.reports.sweeps import sweep_table
from dlde.tables import write_table_file
from dlde.train.config import TrainConfig
from dlde.train.reimprint import reimprint_run
from dlde.train.runs import RunFolder, load_run
from dlde.train.validation import evaluate_model

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def measured(run_dir: Path, buckets: tuple[str, ...] | None, cache: Path, refit: int = 0) -> dict[str, float]:
    """The run's validation metrics with its means re-imprinted (``buckets``: None for all) and, with
    ``refit`` steps, the head's scale and bias fitted again; cached."""
    path = cache / f"{'all' if buckets is None else '-'.join(buckets)}{f'-refit{refit}' if refit else ''}.json"
    if path.exists():
        return json.loads(path.read_text())
    run = load_run(run_dir)
    config = TrainConfig.from_dict(run.config).updated({"progress": False})
    model, report = reimprint_run(run_dir, buckets=buckets, refit=refit)
    metrics = evaluate_model(model, run.datasets()[1], config, "cpu")
    numbers = {**{key: float(metrics[key]) for key in METRICS if key in metrics}, **report}
    atomic_write_json(path, numbers)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="figures.yaml")
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--arms", nargs="+", required=True, help="arms of the sweep whose runs are re-imprinted")
    parser.add_argument("--buckets", nargs="+", default=["all"],
                        help="'all', or comma-separated frequency buckets (e.g. r,c): one choice each")
    parser.add_argument("--refit", type=int, default=0, metavar="STEPS",
                        help="then fit w and b again for this many steps (the trainer's reimprint_refit)")
    parser.add_argument("--cache", default="runs/reimprint")
    parser.add_argument("--table", default=None)
    args = parser.parse_args()
    plan = make_sweep_plan(args.config, [args.sweep])
    arms = plan.sweeps[0].arms
    unknown = sorted(set(args.arms) - set(arms))
    if unknown:
        parser.error(f"arms {unknown} are not arms of {args.sweep}: {sorted(arms)}")
    rows: dict[str, list[dict[str, float]]] = {}
    for arm in args.arms:
        finished = [key for key in arms[arm] if RunFolder(plan.run_dir(key)).is_finished()]
        rows[arm] = [{k: float(v) for k, v in load_run(plan.run_dir(k)).last.items() if k in METRICS and v is not None}
                     for k in finished]
        for choice in args.buckets:
            buckets = None if choice == "all" else tuple(choice.split(","))
            label = (f"{arm} + re-imprinted ({'all classes' if buckets is None else '+'.join(buckets)}"
                     f"{f', w and b refit {args.refit} steps' if args.refit else ''})")
            rows[label] = []
            for key in finished:
                numbers = measured(plan.run_dir(key), buckets, Path(args.cache) / key, args.refit)
                rows[label].append({k: numbers[k] for k in METRICS if k in numbers})
                print(f"{key} {choice}: " + ", ".join(f"{k} {numbers[k]:.3f}" for k in METRICS if k in numbers),
                      flush=True)
    text = (f"# Re-imprinting the runs of `{args.sweep}` after their last epoch\n\n"
            + sweep_table(summarize_arms(rows)))
    print(text)
    if args.table:
        write_table_file(args.table, text)


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    sys.exit(main())
