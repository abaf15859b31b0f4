"""Data-parallel scaling on the CPU: 1 process vs N processes (gloo) at the same global batch.

    python benchmarks/ddp_scaling.py --preset digits --global-batch 16 --steps 10

Prints training samples/s for 1 and N processes (the cores are split between them: 1 process
uses all ``--threads`` threads, each of N processes ``threads // N``), the share of a step spent
in the tracked means' all-reduce (:func:`dlde.train.distributed.sum_over_processes`, timed inside the
step, so it includes waiting for the slower process) next to the cost of the same all-reduce
alone, and the bytes one process all-reduces per step for the means: ``C * (d + 1)`` float64
values, against the gradient all-reduce DDP does anyway (4 bytes per parameter).
Synthetic images and boxes: no dataset is read. ``--table figures/benchmarks/ddp_scaling.md`` also
writes the README's table there, with the provenance line of
:func:`dlde.tables.write_table_file`.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde.kernels import pin_script
from dlde.tables import markdown_table, write_table_file  # noqa: E402
from dlde.train import PRESETS, build_model, distributed  # noqa: E402


def _batch(config, batch: int, classes: int, generator: torch.Generator):
    size = config.min_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    corners = torch.rand(batch, 2, 2, generator=generator) * size * 0.5  # two objects per image
    extent = size * (0.2 + 0.3 * torch.rand(batch, 2, 2, generator=generator))
    labels = torch.randint(0, classes, (batch, 2, 1), generator=generator).float()
    annotations = torch.cat([corners, (corners + extent).clamp(max=size), labels], dim=-1)  # (B, 2, 5)
    return images, annotations


def _worker(rank: int, world: int, port: int, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    config = PRESETS[args.preset]
    classes = args.classes
    torch.manual_seed(0)
    model = build_model(config, classes)
    network, reducer = model, None
    spent = {"means": 0.0}

    def timed_sum(sums, counts):
        started = time.perf_counter()
        out = distributed.sum_over_processes(sums, counts)
        spent["means"] += time.perf_counter() - started
        return out

    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        if args.sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
        distributed.attach_means_reducer(model, timed_sum)
        network = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        reducer = distributed.mean_over_processes
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    local = args.global_batch // world
    batches = [_batch(config, local, classes, generator) for _ in range(2)]
    model.train()
    step_times, means_times = [], []
    for step in range(args.warmup + args.steps):
        images, annotations = batches[step % 2]
        spent["means"] = 0.0
        if world > 1:
            dist.barrier()
        started = time.perf_counter()
        output = network(images, annotations)
        losses = model.loss(*output, annotations, assignment=output.assignment, positives_reducer=reducer)
        optimizer.zero_grad(set_to_none=True)
        (losses["classification"] + losses["bbox_regression"]).backward()
        optimizer.step()
        if step >= args.warmup:
            step_times.append(time.perf_counter() - started)
            means_times.append(spent["means"])
    alone = []
    if world > 1:  # the means all-reduce by itself, processes already in step
        sums = torch.randn(classes, config.head_options["embedding_size"])
        counts = torch.ones(classes, dtype=torch.long)
        for _ in range(50):
            dist.barrier()
            started = time.perf_counter()
            distributed.sum_over_processes(sums, counts)
            alone.append(time.perf_counter() - started)
        dist.destroy_process_group()
    if rank == 0:
        results.put({"step_s": statistics.median(step_times), "means_s": statistics.median(means_times),
                     "alone_s": statistics.median(alone) if alone else 0.0,
                     "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(world: int, args) -> dict:
    context = mp.get_context("spawn")
    results = context.Queue()
    if world == 1:
        process = context.Process(target=_worker, args=(0, 1, 0, args, results))
        process.start()
        out = results.get()
        process.join()
        return out
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, world, port, args, results)) for rank in range(world)]
    for process in processes:
        process.start()
    out = results.get()
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"worker exited with {process.exitcode}")
    return out


def readme_table(args, one: dict, many: dict) -> str:
    """The README's table: per process count, the step, samples/s, the means all-reduce (in the step, alone)."""
    threads = lambda n: f"{n} thread{'' if n == 1 else 's'}"  # noqa: E731
    share = 100 * many["means_s"] / many["step_s"]
    rows = [[f"1 ({threads(args.threads)})", f"{one['step_s']:.3f} s", f"{args.global_batch / one['step_s']:.0f}",
             "–", "–"],
            [f"{args.processes} ({threads(max(1, args.threads // args.processes))} each, gloo)",
             f"{many['step_s']:.3f} s", f"{args.global_batch / many['step_s']:.0f}",
             f"{many['means_s'] * 1e3:.1f} ms ({share:.1f} %)", f"{many['alone_s'] * 1e3:.2f} ms"]]
    return markdown_table(["processes", "step", "samples/s", "means all-reduce in the step", "alone"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads shared by the processes")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements; the fastest is shown")
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--table", default=None, metavar="FILE",
                        help="also write the README's table to FILE (e.g. figures/benchmarks/ddp_scaling.md)")
    args = parser.parse_args()
    if args.global_batch % args.processes:
        parser.error(f"--global-batch {args.global_batch} must be divisible by --processes {args.processes}")
    config = PRESETS[args.preset]
    one, many = None, None
    for _ in range(args.repeats):  # alternate, keep the fastest: other load on the machine only slows a run
        trial = measure(1, args)
        one = trial if one is None or trial["step_s"] < one["step_s"] else one
        trial = measure(args.processes, args)
        many = trial if many is None or trial["step_s"] < many["step_s"] else many
    d = config.head_options["embedding_size"]
    print(f"preset {args.preset}: {args.classes} classes, d={d}, global batch {args.global_batch}, "
          f"{args.threads} threads in all, median of {args.steps} steps, best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| processes | step (s) | samples/s | means all-reduce in step | share of step |")
    print("|---|---|---|---|---|")
    print(f"| 1 | {one['step_s']:.3f} | {args.global_batch / one['step_s']:.1f} | - | - |")
    print(f"| {args.processes} | {many['step_s']:.3f} | {args.global_batch / many['step_s']:.1f} | "
          f"{many['means_s'] * 1e3:.2f} ms | {100 * many['means_s'] / many['step_s']:.2f} % |")
    print(f"means all-reduce alone ({args.processes} processes, gloo): {many['alone_s'] * 1e6:.0f} us")
    if args.table:
        write_table_file(args.table, readme_table(args, one, many))
    gradients = 4 * one["parameters"]
    for classes, dims in ((args.classes, d), (80, 128), (1000, 256)):
        size = distributed.all_reduce_bytes(classes, dims)
        print(f"bytes all-reduced per step for the means, C={classes}, d={dims}: {size} "
              f"({100 * size / gradients:.3f} % of this model's {gradients} gradient bytes)")


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
