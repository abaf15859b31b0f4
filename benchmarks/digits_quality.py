"""Train DLDENet and the sigmoid RetinaNet baseline with the default digits preset and identical
schedules, then print validation AP, AP50 and wall time of each.

    .venv/bin/python benchmarks/digits_quality.py [--epochs N] [--means-update batch|manual] [--seeds 0 1 2]
                                                  [--out runs/bench] [--preset digits|tiny] [--data-root DIR]

The runs are the same as those of ``python -m dlde.train`` and of ``notebooks/01_train.ipynb`` with the same
preset and seed: progress display never changes a number (tests/test_reproducibility.py).

Target on a 2-core CPU: DLDENet val AP50 >= 0.90 within 15 minutes, and DLDENet AP >= baseline AP.
Run it on an otherwise idle machine: two processes sharing the cores slow each other by far more
than 2x (OpenMP threads spin while they wait).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dlde.kernels import pin_script
from dlde.train import PRESETS, TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--means-update", default="batch", choices=["batch", "manual"])
    parser.add_argument("--out", default="runs/bench", help="parent folder of the runs")
    parser.add_argument("--preset", default="digits", choices=sorted(PRESETS), help="training preset")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=["dlde", "retinanet"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="training seeds (weights and batch order); several give mean and spread")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    digits = preset.dataset_settings()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}: "
          f"{digits.digits_train_images} train / {digits.digits_val_images} val images of "
          f"{digits.digits_canvas_size} px, epochs {args.epochs or preset.epochs}, batch {preset.batch_size}",
          flush=True)
    results: dict[str, list[dict]] = {model: [] for model in args.models}
    for seed in args.seeds:
        for model in args.models:
            overrides = {"model": model, "run_dir": str(Path(args.out) / f"{model}_seed{seed}"), "progress": False,
                         "means_update": args.means_update, "seed": seed}
            if args.epochs:
                overrides["epochs"] = args.epochs
            if args.data_root:
                overrides["data_root"] = args.data_root
            if args.threads:
                overrides["threads"] = args.threads
            started = time.perf_counter()
            result = train(TrainConfig.from_dict(overrides, preset=args.preset))
            wall = time.perf_counter() - started
            last = result.metrics[-1]
            results[model].append({"seed": seed, "AP": last["AP"], "AP50": last["AP50"], "AP75": last["AP75"],
                                   "wall_s": wall})
            print(f"{model:10s} seed {seed}  val AP {last['AP']:.3f}  AP50 {last['AP50']:.3f}  "
                  f"AP75 {last['AP75']:.3f}  wall {wall / 60:.1f} min", flush=True)
    summary = {model: {key: statistics.fmean(run[key] for run in runs) for key in ("AP", "AP50", "AP75", "wall_s")}
               for model, runs in results.items()}
    for model, runs in results.items():
        spread = statistics.stdev(run["AP"] for run in runs) if len(runs) > 1 else float("nan")
        print(f"{model:10s} mean over {len(runs)} seed(s): AP {summary[model]['AP']:.3f} (sd {spread:.3f})  "
              f"AP50 {summary[model]['AP50']:.3f}  wall {summary[model]['wall_s'] / 60:.1f} min")
    if {"dlde", "retinanet"} <= set(results):
        d, r = summary["dlde"], summary["retinanet"]
        worst = min(results["dlde"], key=lambda run: run["AP50"])
        print(f"DLDENet AP50 >= 0.90 within 15 min: {worst['AP50'] >= 0.90 and d['wall_s'] <= 900} "
              f"(worst seed AP50 {worst['AP50']:.3f}, mean wall {d['wall_s'] / 60:.1f} min)")
        print(f"DLDENet AP >= baseline AP (seed means): {d['AP'] >= r['AP']} ({d['AP']:.3f} vs {r['AP']:.3f})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "digits_quality.json").write_text(json.dumps({"runs": results, "mean": summary}, indent=2))


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
