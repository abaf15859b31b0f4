"""The command line of the figure pipeline: train the runs of ``figures.yaml``, execute the
notebooks on them, run sweeps.

::

    python -m dlde.pipeline --config figures.yaml [--only NAME ...] [--tiny] [--threads N]
                            [--runs-dir DIR] [--figures-dir DIR] [--log-output]
    python -m dlde.pipeline --config figures.yaml --sweeps [NAME ...] [--force] [--fail-fast] [--tiny]
    python -m dlde.pipeline --config figures.yaml --sweeps [NAME ...] --tables-only
    python -m dlde.pipeline --config figures.yaml --sweeps [NAME ...] --status
    python -m dlde.pipeline --config figures.yaml --sweeps [NAME ...] --executor local|slurm [--slurm-* ...]
    python -m dlde.pipeline --config figures.yaml --notebook NAME [-p PARAMETER VALUE ...] [--tiny]

``figures.yaml`` holds ``runs`` (run name -> parameters of ``notebooks/01_train.ipynb``) and
``notebooks`` (a list of ``{notebook, run, sweeps, parameters}``), planned by :mod:`.plan`. Each run is
trained by executing ``01_train.ipynb`` into ``<runs_dir>/<run>/01_train.ipynb``; then every
listed notebook is executed with papermill into ``<runs_dir>/<run>/<notebook>`` (:mod:`.execute`).
A notebook writes its figures (PNG + PDF) into the figures folder and its numbers into
``<runs_dir>/<run>/<stem>/results.json``. Figures of the first run keep their plain names; those
of any other run are prefixed with the run's name (``sigmoid_train_curves``). At the end
``figures/index.md`` lists every figure with its notebook and parameters, and
``figures/metrics.md`` tabulates the final metrics of each run (:mod:`.reports`). The first
failing notebook stops the pipeline with exit status 1 and the path of the executed notebook
holding the traceback; ``index.md`` then lists that step as not current.

``sweeps`` (run with ``--sweeps``, separately from the figures) declares ablations over seeds:
see :mod:`.sweeps`; ``--executor local|slurm`` trains each run as a submitit job on this machine
or on a Slurm cluster (:mod:`.executors`, docs/cluster.md). A notebook entry may name sweeps it
reads (``sweeps: [NAME]``, then ``run`` is optional): their runs are trained (cached, as
``--sweeps`` does) just before it is executed.

``--notebook NAME`` executes one notebook on its own with its defaults and the ``-p`` values (its
executed copy goes to its ``RUN_DIR``); a notebook that reads sweeps reads those of ``--config``
under ``--runs-dir`` (``--tiny``: the tiny ones). It trains nothing and writes no index.md
(``make vocabulary`` draws notebook 07 on the full sweeps this way).

While a training notebook runs, one line per finished epoch reports its loss and the elapsed
and remaining time; a summary table of every step and its time ends the output (:mod:`.progress`).

``--tiny`` swaps in tiny parameters (preset ``tiny``, one epoch, a few images) and writes
everything under ``<runs_dir>/tiny/`` (figures in ``<runs_dir>/tiny/figures``), so it never
touches the real figures; the tests use it.

The helpers the notebooks themselves call live in :mod:`dlde.pipeline.notebook`.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from dlde.kernels import NATIVE_FLAG

from .execute import KERNEL_THREADS, NotebookFailed, kernel_threads, run_notebook, run_pipeline
from .executors import EXECUTORS, LOG_FOLDER, JobOptions, make_executor
from .plan import make_plan, notebook_values
from .progress import Summary, echo_line
from .sweeps import aggregate_sweeps, make_sweep_plan, print_status, run_sweeps, train_step_sweeps


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="figures.yaml", help="pipeline file (default: figures.yaml)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only the steps of this run or notebook (e.g. sigmoid, 03_embeddings, 03); repeatable")
    parser.add_argument("--sweeps", nargs="*", default=None, metavar="NAME",
                        help="run the sweeps of the config (all, or those named) instead of the figures")
    parser.add_argument("--notebook", default=None, metavar="NAME",
                        help="execute this notebook of notebooks/ alone, with its defaults and the -p values")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="with --notebook: a parameter value (a Python literal unless the parameter is a str)")
    parser.add_argument("--force", action="store_true",
                        help="with --sweeps: retrain runs that are already complete, and replace a run folder "
                             "holding another configuration (refused without it)")
    parser.add_argument("--fail-fast", action="store_true", help="with --sweeps: stop at the first failed run")
    parser.add_argument("--status", action="store_true",
                        help="with --sweeps: train nothing; print how many runs of each sweep are complete and "
                             "where the others stand (epoch reached, being trained, not started)")
    parser.add_argument("--tables-only", action="store_true",
                        help="with --sweeps: train nothing; write the tables and figures from the runs finished so far")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny parameters, outputs under <runs_dir>/tiny (about a minute; used by the tests)")
    parser.add_argument("--runs-dir", default=None, help="overrides runs_dir of the config file")
    parser.add_argument("--figures-dir", default=None, help="overrides figures_dir of the config file")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    parser.add_argument(NATIVE_FLAG, action="store_true",
                        help="let each numeric library take this CPU's fastest code path instead of the portable "
                             "AVX2 setting (dlde.kernels), in this process and every kernel and worker it starts; "
                             "the numbers then depend on the CPU")
    parser.add_argument("--threads", type=int, default=KERNEL_THREADS,
                        help=f"OpenMP threads per notebook kernel (default {KERNEL_THREADS}: what a notebook computes "
                             "depends on it in the last digits, which move a UMAP layout and a PDF's coordinates; "
                             "training uses its run's own threads)")
    _executor_flags(parser)
    return parser


def _executor_flags(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and the ``--slurm-*`` flags, each overriding its key of figures.yaml's ``slurm:``."""
    parser.add_argument("--executor", choices=EXECUTORS, default="inline",
                        help="with --sweeps: train each run in this process's loop (inline, the default), or as a "
                             "submitit job on this machine (local) or on Slurm (slurm); docs/cluster.md")
    parser.add_argument("--slurm-partition", default=None, metavar="NAME", help="the jobs' Slurm partition")
    parser.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES",
                        help=f"minutes a job may run (also the local jobs' timeout; default {JobOptions.time})")
    parser.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="N",
                        help=f"cores of a job (default {JobOptions.cpus_per_task})")
    parser.add_argument("--slurm-mem", default=None, metavar="SIZE",
                        help="memory of a job, as sbatch --mem takes it (e.g. 8G)")
    parser.add_argument("--slurm-log-folder", default=None, metavar="DIR",
                        help=f"submitit's pickles and logs (%%j in it: the job id; default <runs_dir>/{LOG_FOLDER})")


def _slurm_flags(args: argparse.Namespace) -> dict[str, object]:
    """The ``--slurm-*`` flags as options of :class:`~dlde.pipeline.executors.JobOptions` (None: not given)."""
    return {"partition": args.slurm_partition, "time": args.slurm_time, "cpus_per_task": args.slurm_cpus_per_task,
            "mem": args.slurm_mem, "log_folder": args.slurm_log_folder}


def _sweeps(args: argparse.Namespace, summary: Summary) -> int:
    """``--sweeps``: run them; the exit status (1 when a run failed)."""
    if args.only:
        raise ValueError("--only selects figure steps; with --sweeps name the sweeps instead")
    plan = make_sweep_plan(args.config, args.sweeps, tiny=args.tiny, runs_dir=args.runs_dir,
                           figures_dir=args.figures_dir)
    executor = make_executor(args.executor, plan.figures, _slurm_flags(args))
    if executor is None and any(value is not None for value in _slurm_flags(args).values()):
        raise ValueError("the --slurm-* flags apply to --executor local or slurm")
    if args.status:
        if args.tables_only or args.force or args.fail_fast or executor is not None:
            raise ValueError("--status trains nothing: not with --tables-only, --force, --fail-fast or --executor")
        print_status(plan, echo_line)
        return 0
    if args.tables_only:
        if args.force or args.fail_fast or executor is not None:
            raise ValueError("--tables-only trains nothing: not with --force, --fail-fast or --executor")
        aggregate_sweeps(plan, echo_line)
        print(f"tables and figures in {plan.ablations_dir} (finished runs only)", flush=True)
        return 0
    failures = run_sweeps(plan, force=args.force, fail_fast=args.fail_fast, log_output=args.log_output,
                          threads=args.threads, summary=summary, executor=executor)
    for failure in failures:
        print(f"FAILED {failure.key}: {failure.reason}\n  the traceback is in {failure.executed}",
              file=sys.stderr, flush=True)
    print(f"tables and figures in {plan.ablations_dir}", flush=True)
    return 1 if failures else 0


def _notebook(args: argparse.Namespace) -> int:
    """``--notebook``: execute it alone; the exit status."""
    if args.only or args.sweeps is not None or args.force or args.fail_fast or args.executor != "inline":
        raise ValueError("--notebook executes one notebook: not with --only, --sweeps, --force, --fail-fast "
                         "or --executor")
    values = notebook_values(args.notebook, args.parameter)
    plan = make_plan(args.config, tiny=args.tiny, runs_dir=args.runs_dir, figures_dir=args.figures_dir)
    with kernel_threads(args.threads):
        executed = run_notebook(plan, args.notebook, values, log_output=args.log_output)
    print(f"{args.notebook} done: executed copy {plan.display(executed)}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 bad input)."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    summary = Summary()

    def finish(status: int) -> int:
        print(summary.table(), flush=True)
        print(f"total wall time {time.perf_counter() - started:.1f} s", flush=True)
        return status

    try:
        if args.notebook is not None:
            return _notebook(args)
        if args.parameter:
            raise ValueError("-p sets a parameter of --notebook")
        if args.sweeps is not None:
            return finish(_sweeps(args, summary))
        if args.force or args.fail_fast or args.executor != "inline" or any(_slurm_flags(args).values()):
            raise ValueError("--force, --fail-fast, --executor and --slurm-* apply to --sweeps only")
        figure_plan = make_plan(args.config, tiny=args.tiny, only=args.only, runs_dir=args.runs_dir,
                                figures_dir=args.figures_dir)
        run_pipeline(figure_plan, log_output=args.log_output, threads=args.threads, summary=summary,
                     train_sweeps=train_step_sweeps)
    except NotebookFailed as failure:
        print(f"FAILED {failure}\n  the traceback is in {failure.executed}", file=sys.stderr, flush=True)
        return finish(1)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"figures in {figure_plan.figures_dir} (index.md, metrics.md)")
    return finish(0)
