"""Equal wall-clock time for the heads of a preset: each head's training step and the pass over the
training set that re-imprinting adds, timed with the trainer itself, and the epochs each head gets
in the time the reference head (``--reference``, the sigmoid head) trains the preset's schedule.

Each head trains the preset as a sweep run does (its sampler, loss and levers, ``--threads`` intra-op
threads), in a temporary folder, for ``--short`` and for ``--long`` steps of one epoch; the step
time is the difference of the two epochs' training times over the difference of their steps (what
building the model and the loader costs drops out), the median over ``--repeats`` rounds that
alternate the heads. Re-imprinting is timed apart (``reimprint_s`` of one more run of each head
that tracks means). The validation set is cut to ``--val-images`` canvases: the trainer evaluates
at its last epoch, which is no part of the measurement. Run it on an idle machine: another
process on the cores changes the ratio.

Example (about 5 min at glyphs-1000 on one core)::

    python benchmarks/equal_time.py --preset glyphs-1000 --heads dlde retinanet prototypes \\
        --table figures/benchmarks/equal_time.md

``--table`` writes the table with the provenance line of :func:`dlde.tables.write_table_file`.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from dlde.kernels import pin_script
from dlde.model.registry import HEADS
from dlde.tables import markdown_table, write_table_file
from dlde.train import PRESETS, TrainConfig, train
from dlde.train.batches import EpochBatches
from dlde.train.builders import build_datasets


def _cut_validation(preset: str, images: int) -> dict:
    """The dataset option that cuts the preset's validation set to ``images`` canvases."""
    return {f"{PRESETS[preset].dataset}_val_images": images}


def _epoch_row(preset: str, head: str, steps: int, folder: Path, data_root: Path, args: argparse.Namespace,
               **changes) -> dict:
    """The metrics row of one epoch of ``steps`` steps of ``head`` under ``preset``."""
    config = TrainConfig.from_dict({"model": head, "epochs": 1, "max_train_batches": steps, "threads": args.threads,
                                    "run_dir": str(folder), "data_root": str(data_root), "progress": False,
                                    **_cut_validation(preset, args.val_images), **changes}, preset=preset)
    train(config)
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def measure(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Per head: the median step time, the re-imprinting pass (None for heads without tracked means),
    the preset's epochs and the steps they hold (its sampler's)."""
    data_root = Path(args.data_root) if args.data_root else scratch / "data"
    times: dict[str, list[float]] = {head: [] for head in args.heads}
    for round_ in range(args.repeats):
        for head in args.heads:
            seconds = [_epoch_row(args.preset, head, steps, scratch / f"{head}-{round_}-{steps}", data_root, args,
                                  reimprint="off")["train_time_s"] for steps in (args.short, args.long)]
            times[head].append((seconds[1] - seconds[0]) / (args.long - args.short))
            print(f"round {round_ + 1}/{args.repeats} {head}: {times[head][-1]:.3f} s per step", flush=True)
    rows = []
    for head in args.heads:
        preset = PRESETS[args.preset].updated({"model": head})
        reimprint_s = None
        if preset.reimprint != "off" and HEADS[head].tracks_means:
            reimprint_s = _epoch_row(args.preset, head, args.short, scratch / f"{head}-reimprint", data_root,
                                     args)["reimprint_s"]
        train_set, _ = build_datasets(TrainConfig.from_dict(
            {"model": head, "data_root": str(data_root), **_cut_validation(args.preset, args.val_images)},
            preset=args.preset))
        steps = EpochBatches.of(train_set, preset).total_steps(preset.epochs)
        rows.append({"head": head, "step_s": statistics.median(times[head]), "reimprint_s": reimprint_s,
                     "steps": steps, "epochs": preset.epochs})
    return rows


def budget_table(rows: list[dict], reference: str) -> str:
    """Per head: its step time against the reference head's, and the epochs it trains in the time
    the reference head trains its schedule (re-imprinting charged to the heads that do it)."""
    ref = next(row for row in rows if row["head"] == reference)
    budget = ref["steps"] * ref["step_s"]
    lines = []
    for row in rows:
        steps = (budget - (row["reimprint_s"] or 0.0)) / row["step_s"]
        per_epoch = row["steps"] / row["epochs"]
        lines.append([row["head"], f"{row['step_s']:.3f}", f"{row['step_s'] / ref['step_s']:.2f}",
                      "–" if row["reimprint_s"] is None else f"{row['reimprint_s']:.1f}",
                      f"{row['steps']} in {row['epochs']}", f"{steps:.0f}", f"{steps / per_epoch:.2f}"])
    header = ["head", "step (s)", f"step / {reference}'s", "re-imprinting (s)", "steps in the preset's epochs",
              f"steps in {reference}'s time", "epochs in that time"]
    return markdown_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="glyphs-1000")
    parser.add_argument("--heads", nargs="+", default=["dlde", "retinanet"])
    parser.add_argument("--reference", default="retinanet", help="the head whose schedule sets the time budget")
    parser.add_argument("--short", type=int, default=5, help="steps of the short epoch")
    parser.add_argument("--long", type=int, default=45, help="steps of the long epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--data-root", default=None,
                        help="the dataset's folder (default: generated in a temporary one)")
    parser.add_argument("--table", default=None)
    args = parser.parse_args(argv)
    if args.reference not in args.heads:
        parser.error(f"--reference {args.reference} must be one of --heads {args.heads}")
    if not 0 < args.short < args.long:
        parser.error(f"need 0 < --short < --long, got {args.short} and {args.long}")
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure(args, Path(scratch))
    text = (f"# Equal time at `{args.preset}`: {args.threads} thread(s), median of {args.repeats} rounds\n\n"
            + budget_table(rows, args.reference))
    print(text)
    if args.table:
        write_table_file(args.table, text)
    return 0 if all(math.isfinite(row["step_s"]) and row["step_s"] > 0 for row in rows) else 1


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    sys.exit(main())
