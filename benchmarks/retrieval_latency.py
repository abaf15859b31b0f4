"""Query latency of :class:`dlde.analysis.retrieval.EmbeddingIndex` against gallery size, per backend.

The gallery holds N random unit vectors (Gaussian rows normalized, d = 32 by default); a batch
of Q random unit queries asks for its top k. Each (backend, N) pair is timed ``--repeats``
times after one warm-up search, and the median milliseconds per query batch is reported
(build time, normalizing the gallery and, for FAISS, filling its index, is reported apart).
Both backends are exact, so their results agree (tested in ``tests/test_retrieval.py``); the
script checks the indices of the first batch match at each size.

Examples::

    python benchmarks/retrieval_latency.py                        # 1e3 .. 1e6, both backends
    python benchmarks/retrieval_latency.py --sizes 1000 10000 --repeats 3
    python benchmarks/retrieval_latency.py --backends torch --threads 2 --json latency.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlde.analysis.retrieval import BACKENDS, EmbeddingIndex
from dlde.kernels import pin_script


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6],
                        help="gallery sizes N")
    parser.add_argument("--dim", type=int, default=32, help="embedding size d")
    parser.add_argument("--queries", type=int, default=100, help="queries per batch Q")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--repeats", type=int, default=10, help="timed searches per point")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for torch and FAISS (OpenMP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    _set_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    queries = torch.nn.functional.normalize(
        torch.randn(args.queries, args.dim, generator=generator), dim=1)
    rows = []
    for size in args.sizes:
        gallery = torch.nn.functional.normalize(
            torch.randn(size, args.dim, generator=generator), dim=1)
        first = {}
        for backend in args.backends:
            try:
                start = time.perf_counter()
                index = EmbeddingIndex(gallery, backend=backend)
                build_ms = (time.perf_counter() - start) * 1000.0
            except ImportError as error:
                print(f"skipping {backend}: {error}", file=sys.stderr)
                continue
            k = min(args.k, size)
            first[backend] = index.search(queries, k)[1]
            median = _median_ms(lambda index=index, k=k: index.search(queries, k), args.repeats)
            rows.append({"backend": backend, "gallery": size, "build_ms": build_ms,
                         "median_ms_per_batch": median,
                         "median_us_per_query": 1000.0 * median / args.queries})
        if len(first) == 2:
            same = bool(torch.equal(first["torch"], first["faiss"]))
            for row in rows[-2:]:
                row["same_top_k_as_other_backend"] = same

    result = {"dim": args.dim, "queries_per_batch": args.queries, "k": args.k,
              "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "rows": rows}
    print(f"\nd={args.dim}, Q={args.queries} queries per batch, k={args.k}, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| backend | gallery N | median ms / batch | µs / query | build ms | same top-k |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['gallery']:,} | {row['median_ms_per_batch']:.2f} | "
              f"{row['median_us_per_query']:.1f} | {row['build_ms']:.1f} | "
              f"{row.get('same_top_k_as_other_backend', '-')} |")
    text = json.dumps(result, indent=2)
    print("\n" + text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    pin_script()  # the portable numeric kernels (dlde.kernels); --native-kernels turns them off
    main()
