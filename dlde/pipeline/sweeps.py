"""Sweeps of ``figures.yaml`` (``python -m dlde.pipeline --sweeps``): ablations over seeds.

Per sweep a ``base`` of parameters, its arms (``grid``: every combination of the listed values;
or ``arms``: named parameter sets) and ``seeds``. Upper-case keys are parameters of
``01_train.ipynb``; lower-case keys are further :class:`dlde.train.TrainConfig` fields or head
options (passed through ``OVERRIDES_JSON``). Every resolved run trains into
``<runs_dir>/sweeps/<preset>/<fields that differ from the preset>,seed=<seed>`` (:func:`run_key`),
so arms with the same configuration (in one sweep or several) share one folder and train once.
A run whose folder already holds the same configuration with its last epoch written is skipped
(``--force`` retrains it); an interrupted one is resumed from its checkpoint; a failed one is
reported with its executed notebook and the others go on (``--fail-fast`` stops). Several sweep
processes may share a runs folder: a run one of them is training is skipped by the others.
``--executor local|slurm`` trains each run as a submitit job (:func:`train_job`, :mod:`.executors`)
in the same folders under the same locks, and waits for them. Then
:mod:`dlde.reports.sweeps` writes ``<figures_dir>/ablations/<sweep>.md/.csv/.png/.pdf`` (mean ± sd
and 95 % t-interval over seeds) and ``index.md`` lists them. A notebook of the figure pipeline that
reads sweeps has their runs trained the same way first (:func:`train_step_sweeps`).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlde.files import lock_holder, release_lock, try_lock
from dlde.kernels import setting as kernel_setting
from dlde.reports.sweeps import write_sweep
from dlde.train import PRESETS, RunFolder
from dlde.train.runs import describe_changes, run_identity

from .execute import KERNEL_THREADS, NotebookFailed, failure_reason, kernel_argv, kernel_threads, papermill_execute
from .executors import JobRunner, job_environment
from .lock import NOTEBOOKS_DIR, TRAIN_NOTEBOOK, check_parameters_cell, notebook_defaults
from .plan import MANAGED_PARAMETERS, TINY_RUN, Plan, Step, check_name, confined, load_config, make_plan
from .progress import EpochProgress, Summary, duration, echo_line
from .reports import write_sweep_index
from .run_config import overrides_of, run_parameters, split_entry, train_config

#: A sweep may not set these: the pipeline sets them (seeds come from ``seeds``).
SWEEP_MANAGED = MANAGED_PARAMETERS + ("SEED", "RESUME", "seed", "resume", "run_dir", "data_root")
SWEEPS_FOLDER = "sweeps"  # under runs_dir
SWEEP_LOCK = "sweep.lock"  # in a run folder while a sweep process trains it


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep (possibly shared by several arms and sweeps).

    Attributes:
        key: its folder relative to the sweeps folder, e.g. ``digits/epochs=8,means_lr=0.01,seed=1``.
        parameters: notebook parameters of ``01_train.ipynb`` (without the managed ones).
        config: the resolved :class:`~dlde.train.TrainConfig` as a dict (what decides the result).
    """

    key: str
    parameters: dict[str, Any]
    config: dict[str, Any]

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])


@dataclass(frozen=True)
class Sweep:
    """One sweep: its declaration (for the record) and, per arm, the keys of its runs (one per seed)."""

    name: str
    declaration: dict[str, Any]
    arms: dict[str, list[str]]


@dataclass(frozen=True)
class SweepPlan:
    """The sweeps to run and the distinct runs they need, in first-use order."""

    figures: Plan  # the figure pipeline of the same file (index.md lists both)
    sweeps_dir: Path
    sweeps: list[Sweep]
    runs: dict[str, SweepRun]

    @property
    def ablations_dir(self) -> Path:
        return self.figures.ablations_dir

    def run_dir(self, key: str) -> Path:
        return confined(self.sweeps_dir, key)

    def executed(self, key: str) -> Path:
        return self.run_dir(key) / TRAIN_NOTEBOOK

    def display(self, path: str | os.PathLike) -> str:
        return self.figures.display(path)

    def parameters(self, key: str, *, resume: bool) -> dict[str, Any]:
        """What is injected into ``01_train.ipynb`` for run ``key``."""
        run_dir = self.run_dir(key)
        values = self.figures.absolute_paths(self.runs[key].parameters)
        values.update(RESUME=resume, RUN_DIR=str(run_dir), FIGURES_DIR=str(run_dir / "figures"),
                      FIGURE_PREFIX="", OUT_DIR=str(run_dir / Path(TRAIN_NOTEBOOK).stem))
        return values


# ------------------------------------------------------------------------------------ naming
def name_value(value: Any) -> str:
    """A value as it appears in a folder or arm name: ``0.01``, ``true``, ``none``, ``12-24``."""
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def run_key(config: Mapping[str, Any], preset: str) -> str:
    """The folder of a resolved config under the sweeps folder: ``<preset>/<diffs>,seed=<seed>``.

    ``<diffs>`` (sorted, ``name=value``) are the entries of the run's identity
    (:func:`dlde.train.runs.run_identity`: the fields outside
    :data:`~dlde.train.runs.NUMBER_NEUTRAL_FIELDS` and the head's options, flat, e.g.
    ``means_lr=0.01``) that differ from the preset's with the same head, and the model when it
    is not the preset's; equal configs get equal keys, whichever sweep asks.

    Args:
        config: a resolved TrainConfig as a dict (``head_options`` nested or flat).
        preset: the name of the preset it was resolved over.
    """
    base = PRESETS[preset]
    identity = run_identity(config)
    reference = run_identity(base.updated({"model": identity.get("model", base.model)})) | {"model": base.model}
    diffs = [f"{name}={name_value(value)}" for name, value in sorted(identity.items())
             if name != "seed" and value != reference.get(name)]
    return f"{preset}/" + ",".join(diffs + [f"seed={config['seed']}"])


# ---------------------------------------------------------------------------------- planning
def _split_parameters(path: Path, where: str, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Notebook parameters (upper case) and TrainConfig fields or head options (lower case) of a sweep
    entry (:func:`dlde.pipeline.run_config.split_entry`), none of them one the sweep sets itself."""
    managed = [key for key in values if key in SWEEP_MANAGED]
    if managed:
        raise ValueError(f"{path}: {where} sets {managed[0]!r}, which the sweep sets itself "
                         "(seeds come from 'seeds'; folders from runs_dir)")
    return split_entry(values, f"{path}: {where}")


def _arms(path: Path, name: str, sweep: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Arm name -> its parameters: the named ``arms``, or every combination of ``grid``."""
    if "arms" in sweep:
        arms = sweep["arms"]
        if not isinstance(arms, Mapping) or not arms:
            raise ValueError(f"{path}: sweep {name!r}: 'arms' must map arm names to parameters")
        for arm, values in arms.items():
            check_name(path, f"sweep {name!r} arm", arm)
            if not isinstance(values, Mapping):
                raise ValueError(f"{path}: sweep {name!r} arm {arm!r} must map parameters to values")
        return {arm: dict(values) for arm, values in arms.items()}
    grid = sweep["grid"]
    if not isinstance(grid, Mapping) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{path}: sweep {name!r}: 'grid' must map parameters to non-empty lists of values")
    keys = list(grid)
    arms = {}
    for combination in itertools.product(*(grid[k] for k in keys)):
        arm = ",".join(f"{k.lower()}={name_value(v)}" for k, v in zip(keys, combination))
        arms[check_name(path, f"sweep {name!r} arm", arm)] = dict(zip(keys, combination))
    return arms


def _resolve(where: str, parameters: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, *,
             tiny_data: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The notebook parameters of one seed of an arm and the config they resolve to.

    Args:
        where: names the arm in errors.
        parameters: its notebook parameters (base and arm).
        overrides: its further TrainConfig fields (base and arm).
        seed: the seed.
        tiny_data: with ``--tiny``: the data folder of the tiny runs.
    """
    values = dict(parameters, SEED=seed)
    if tiny_data is not None:
        values.update({k: v for k, v in TINY_RUN.items() if k != "RESUME"})
        values["DATA_ROOT"] = str(tiny_data)
    values = run_parameters(values, overrides)
    try:
        return values, train_config(values).to_dict()
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where} seed {seed}: {error}") from None


def make_sweep_plan(config_path: str | os.PathLike, names: Sequence[str] = (), *, tiny: bool = False,
                    runs_dir: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None
                    ) -> SweepPlan:
    """Resolve the ``sweeps`` of figures.yaml into distinct training runs.

    Args:
        config_path: figures.yaml.
        names: the sweeps to run; empty runs all.
        tiny: preset ``tiny``, one epoch, everything under ``<runs_dir>/tiny``.
        runs_dir: overrides ``runs_dir`` of the file (runs go to ``<runs_dir>/sweeps``).
        figures_dir: overrides ``figures_dir`` (tables and figures go to ``<figures_dir>/ablations``).

    Raises:
        ValueError: an unknown sweep, parameter or field, or an invalid resolved config.
    """
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    figures = make_plan(config_path, tiny=tiny, runs_dir=runs_dir, figures_dir=figures_dir)
    sweeps_declared = config.get("sweeps") or {}
    if not sweeps_declared:
        raise ValueError(f"{config_path}: no 'sweeps' section")
    unknown = sorted(set(names) - set(sweeps_declared))
    if unknown:
        raise ValueError(f"--sweeps {unknown}: no such sweep in {config_path}; sweeps: {sorted(sweeps_declared)}")
    check_parameters_cell(NOTEBOOKS_DIR / TRAIN_NOTEBOOK)  # its defaults decide every sweep run's config
    sweeps_dir = figures.runs_dir / SWEEPS_FOLDER
    tiny_data = figures.runs_dir / "data" if tiny else None
    sweeps, runs = [], {}
    for name in names or list(sweeps_declared):
        sweep = sweeps_declared[name]
        base_parameters, base_overrides = _split_parameters(config_path, f"sweep {name!r} base",
                                                            sweep.get("base") or {})
        arms = {}
        for arm, values in _arms(config_path, name, sweep).items():
            where = f"sweep {name!r} arm {arm!r}"
            parameters, overrides = _split_parameters(config_path, where, values)
            arms[arm] = []
            for seed in sweep["seeds"]:
                values, resolved = _resolve(f"{config_path}: {where}", base_parameters | parameters,
                                            base_overrides | overrides, seed, tiny_data=tiny_data)
                key = run_key(resolved, values.get("PRESET", notebook_defaults()["PRESET"]))
                confined(sweeps_dir, key)
                if key in runs and run_identity(runs[key].config) != run_identity(resolved):
                    raise ValueError(f"{config_path}: two different configs map to folder {key}")
                runs.setdefault(key, SweepRun(key, values, resolved))
                arms[arm].append(key)
        sweeps.append(Sweep(name, dict(sweep), arms))
    # Seed-major order: an interrupted sweep has every arm at about the same number of seeds.
    runs = dict(sorted(runs.items(), key=lambda item: item[1].parameters["SEED"]))
    return SweepPlan(figures, sweeps_dir, sweeps, runs)


# --------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class RunFailure:
    """A sweep run that failed: its folder, its executed notebook and why."""

    key: str
    executed: Path
    reason: str


def _train(plan: SweepPlan, key: str, label: str, *, force: bool, log_output: bool, threads: int | None,
           echo: Callable[[str], None]) -> tuple[str, float]:
    """Train one run of the sweep unless it is complete; ``(status, seconds)``.

    Several sweeps may run at once on one runs folder (e.g. one per core): each run is trained by
    the process that takes its lock file (:data:`SWEEP_LOCK`, released when the run ends; a dead
    process's lock is taken over), and the others skip it as ``busy``.

    Raises:
        Exception: why the run failed (the notebook's error, or a missing last epoch).
    """
    run, folder = plan.runs[key], RunFolder(plan.run_dir(key))
    holder = try_lock(folder.path / SWEEP_LOCK)
    if holder is not None:
        echo(f"{label}: being trained by another sweep (pid {holder['pid']} on {holder['host']}), skipped")
        return "busy", 0.0
    try:
        return _train_locked(plan, key, label, run, folder, force=force, log_output=log_output, threads=threads,
                             echo=echo)
    finally:
        release_lock(folder.path / SWEEP_LOCK)


def changes_text(folder: RunFolder, config: Mapping[str, Any]) -> str:
    """The fields in which the folder's saved run differs from ``config``, as ``name: saved -> new``."""
    try:
        changes = folder.config_changes(config)
    except ValueError as error:  # an unreadable record
        return str(error)
    return describe_changes(changes) or "unknown"


def _train_locked(plan: SweepPlan, key: str, label: str, run: SweepRun, folder: RunFolder, *, force: bool,
                  log_output: bool, threads: int | None, echo: Callable[[str], None]) -> tuple[str, float]:
    """:func:`_train` once this process holds the run's sweep lock."""
    state = "changed" if force and folder.path.exists() else folder.state(run.config)
    if state == "changed" and not force:
        raise FileExistsError(f"{folder.path} holds a run of another configuration "
                              f"({changes_text(folder, run.config)}), e.g. trained before a preset changed: "
                              "move it away, or pass --force to replace it")
    if state == "complete":
        echo(f"{label}: complete, skipped")
        return "skipped", 0.0
    resume = state == "partial"
    done_before = folder.finished_epochs() if resume else 0
    parameters = plan.parameters(key, resume=resume)
    if not resume and folder.path.exists():
        # A folder belongs to one run: the trainer replaces this folder's run files (overwrite) and
        # the notebook its outputs; nothing else in the folder is deleted.
        parameters["OVERRIDES_JSON"] = json.dumps({**overrides_of(parameters), "overwrite": True}, sort_keys=True)
    echo(f"{label}: {TRAIN_NOTEBOOK}, {'resuming after epoch ' + str(done_before) if resume else 'training'}"
         f" ({run.epochs} epochs) ...")
    started = time.perf_counter()
    with kernel_threads(threads), EpochProgress(folder.path, run.epochs, key, done_before=done_before, echo=echo):
        papermill_execute(TRAIN_NOTEBOOK, plan.executed(key), parameters, plan.figures.root, log_output)
    if not folder.is_complete(run.config):
        raise RuntimeError(f"the notebook finished but {folder.metrics_file} lacks epoch {run.epochs}")
    return ("resumed" if resume else "trained"), time.perf_counter() - started


def aggregate_sweeps(plan: SweepPlan, echo: Callable[[str], None]) -> None:
    """Aggregate every sweep over its finished runs (tables and figures under ``ablations/``) and
    rewrite index.md; runs not finished are left out (the table shows each arm's seeds)."""
    for sweep in plan.sweeps:
        arms = {arm: [plan.run_dir(k) for k in keys] for arm, keys in sweep.arms.items()}
        written = write_sweep(sweep.name, arms, plan.ablations_dir, parameters=sweep.declaration,
                              display_root=plan.figures.root)
        echo(f"sweep {sweep.name}: {plan.display(written['md'])}, {plan.display(written['png'])}")
    write_sweep_index(plan.figures)


def run_status(plan: SweepPlan, key: str) -> tuple[str, int, str]:
    """Where run ``key`` of the plan stands: its folder's state (:meth:`RunFolder.state`), the epochs
    it still has to train (none for a folder holding another configuration) and, in words,
    ``complete``, ``epoch K of N`` (a checkpoint to resume from), ``not started`` or ``holds another
    configuration``, with ``, training (pid P on HOST)`` when a sweep process holds its lock (``, being
    taken`` while one writes it). Reads the folder only."""
    run, folder = plan.runs[key], RunFolder(plan.run_dir(key))
    state = folder.state(run.config)
    done = min(folder.finished_epochs(), run.epochs)
    words = {"complete": "complete", "new": "not started",
             "changed": "holds another configuration (rename_runs, or --force to replace it)"}.get(
        state, f"epoch {done} of {run.epochs}")
    holder = lock_holder(folder.path / SWEEP_LOCK)
    if holder:
        words += ", being taken" if holder["pid"] is None else f", training (pid {holder['pid']} on {holder['host']})"
    return state, 0 if state == "changed" else run.epochs - done, words


def print_status(plan: SweepPlan, echo: Callable[[str], None]) -> int:
    """``--status``: per sweep, how many of its runs are complete and where the others stand (one
    line each); then the distinct runs of all the sweeps and the epochs left. Trains nothing;
    returns the number of runs not complete."""
    status = {key: run_status(plan, key) for key in plan.runs}
    left = {key for key, (state, _, _) in status.items() if state != "complete"}
    for sweep in plan.sweeps:
        keys = list(dict.fromkeys(key for keys in sweep.arms.values() for key in keys))
        echo(f"{sweep.name}: {sum(key not in left for key in keys)} of {len(keys)} runs complete")
        for key in keys:
            if key in left:
                echo(f"  {key}: {status[key][2]}")
    epochs = sum(status[key][1] for key in left)
    echo(f"all: {len(plan.runs) - len(left)} of {len(plan.runs)} distinct runs complete; {epochs} epochs left to train")
    return len(left)


@dataclass(frozen=True)
class RunOutcome:
    """How training one run of a sweep ended: ``status`` (trained, resumed, skipped, busy or FAILED),
    its seconds, and why it failed (one line; None unless FAILED)."""

    key: str
    status: str
    seconds: float
    reason: str | None = None


def train_run(plan: SweepPlan, key: str, label: str, *, force: bool, log_output: bool, threads: int | None,
              echo: Callable[[str], None]) -> RunOutcome:
    """:func:`_train`, its error returned as a FAILED outcome (the traceback stays in the executed notebook)."""
    started = time.perf_counter()
    try:
        status, seconds = _train(plan, key, label, force=force, log_output=log_output, threads=threads, echo=echo)
    except Exception as error:
        return RunOutcome(key, "FAILED", time.perf_counter() - started, failure_reason(error))
    return RunOutcome(key, status, seconds)


def train_job(plan: SweepPlan, key: str, label: str, *, force: bool, log_output: bool, threads: int | None,
              kernels: str) -> RunOutcome:
    """One run as a submitit job (:mod:`.executors`; top-level, so it pickles by reference).

    The job's process imported torch and NumPy while unpickling this function, so the pin comes too
    late for the process itself, which computes nothing; the run trains in a papermill kernel, a
    fresh process that inherits ``os.environ``, so setting ``kernels`` (the submitting process's
    setting, :func:`~dlde.pipeline.executors.job_environment`) there first is enough.
    """
    os.environ.update(job_environment(kernels))
    return train_run(plan, key, label, force=force, log_output=log_output, threads=threads, echo=echo_line)


def _job_outcomes(plan: SweepPlan, runner: JobRunner, labels: Mapping[str, str], *, force: bool, log_output: bool,
                  threads: int | None, echo: Callable[[str], None]) -> Iterator[RunOutcome]:
    """The runs as jobs of ``runner``, outcomes in the order the jobs end. A complete run is
    skipped here without a job (its job would skip it too, after waiting in a queue)."""
    calls, kernels = {}, kernel_setting()
    for key, label in labels.items():
        if not force and RunFolder(plan.run_dir(key)).is_complete(plan.runs[key].config):
            echo(f"{label}: complete, skipped")
            yield RunOutcome(key, "skipped", 0.0)
        else:
            calls[key] = functools.partial(train_job, plan, key, label, force=force, log_output=log_output,
                                           threads=threads, kernels=kernels)
    for key, outcome, lost in runner.run(calls, echo, labels):
        yield outcome if lost is None else RunOutcome(key, "FAILED", 0.0, lost)


def run_sweeps(plan: SweepPlan, *, force: bool = False, fail_fast: bool = False, log_output: bool = False,
               threads: int | None = KERNEL_THREADS, summary: Summary | None = None,
               echo: Callable[[str], None] | None = None, aggregate: bool = True,
               executor: JobRunner | None = None) -> list[RunFailure]:
    """Train every run of the plan that is not already complete, then aggregate each sweep.

    A complete run (same config, last epoch written) is skipped unless ``force``; a partial
    one resumes from its checkpoint; a folder holding a run of another config (e.g. trained before
    a preset changed) is a failure of that run, its files untouched, unless ``force``: with
    ``force`` every run is retrained in its folder with ``overwrite``, which replaces only the
    run's own files.
    After all runs (also after failures) every sweep is aggregated over its finished runs
    (:func:`dlde.reports.sweeps.write_sweep`) and ``index.md`` is rewritten, unless not ``aggregate``.

    Args:
        plan: from :func:`make_sweep_plan`.
        force: retrain complete runs too, and replace runs of another config.
        fail_fast: stop at the first failed run (inline only: jobs run at once).
        log_output: stream the notebooks' outputs.
        threads: ``OMP_NUM_THREADS`` of the kernels (None: inherited from the caller's environment).
        summary: collects each run's outcome and time.
        echo: where progress lines go (default: print).
        aggregate: write the tables and figures of the sweeps (and index.md) at the end.
        executor: None trains the runs one after the other in this process; else each run is a
            job of it (:func:`dlde.pipeline.executors.make_executor`), its progress lines in its log.

    Returns:
        The failed runs (empty when all succeeded).
    """
    if executor is not None and fail_fast:
        raise ValueError("--fail-fast stops an inline sweep's loop; jobs run at once (cancel them with scancel)")
    echo = echo or echo_line
    summary = summary if summary is not None else Summary()
    failures: list[RunFailure] = []
    labels = {key: f"[{index}/{len(plan.runs)}] {plan.display(plan.run_dir(key))}"
              for index, key in enumerate(plan.runs, 1)}
    if labels:
        kernel_argv()
    options = {"force": force, "log_output": log_output, "threads": threads, "echo": echo}
    outcomes = (_job_outcomes(plan, executor, labels, **options) if executor is not None
                else (train_run(plan, key, label, **options) for key, label in labels.items()))
    try:
        for outcome in outcomes:
            label = labels[outcome.key]
            summary.add(outcome.key, outcome.status, outcome.seconds)
            if outcome.status == "FAILED":
                failures.append(RunFailure(outcome.key, plan.executed(outcome.key), outcome.reason))
                echo(f"{label}: FAILED after {duration(outcome.seconds)}: {outcome.reason}\n"
                     f"  the traceback is in {plan.executed(outcome.key)}")
                if fail_fast:
                    break
            elif outcome.status not in ("skipped", "busy"):
                echo(f"{label}: done in {duration(outcome.seconds)}")
    finally:
        if aggregate:
            aggregate_sweeps(plan, echo)
    return failures


def train_step_sweeps(figures: Plan, step: Step, log_output: bool = False) -> None:
    """Train the runs of the sweeps a notebook of the figure pipeline reads (``step.sweeps``), before
    it is executed (:data:`dlde.pipeline.execute.SweepTrainer`): as ``--sweeps`` (with ``--tiny``
    and ``--runs-dir`` as the figures'), so complete runs are skipped, but not aggregated.

    Raises:
        NotebookFailed: a run failed, or is not complete (being trained by another process).
    """
    plan = make_sweep_plan(figures.config, step.sweeps, tiny=figures.tiny, runs_dir=figures.sweeps_runs_dir)
    # threads=None: the kernels inherit the threads the figure pipeline set around this step
    failures = run_sweeps(plan, log_output=log_output, threads=None, fail_fast=True, aggregate=False)
    if failures:
        raise NotebookFailed(step, failures[0].executed, f"sweep run {failures[0].key} failed: {failures[0].reason}")
    unfinished = [key for key, run in plan.runs.items() if not RunFolder(plan.run_dir(key)).is_complete(run.config)]
    if unfinished:
        raise NotebookFailed(step, plan.executed(unfinished[0]),
                             f"{len(unfinished)} sweep runs are not complete, {unfinished[0]} first: another "
                             "sweep process is training them; rerun when it is done")
