"""Executing the figure pipeline: the kernel check, papermill, torchrun for data-parallel runs,
and :func:`run_pipeline`, which executes a :class:`~dlde.pipeline.plan.Plan` step by step.

Each notebook is executed with papermill into ``<runs_dir>/<run>/<notebook>``; it writes its
figures into the figures folder and its numbers into ``<runs_dir>/<run>/<stem>/results.json``.
The first failing notebook stops the pipeline (:class:`NotebookFailed`, naming the executed
notebook that holds the traceback); ``index.md`` and ``metrics.md`` are written in any case, and
index.md lists the figures that step made in earlier pipeline runs as stale (:mod:`.reports`).
A notebook that reads sweeps has their runs trained first (a :data:`SweepTrainer`).
:func:`run_notebook` executes one notebook on its own, outside the plan's steps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from dlde.files import atomic_write_text, jsonable
from dlde.train import RunFolder, TrainConfig
from dlde.train.cli import arguments

from .lock import NOTEBOOKS_DIR, TRAIN_NOTEBOOK, declared, notebook_defaults
from .notebook import RESULTS_FILE, read_results
from .plan import STEP_FILE, SWEEP_PARAMETERS, Plan, Step
from .progress import EpochProgress, Summary
from .reports import clear_stale, mark_failed, step_figures, write_index, write_metrics_table
from .run_config import overrides_of, train_config

KERNEL_NAME = "python3"  # the native ipykernel spec: resolves to this interpreter (see kernel_argv)
#: How every notebook is executed (``papermill.execute_notebook`` keywords). The kernel logs
#: errors only: its one start-up warning (unencrypted TCP on 127.0.0.1) would print once per
#: notebook; tracebacks still reach the executed notebook. The kernel is stopped at once when
#: the notebook is done, which saves the ~3 s a graceful shutdown takes after importing torch.
PAPERMILL_OPTIONS = {"kernel_name": KERNEL_NAME, "progress_bar": False,
                     "extra_arguments": ["--IPKernelApp.log_level=ERROR"], "shutdown_kernel": "immediate"}
#: ``train_sweeps(plan, step, log_output)``: trains (cached) the runs of the sweeps ``step`` reads
#: before it is executed, raising :class:`NotebookFailed` when one is not complete afterwards:
#: :func:`dlde.pipeline.sweeps.train_step_sweeps`, passed in because :mod:`.sweeps` builds on this module.
SweepTrainer = Callable[[Plan, Step, bool], None]


class NotebookFailed(RuntimeError):
    """A notebook raised; ``executed`` holds the executed copy with the traceback."""

    def __init__(self, step: Step, executed: Path, reason: str):
        super().__init__(f"{step.notebook} (run {step.run!r}) failed: {reason}")
        self.step, self.executed, self.reason = step, executed, reason


# ------------------------------------------------------------------------------ the kernels
def kernel_argv(kernel_name: str = KERNEL_NAME) -> list[str]:
    """The command papermill will start for ``kernel_name``, after jupyter_client's rewriting.

    jupyter_client replaces a bare ``python``/``python3`` by ``sys.executable``, and ipykernel
    installs its ``python3`` spec with a bare ``python`` into the environment (found before
    ``~/.local``), so the notebooks run in the interpreter running the pipeline (the venv).

    Raises:
        RuntimeError: when the spec is missing or starts another interpreter (e.g. a
            ``python3`` spec under ``JUPYTER_PATH`` pointing elsewhere), so dlde would be
            imported from the wrong environment.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = list(KernelSpecManager().get_kernel_spec(kernel_name).argv)
    except NoSuchKernel:
        raise RuntimeError(f"no Jupyter kernel {kernel_name!r}: install ipykernel into {sys.prefix}") from None
    bare = {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}
    if argv and argv[0] in bare:
        argv[0] = sys.executable
    if not argv or os.path.abspath(argv[0]) != os.path.abspath(sys.executable):
        raise RuntimeError(f"Jupyter kernel {kernel_name!r} starts {argv[:1]}, not this interpreter "
                           f"{sys.executable}; run the pipeline with the interpreter whose kernel it is, "
                           "or remove the conflicting kernelspec (jupyter kernelspec list)")
    return argv


#: OpenMP threads of every notebook kernel unless the caller says otherwise (``--threads``, the
#: ``threads`` of :func:`run_pipeline` and :func:`~dlde.pipeline.sweeps.run_sweeps`): pinned, like the
#: runs' ``threads``, so that the same command gives the same figure files on machines with other core
#: counts (torch's own choice, the number of cores, changes the analysis in its last digits).
KERNEL_THREADS = 1


@contextmanager
def kernel_threads(threads: int | None) -> Iterator[None]:
    """Set ``OMP_NUM_THREADS`` (inherited by the kernels started inside) when ``threads`` is
    given, and restore it afterwards."""
    values = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def papermill_execute(notebook: str, executed: Path, parameters: Mapping[str, Any], cwd: Path,
                      log_output: bool) -> None:
    """Execute ``notebooks/<notebook>`` into ``executed``; papermill's exceptions propagate."""
    import papermill

    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(executed), parameters=dict(parameters),
                               cwd=str(cwd), log_output=log_output, **PAPERMILL_OPTIONS)


def failure_reason(error: Exception) -> str:
    """One line saying why a notebook failed: the notebook's exception, or why the kernel did."""
    import papermill

    if isinstance(error, papermill.PapermillExecutionError):
        return f"{error.ename}: {error.evalue}"
    return f"{type(error).__name__}: {error}"  # the kernel died (e.g. out of memory) or did not start


# --------------------------------------------------------------------------------- torchrun
def torchrun_command(config: TrainConfig, preset: str, nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m dlde.train ...`` for a
    :class:`~dlde.train.TrainConfig`: ``--preset`` plus a flag for every field and head option that
    differs from the preset (:func:`dlde.train.cli.arguments`).

    Raises:
        ValueError: a value no flag can express (e.g. None where the preset has a value).
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "dlde.train", *arguments(config, preset)]


def _torchrun(config: TrainConfig, preset: str, nproc: int, executed: Path, cwd: Path, step: Step) -> None:
    """Train ``config`` with ``nproc`` processes; its output goes next to the executed notebook."""
    log = executed.with_name(f"{executed.stem}.torchrun.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as file:
        code = subprocess.run(torchrun_command(config, preset, nproc), cwd=cwd, stdout=file,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise NotebookFailed(step, log, f"torchrun with {nproc} processes exited with {code}: {tail[0][:300]}")


# ------------------------------------------------------------------------------ one step
def _prepare_training(plan: Plan, step: Step, parameters: dict[str, Any],
                      echo: Callable[[str], None] | None) -> EpochProgress | None:
    """Point a training step at its run folder; return the progress watch for its notebook.

    The pipeline's run folder: an identical run is reused (resumed if unfinished; a finished
    one only reloads), a run of another config is replaced, as figures.yaml now asks. A run
    with ``nproc > 1`` is trained here under torchrun; its notebook then only reloads it.
    ``parameters`` are updated in place.
    """
    folder = RunFolder(plan.run_dir(step.run))
    try:
        config = train_config(parameters)
    except (ValueError, TypeError):  # a bad config: the notebook itself fails with the traceback
        return None
    state = folder.state(config)
    if state in ("complete", "partial"):
        parameters["RESUME"] = True
    elif state == "changed":
        parameters["OVERRIDES_JSON"] = json.dumps({**overrides_of(parameters), "overwrite": True, "resume": False})
        parameters["RESUME"] = False
    resumed = parameters.get("RESUME", notebook_defaults()["RESUME"])
    done_before = folder.finished_epochs() if resumed else 0
    watch = EpochProgress(folder.path, config.epochs, step.run, done_before=done_before, echo=echo)
    if step.nproc == 1 or state == "complete":
        return watch
    # Data-parallel: torchrun trains the run, then the notebook only reloads the finished run.
    overrides = overrides_of(parameters)
    launched = train_config(parameters | {"RESUME": bool(resumed)})
    with watch:
        _torchrun(launched, parameters.get("PRESET", notebook_defaults()["PRESET"]), step.nproc,
                  plan.executed(step), plan.root, step)
    parameters["RESUME"] = True
    parameters["OVERRIDES_JSON"] = json.dumps({k: v for k, v in overrides.items() if k not in ("overwrite", "resume")})
    return None


def execute(plan: Plan, step: Step, *, log_output: bool = False, echo: Callable[[str], None] | None = None,
            train_sweeps: SweepTrainer | None = None) -> dict[str, Any]:
    """Execute one notebook with papermill and return its results.json.

    A training notebook reports its epochs as they finish (:class:`EpochProgress`); the runs of
    the sweeps a notebook reads are trained first (``train_sweeps``, required then). When the
    step fails (or is interrupted), the figures it made in earlier pipeline runs are marked
    stale (:func:`~dlde.pipeline.reports.mark_failed`); when it succeeds, its figures are current.

    Raises:
        NotebookFailed: the notebook raised, or wrote no results.json, or a run of its sweeps failed.
    """
    earlier = step_figures(plan, step)  # read before _execute_step removes results.json
    try:
        results = _execute_step(plan, step, log_output, echo, train_sweeps)
    except BaseException as error:
        mark_failed(plan, step, error.reason if isinstance(error, NotebookFailed) else repr(error), earlier)
        raise
    clear_stale(plan, step)
    return results


def _execute_step(plan: Plan, step: Step, log_output: bool, echo: Callable[[str], None] | None,
                  train_sweeps: SweepTrainer | None) -> dict[str, Any]:
    """:func:`execute` without the stale bookkeeping."""
    executed = plan.executed(step)
    out_dir = plan.out_dir(step)
    stale = out_dir / RESULTS_FILE
    for old in (stale, out_dir / STEP_FILE):  # a failure must not leave the previous numbers behind
        old.unlink(missing_ok=True)
    if step.sweeps:
        train_sweeps(plan, step, log_output)
    parameters = plan.parameters(step)
    watch = _prepare_training(plan, step, parameters, echo) if step.notebook == TRAIN_NOTEBOOK else None
    try:
        with watch if watch is not None else nullcontext():
            papermill_execute(step.notebook, executed, parameters, plan.root, log_output)
    except Exception as error:
        raise NotebookFailed(step, executed, failure_reason(error)) from None
    if not stale.exists():
        raise NotebookFailed(step, executed, f"it wrote no {stale}")
    record = {"run": step.run, "notebook": step.notebook, "parameters": jsonable(step.parameters)}
    atomic_write_text(out_dir / STEP_FILE, json.dumps(record, indent=1) + "\n")
    return read_results(out_dir)


# ------------------------------------------------------------------------------ the pipeline
def run_pipeline(plan: Plan, *, log_output: bool = False, threads: int | None = KERNEL_THREADS,
                 summary: Summary | None = None, train_sweeps: SweepTrainer | None = None
                 ) -> list[tuple[Step, dict[str, Any]]]:
    """Execute the plan's steps in order; then (also after a failure) write index.md and metrics.md.

    Args:
        plan: from :func:`~dlde.pipeline.plan.make_plan`.
        log_output: stream the notebooks' outputs to the terminal.
        threads: ``OMP_NUM_THREADS`` of the kernels (None: inherited, else torch's default). On a shared
            machine one thread per kernel avoids oversubscribed cores, which can make
            training many times slower.
        summary: collects each step's outcome and time (for the final table).
        train_sweeps: trains the runs of the sweeps a step reads (needed when a step has ``sweeps``).

    Returns:
        ``(step, results)`` of each executed step.

    Raises:
        NotebookFailed: at the first failing notebook.
        ValueError: a step reads sweeps and no ``train_sweeps`` is given.
    """
    kernel_argv()  # fail before any work if the kernel is not this interpreter
    reading = [step.notebook for step in plan.steps if step.sweeps]
    if reading and train_sweeps is None:
        raise ValueError(f"{reading} read sweeps: run_pipeline needs train_sweeps to train them")
    summary = summary if summary is not None else Summary()
    done: list[tuple[Step, dict[str, Any]]] = []
    try:
        for index, step in enumerate(plan.steps, 1):
            label = f"[{index}/{len(plan.steps)}] {step.run}: {step.notebook}"
            print(f"{label} ...", flush=True)
            started = time.perf_counter()
            try:
                with kernel_threads(threads):
                    results = execute(plan, step, log_output=log_output, train_sweeps=train_sweeps)
            except NotebookFailed:
                summary.add(f"{step.run}: {step.notebook}", "FAILED", time.perf_counter() - started)
                raise
            seconds = time.perf_counter() - started
            summary.add(f"{step.run}: {step.notebook}", "done", seconds)
            done.append((step, results))
            print(f"{label} done in {seconds:.1f} s ({len(results.get('figures', []))} figures)", flush=True)
    finally:
        write_index(plan)
        write_metrics_table(plan)
    return done


# ------------------------------------------------------------------------- one notebook alone
def run_notebook(plan: Plan, notebook: str, values: Mapping[str, Any], *, log_output: bool = False) -> Path:
    """Execute one notebook on its own, not as a step of the plan (``--notebook``).

    It runs with its own defaults and ``values`` (checked by
    :func:`~dlde.pipeline.plan.notebook_values`; relative paths are relative to the config folder),
    into ``<RUN_DIR>/<notebook>``. A notebook that reads sweeps (declares
    :data:`~dlde.pipeline.plan.SWEEP_PARAMETERS`) reads those of ``plan`` (``--config``,
    ``--runs-dir``, ``--tiny``); nothing is trained and no index.md is written.

    Returns:
        The executed copy.

    Raises:
        NotebookFailed: the notebook raised.
    """
    kernel_argv()
    parameters = plan.absolute_paths({"RUN_DIR": notebook_defaults(notebook)["RUN_DIR"], **values})
    if set(SWEEP_PARAMETERS) <= set(declared(notebook)):
        parameters.update(plan.sweep_parameters())
    executed = Path(parameters["RUN_DIR"]) / notebook
    try:
        papermill_execute(notebook, executed, parameters, plan.root, log_output)
    except Exception as error:
        step = Step(executed.parent.name, notebook, dict(values), "")
        raise NotebookFailed(step, executed, failure_reason(error)) from None
    return executed
