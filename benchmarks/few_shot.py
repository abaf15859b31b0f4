"""Few-shot, unknown-object and retrieval tables on the digits (issue 11), as JSON and markdown.

Trains (or reuses) one base run per head on the digits 0-6 under ``--base-runs-dir``, then runs
:func:`dlde.analysis.fewshot.run_protocol` (novel digits 7-9 from k boxes each, several draws per k),
:func:`dlde.analysis.openset_protocol.open_set_evaluation` and
:func:`dlde.analysis.retrieval_protocol.retrieval_evaluation` on the ten-digit validation set, and
prints three markdown tables followed by one JSON object (also written to ``--json``). Times are
wall-clock seconds on this machine. The base runs are trained by :mod:`dlde.pipeline.base_runs`.

Examples::

    python benchmarks/few_shot.py                                  # full size: preset digits, k 1..30, 5 draws
    python benchmarks/few_shot.py --preset tiny --epochs 1 --shots 1 2 --draws 2 --steps 2 \\
        --max-images 8 --base-runs-dir runs/tiny/fewshot_benchmark # a smoke test in about a minute
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde.analysis import fewshot
from dlde.analysis.openset_protocol import open_set_evaluation, open_set_summary
from dlde.analysis.retrieval_protocol import retrieval_evaluation, retrieval_summary
from dlde.analysis.tables import few_shot_table, open_set_table, retrieval_table
from dlde.pipeline.base_runs import prepare
from dlde.pipeline.notebook import jsonable


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits", help="TrainConfig preset of the base runs")
    parser.add_argument("--like-run", default=None,
                        help="copy the configuration of this run folder instead of a preset (e.g. runs/dlde)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the base runs (default: the preset's)")
    parser.add_argument("--base-seed", type=int, default=0, help="seed of the base runs")
    parser.add_argument("--base-runs-dir", default="runs/fewshot_benchmark",
                        help="one base run per head, reused when present (apart from the notebooks' "
                             "runs/fewshot_base, which may use another budget)")
    parser.add_argument("--data-dir", default="data", help="folder under which the digits datasets are generated")
    parser.add_argument("--heads", nargs="+", default=["dlde", "retinanet", "prototypes"], help="heads to compare")
    parser.add_argument("--methods", nargs="+", default=list(fewshot.METHODS), choices=list(fewshot.METHODS))
    parser.add_argument("--shots", type=int, nargs="+", default=list(fewshot.SHOTS), help="k values")
    parser.add_argument("--draws", type=int, default=fewshot.DRAWS, help="k-shot draws per k")
    parser.add_argument("--steps", type=int, default=fewshot.FineTune.steps, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=fewshot.FineTune.lr, help="fine-tuning learning rate")
    parser.add_argument("--max-images", type=int, default=None, help="validation images evaluated (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and the fine-tuning batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    like = None
    if args.like_run:
        like = json.loads((Path(args.like_run) / "config.json").read_text())["config"]
    started = time.perf_counter()
    models, base_names, train_set, val_set = prepare(
        like, args.base_runs_dir, args.heads, epochs=args.epochs, preset=args.preset, data_dir=args.data_dir,
        seed=args.base_seed)
    base_seconds = time.perf_counter() - started
    settings = fewshot.FineTune(steps=args.steps, lr=args.lr)
    result = fewshot.run_protocol(models, base_names, train_set, val_set, shots=args.shots, draws=args.draws,
                                  methods=args.methods, settings=settings, max_eval_images=args.max_images,
                                  seed=args.seed, progress=True)
    summary = fewshot.summarize(result)
    open_set = open_set_evaluation(models, val_set, base_names, max_images=args.max_images)
    retrieval = {head: retrieval_evaluation(model, val_set, max_images=args.max_images)
                 for head, model in models.items() if model.class_directions() is not None}

    print("\n## Few-shot: novel digits 7-9 from k boxes (mean [95 % interval] over draws)\n")
    print(few_shot_table(summary))
    if result["skipped_shots"]:
        print(f"\nskipped k {result['skipped_shots']}: too few boxes of a novel class in the training set")
    print("\n## Unknown objects: base models (0-6) on images with 7-9\n")
    print(open_set_table(open_set))
    if retrieval:
        print("\n## Retrieval: ground-truth boxes of the validation images, leave-one-out\n")
        print(retrieval_table(retrieval))
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "arguments": vars(args), "base_seconds": base_seconds, "before": result["before"],
              "few_shot": summary, "rows": result["rows"], "skipped_shots": result["skipped_shots"],
              "open_set": open_set_summary(open_set),
              "retrieval": {head: retrieval_summary(r) for head, r in retrieval.items()},
              "total_seconds": time.perf_counter() - started}
    text = json.dumps(jsonable(report), indent=1)
    print("\n## JSON\n")
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
