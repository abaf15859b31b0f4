"""``python -m dlde.protocols.fewshot``: the few-shot, unknown-object and retrieval tables on the digits
(issue 11), as JSON and markdown.

Trains (or reuses) one base run per head and base seed (``--base-seeds``) on the digits 0-6 under
``--base-runs-dir`` (:mod:`dlde.protocols.base_runs`), then runs
:func:`dlde.protocols.fewshot.run_over_base_seeds` (novel digits 7-9 from k boxes each, several draws
per k and base seed), :func:`dlde.protocols.openset.open_set_over_seeds` (every unknown score of
:data:`dlde.analysis.openset.SCORES`) and :func:`dlde.protocols.retrieval.retrieval_over_seeds` on the
ten-digit validation set, and prints three markdown tables (mean [95 % t-interval]: over the base
seeds of each seed's mean over its draws for few-shot, over the base seeds for unknown objects and
retrieval; with one base seed, few-shot intervals are over draws) followed by one JSON object (also
written to ``--json``; the tables, with the provenance line of :func:`dlde.tables.write_table_file`,
to ``--table``, e.g. ``figures/few_shot_benchmark.md``). Times are wall-clock seconds on this machine.
``benchmarks/few_shot.py`` runs the same command.

Examples::

    python -m dlde.protocols.fewshot              # full size: preset digits, 3 base seeds, k 1..30, 5 draws
    python -m dlde.protocols.fewshot --preset tiny --epochs 1 --base-seeds 0 1 --shots 1 2 --draws 2 --steps 2 \\
        --max-images 8 --base-runs-dir runs/tiny/fewshot_benchmark # a smoke test in about a minute
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dlde.analysis.openset import SCORES
from dlde.files import jsonable
from dlde.tables import write_table_file

from ..base_runs import prepare
from ..openset import PooledOpenSet, open_set_over_seeds, pool_open_set
from ..retrieval import PooledRetrieval, pool_retrieval, retrieval_over_seeds
from ..tables import few_shot_table, open_set_table, retrieval_table
from .methods import BASE_SEEDS, DRAWS, METHODS, SHOTS, FineTune
from .protocol import run_over_base_seeds
from .results import FewShotSummary, interval_over, summarize

#: The first line of the table file (kept from the benchmark script this command replaced, so the file
#: it writes stays the same).
TABLE_TITLE = "# benchmarks/few_shot.py"


def parser() -> argparse.ArgumentParser:
    """The command line's flags (those of the benchmark script it replaced)."""
    parser = argparse.ArgumentParser(prog="python -m dlde.protocols.fewshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits", help="TrainConfig preset of the base runs")
    parser.add_argument("--like-run", default=None,
                        help="copy the configuration of this run folder instead of a preset (e.g. runs/dlde)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the base runs (default: the preset's)")
    parser.add_argument("--base-seeds", "--base-seed", type=int, nargs="+", default=list(BASE_SEEDS),
                        help="training seeds of each head's base runs (one base run per head and seed)")
    parser.add_argument("--base-runs-dir", default="runs/fewshot_benchmark",
                        help="one base run per head and base seed, reused when present (apart from the notebooks' "
                             "runs/fewshot_base, which may use another budget)")
    parser.add_argument("--data-dir", default="data", help="folder under which the digits datasets are generated")
    parser.add_argument("--heads", nargs="+", default=["dlde", "retinanet", "prototypes"], help="heads to compare")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--shots", type=int, nargs="+", default=list(SHOTS), help="k values")
    parser.add_argument("--draws", type=int, default=DRAWS, help="k-shot draws per k")
    parser.add_argument("--steps", type=int, default=FineTune.steps, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=FineTune.lr, help="fine-tuning learning rate")
    parser.add_argument("--max-images", type=int, default=None, help="validation images evaluated (default: all)")
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=list(SCORES), help="unknown scores")
    parser.add_argument("--gallery-images", type=int, default=None,
                        help="training images whose known-class boxes form the kNN gallery and the prototypes' "
                             "κ̂ (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and the fine-tuning batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    parser.add_argument("--table", default=None, help="also write the tables here (e.g. figures/few_shot_benchmark.md)")
    return parser


def sections(summary: Sequence[FewShotSummary], skipped_shots: Sequence[int], open_set: PooledOpenSet,
             retrieval: Mapping[str, PooledRetrieval], seeds: int) -> list[str]:
    """The markdown of the three protocols: a heading and a table each, with the notes between."""
    parts = [f"## Few-shot: novel digits 7-9 from k boxes (mean [95 % t-interval] over "
             f"{interval_over(summary)})", few_shot_table(summary)]
    if seeds > 1:
        parts.append("Each base seed has its own k-shot draws; the interval is over the base seeds of each "
                     "seed's mean over its draws.")
    if skipped_shots:
        parts.append(f"skipped k {list(skipped_shots)}: too few boxes of a novel class in the training set")
    parts += [f"## Unknown objects: base models (0-6) on images with 7-9 (mean [95 % t-interval] over {seeds} "
              "base seeds)", open_set_table(open_set)]
    if retrieval:
        parts += [f"## Retrieval: ground-truth boxes of the validation images, leave-one-out (mean [95 % "
                  f"t-interval] over {seeds} base seeds)", retrieval_table(retrieval)]
    return parts


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the three protocols on the base models as the flags ask; print and return the report."""
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    like = json.loads((Path(args.like_run) / "config.json").read_text())["config"] if args.like_run else None
    started = time.perf_counter()
    base = prepare(like, args.base_runs_dir, args.heads, seeds=args.base_seeds, epochs=args.epochs, preset=args.preset,
                   data_dir=args.data_dir)
    base_seconds = time.perf_counter() - started
    settings = FineTune(steps=args.steps, lr=args.lr)
    result = run_over_base_seeds(base.models, base.base_names, base.train_set, base.val_set, shots=args.shots,
                                 draws=args.draws, methods=args.methods, settings=settings,
                                 max_eval_images=args.max_images, seed=args.seed, progress=True)
    summary = summarize(result)
    open_set = pool_open_set(open_set_over_seeds(
        base.models, base.val_set, base.base_names, concentrations=base.concentrations, scores=args.scores,
        train_set=base.train_set, gallery_images=args.gallery_images, max_images=args.max_images))
    retrieval_by_seed = retrieval_over_seeds(base.models, base.val_set, max_images=args.max_images)
    retrieval = pool_retrieval(retrieval_by_seed)
    parts = sections(summary, result.skipped_shots, open_set, retrieval, len(base.seeds))
    print("\n" + "\n\n".join(parts))
    if args.table:
        write_table_file(args.table, "\n\n".join([TABLE_TITLE] + parts))
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "arguments": vars(args), "base_seconds": base_seconds, "base_seeds": base.seeds,
              "before": result.before, "before_by_seed": result.before_by_seed,
              "few_shot": summary, "rows": result.rows, "skipped_shots": result.skipped_shots,
              "open_set": open_set, "retrieval": retrieval, "retrieval_by_seed": retrieval_by_seed,
              "total_seconds": time.perf_counter() - started}
    text = json.dumps(jsonable(report), indent=1)
    print("\n## JSON\n")
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report
