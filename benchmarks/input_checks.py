"""What the model's input checks cost on the batches of ``benchmarks/step_time.py`` (issue 19).

Times each check alone (``torch.utils.benchmark`` medians), then one training and one inference
step of the same DLDENet with the checks on, and prints each check's share of a step. Run on an
idle machine::

    .venv/bin/python benchmarks/input_checks.py [--preset digits coco-like] [--threads 2]

The checks: ``image_problem`` (one ``aminmax`` pass over the images: non-finite or beyond
``MAX_ABS_PIXEL``), ``snapshot_buffers`` (copies of BatchNorm statistics and tracked means taken
before a training forward, put back if the step is refused), ``all_finite`` of the box regressions,
``drop_degenerate_boxes`` of the annotations and the loss's ``anchors.image_size`` look-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_time  # noqa: E402

from dlde.model.inputs import all_finite, image_problem  # noqa: E402
from dlde.model.losses import drop_degenerate_boxes  # noqa: E402
from dlde.model.modes import snapshot_buffers  # noqa: E402


def median_ms(stmt: str, min_run_time: float, **names) -> float:
    """Median time of ``stmt`` in milliseconds (``torch.utils.benchmark``)."""
    timer = benchmark.Timer(stmt=stmt, globals=names)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def step_ms(model, images, annotations, repeats: int) -> tuple[float, float]:
    """Median training-step (forward, loss, backward, SGD step) and inference-step milliseconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        output = model(images, annotations)
        sum(model.loss(*output, annotations, assignment=output.assignment).values()).backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad():
            model(images)

    medians = []
    for mode, step in ((True, train_step), (False, infer_step)):
        model.train(mode)
        step()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1e3)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["digits", "coco-like"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per check timing")
    parser.add_argument("--repeats", type=int, default=5, help="steps per median")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}")
    for preset in args.preset:
        options = step_time.parse_args(["--preset", preset])
        torch.manual_seed(0)
        model = step_time.build_dlde(options).train()
        images, annotations, _ = step_time.random_batch(options, torch.Generator().manual_seed(0))
        output = model(images, annotations)
        anchors, regressions = output[0], output[1].detach()
        t = args.min_run_time
        costs = {
            "image_problem(images)": median_ms("f(x)", t, f=image_problem, x=images),
            "snapshot_buffers(model)": median_ms("f(m)", t, f=snapshot_buffers, m=model),
            "all_finite(regressions)": median_ms("f(r)", t, f=all_finite, r=regressions),
            "drop_degenerate_boxes": median_ms("f(a, s)", t, f=drop_degenerate_boxes, a=annotations,
                                               s=images.shape[-2:]),
            "anchors.image_size (loss)": median_ms("m.anchors.image_size(a)", t, m=model, a=anchors),
        }
        train_checks, infer_checks = sum(costs.values()), costs["image_problem(images)"]
        train_step, infer_step = step_ms(model, images, annotations, args.repeats)
        print(f"{preset}: images {tuple(images.shape)}")
        for name, value in costs.items():
            print(f"  {name:<28} {value:8.3f} ms")
        print(f"  training step {train_step:8.1f} ms, checks {train_checks:.3f} ms = "
              f"{100 * train_checks / train_step:.2f} %")
        print(f"  inference step {infer_step:7.1f} ms, checks {infer_checks:.3f} ms = "
              f"{100 * infer_checks / infer_step:.2f} %")


if __name__ == "__main__":
    main()
