"""Few-shot, unknown-object and retrieval tables on the digits (issue 11), as JSON and markdown.

Trains (or reuses) one base run per head and base seed (``--base-seeds``) on the digits 0-6 under
``--base-runs-dir``, then runs :func:`dlde.analysis.fewshot.run_over_base_seeds` (novel digits 7-9 from k
boxes each, several draws per k and base seed), :func:`dlde.analysis.openset_protocol.open_set_over_seeds`
(every unknown score of :data:`dlde.analysis.openset.SCORES`) and
:func:`dlde.analysis.retrieval_protocol.retrieval_over_seeds` on the ten-digit validation set, and
prints three markdown tables (mean [95 % t-interval]: over the base seeds of each seed's mean over
its draws for few-shot, over the base seeds for unknown objects and retrieval; with one base seed,
few-shot intervals are over draws) followed by one JSON object (also written to ``--json``; the tables,
with the provenance line of :func:`dlde.tables.write_table_file`, to ``--table``, e.g.
``figures/few_shot_benchmark.md``). Times are wall-clock seconds on this machine. The base runs
are trained by :mod:`dlde.pipeline.base_runs`.

Examples::

    python benchmarks/few_shot.py              # full size: preset digits, 3 base seeds, k 1..30, 5 draws
    python benchmarks/few_shot.py --preset tiny --epochs 1 --base-seeds 0 1 --shots 1 2 --draws 2 --steps 2 \\
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
from dlde.analysis.openset import SCORES
from dlde.analysis.openset_protocol import open_set_over_seeds, pool_open_set
from dlde.analysis.retrieval_protocol import pool_retrieval, retrieval_over_seeds, retrieval_summary
from dlde.files import jsonable
from dlde.kernels import pin_script
from dlde.pipeline.base_runs import prepare
from dlde.protocols.tables import few_shot_table, open_set_table, retrieval_table
from dlde.tables import write_table_file


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits", help="TrainConfig preset of the base runs")
    parser.add_argument("--like-run", default=None,
                        help="copy the configuration of this run folder instead of a preset (e.g. runs/dlde)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the base runs (default: the preset's)")
    parser.add_argument("--base-seeds", "--base-seed", type=int, nargs="+", default=list(fewshot.BASE_SEEDS),
                        help="training seeds of each head's base runs (one base run per head and seed)")
    parser.add_argument("--base-runs-dir", default="runs/fewshot_benchmark",
                        help="one base run per head and base seed, reused when present (apart from the notebooks' "
                             "runs/fewshot_base, which may use another budget)")
    parser.add_argument("--data-dir", default="data", help="folder under which the digits datasets are generated")
    parser.add_argument("--heads", nargs="+", default=["dlde", "retinanet", "prototypes"], help="heads to compare")
    parser.add_argument("--methods", nargs="+", default=list(fewshot.METHODS), choices=list(fewshot.METHODS))
    parser.add_argument("--shots", type=int, nargs="+", default=list(fewshot.SHOTS), help="k values")
    parser.add_argument("--draws", type=int, default=fewshot.DRAWS, help="k-shot draws per k")
    parser.add_argument("--steps", type=int, default=fewshot.FineTune.steps, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=fewshot.FineTune.lr, help="fine-tuning learning rate")
    parser.add_argument("--max-images", type=int, default=None, help="validation images evaluated (default: all)")
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=list(SCORES), help="unknown scores")
    parser.add_argument("--gallery-images", type=int, default=None,
                        help="training images whose known-class boxes form the kNN gallery and the prototypes' "
                             "κ̂ (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and the fine-tuning batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    parser.add_argument("--table", default=None, help="also write the tables here (e.g. figures/few_shot_benchmark.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    like = None
    if args.like_run:
        like = json.loads((Path(args.like_run) / "config.json").read_text())["config"]
    started = time.perf_counter()
    base = prepare(like, args.base_runs_dir, args.heads, seeds=args.base_seeds, epochs=args.epochs, preset=args.preset,
                   data_dir=args.data_dir)
    base_seconds = time.perf_counter() - started
    settings = fewshot.FineTune(steps=args.steps, lr=args.lr)
    result = fewshot.run_over_base_seeds(base.models, base.base_names, base.train_set, base.val_set, shots=args.shots,
                                         draws=args.draws, methods=args.methods, settings=settings,
                                         max_eval_images=args.max_images, seed=args.seed, progress=True)
    summary = fewshot.summarize(result)
    open_set = pool_open_set(open_set_over_seeds(
        base.models, base.val_set, base.base_names, concentrations=base.concentrations, scores=args.scores,
        train_set=base.train_set, gallery_images=args.gallery_images, max_images=args.max_images))
    retrieval_by_seed = retrieval_over_seeds(base.models, base.val_set, max_images=args.max_images)
    retrieval = pool_retrieval(retrieval_by_seed)

    seeds = len(base.seeds)
    sections = [f"## Few-shot: novel digits 7-9 from k boxes (mean [95 % t-interval] over "
                f"{fewshot.interval_over(summary)})", few_shot_table(summary)]
    if seeds > 1:
        sections.append("Each base seed has its own k-shot draws; the interval is over the base seeds of each "
                        "seed's mean over its draws.")
    if result["skipped_shots"]:
        sections.append(f"skipped k {result['skipped_shots']}: too few boxes of a novel class in the training set")
    sections += [f"## Unknown objects: base models (0-6) on images with 7-9 (mean [95 % t-interval] over {seeds} "
                 "base seeds)", open_set_table(open_set)]
    if retrieval:
        sections += [f"## Retrieval: ground-truth boxes of the validation images, leave-one-out (mean [95 % "
                     f"t-interval] over {seeds} base seeds)", retrieval_table(retrieval)]
    print("\n" + "\n\n".join(sections))
    if args.table:
        write_table_file(args.table, "\n\n".join(["# benchmarks/few_shot.py"] + sections))
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "arguments": vars(args), "base_seconds": base_seconds, "base_seeds": base.seeds,
              "before": result["before"], "before_by_seed": result["before_by_seed"],
              "few_shot": summary, "rows": result["rows"], "skipped_shots": result["skipped_shots"],
              "open_set": open_set, "retrieval": retrieval,
              "retrieval_by_seed": {seed: {head: retrieval_summary(r) for head, r in per_head.items()}
                                    for seed, per_head in retrieval_by_seed.items()},
              "total_seconds": time.perf_counter() - started}
    text = json.dumps(jsonable(report), indent=1)
    print("\n## JSON\n")
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
