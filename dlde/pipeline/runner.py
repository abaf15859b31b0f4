"""The figure pipeline: train the runs of ``figures.yaml``, execute the notebooks on them, run sweeps.

::

    python -m dlde.pipeline --config figures.yaml [--only NAME ...] [--tiny] [--threads N]
                            [--runs-dir DIR] [--figures-dir DIR] [--log-output]
    python -m dlde.pipeline --config figures.yaml --sweeps [NAME ...] [--force] [--fail-fast] [--tiny]

``figures.yaml`` holds ``runs`` (run name -> parameters of ``notebooks/01_train.ipynb``) and
``notebooks`` (a list of ``{notebook, run, parameters}``). Each run is trained by executing
``01_train.ipynb`` into ``<runs_dir>/<run>/01_train.ipynb``; then every listed notebook is
executed with papermill into ``<runs_dir>/<run>/<notebook>``. A notebook writes its figures
(PNG + PDF) into the figures folder and its numbers into ``<runs_dir>/<run>/<stem>/results.json``.
Figures of the first run keep their plain names; those of any other run are prefixed with
the run's name (``sigmoid_train_curves``). At the end ``figures/index.md`` lists every figure
with its notebook and parameters, and ``figures/metrics.md`` tabulates the final metrics of
each run. The first failing notebook stops the pipeline with exit status 1 and the path of
the executed notebook holding the traceback; ``index.md`` then lists that step as not current.

``sweeps`` (run with ``--sweeps``, separately from the figures) declares ablations: per sweep a
``base`` of parameters, its arms (``grid``: every combination of the listed values; or
``arms``: named parameter sets) and ``seeds``. Upper-case keys are parameters of
``01_train.ipynb``; lower-case keys are further :class:`dlde.train.TrainConfig` fields (passed
through ``OVERRIDES_JSON``). Every resolved run trains into
``<runs_dir>/sweeps/<preset>/<fields that differ from the preset>,seed=<seed>``, so arms with
the same configuration (in one sweep or several) share one folder and train once. A run whose
folder already holds the same configuration with its last epoch written is skipped
(``--force`` retrains it); an interrupted one is resumed from its checkpoint; a failed one is
reported with its executed notebook and the others go on (``--fail-fast`` stops). Then
:mod:`dlde.analysis.aggregate` writes ``<figures_dir>/ablations/<sweep>.md/.csv/.png/.pdf`` (mean ± sd
and 95 % t-interval over seeds) and ``index.md`` lists them.

While a training notebook runs, one line per finished epoch reports its loss and the elapsed
and remaining time; a summary table of every step and its time ends the output.

``--tiny`` swaps in tiny parameters (preset ``tiny``, one epoch, a few images) and writes
everything under ``<runs_dir>/tiny/`` (figures in ``<runs_dir>/tiny/figures``), so it never
touches the real figures; the tests use it.

The helpers the notebooks themselves call live in :mod:`dlde.pipeline.notebook`.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .notebook import RESULTS_FILE, _jsonable, check_parameters_cell, read_results
from .notebook import train_config as notebook_train_config

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
TRAIN_NOTEBOOK = "01_train.ipynb"
KERNEL_NAME = "python3"  # the native ipykernel spec: resolves to this interpreter (see kernel_argv)
#: How every notebook is executed (``papermill.execute_notebook`` keywords). The kernel logs
#: errors only: its one start-up warning (unencrypted TCP on 127.0.0.1) would print once per
#: notebook; tracebacks still reach the executed notebook. The kernel is stopped at once when
#: the notebook is done, which saves the ~3 s a graceful shutdown takes after importing torch.
PAPERMILL_OPTIONS = {"kernel_name": KERNEL_NAME, "progress_bar": False,
                     "extra_arguments": ["--IPKernelApp.log_level=ERROR"], "shutdown_kernel": "immediate"}

#: A run's key in figures.yaml (not a notebook parameter): train it under torchrun with N processes.
NPROC_KEY = "nproc"
#: Parameters the pipeline sets itself; figures.yaml may not set them.
MANAGED_PARAMETERS = ("RUN_DIR", "FIGURES_DIR", "FIGURE_PREFIX", "OUT_DIR")
#: Parameters holding paths: relative values in figures.yaml are relative to its folder.
PATH_PARAMETERS = ("RUN_DIR", "DATA_ROOT", "FIGURES_DIR", "OUT_DIR", "IMAGES_DIR")
#: ``--tiny``: parameters replaced in every training run / every notebook that declares them.
TINY_RUN = {"PRESET": "tiny", "EPOCHS": 1, "RESUME": False, "DETECTION_IMAGES": 4}
TINY_NOTEBOOK = {"MAX_IMAGES": 16, "DEMO_IMAGES": 4, "SHOTS": "1,2", "DRAWS": 2, "FINETUNE_STEPS": 2, "BASE_EPOCHS": 1}
STEP_FILE = "pipeline_step.json"  # next to results.json: the parameters the pipeline injected
#: Names of runs, sweeps and arms: they become folder names, so no separators and no leading dot.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")


def not_identity() -> frozenset[str]:
    """TrainConfig fields that never change a run's numbers (the trainer's bookkeeping fields, and
    where the data lies): ignored when comparing runs and naming their folders."""
    from dlde.train import BOOKKEEPING

    return frozenset(BOOKKEEPING) | {"data_root"}


#: A sweep may not set these: the pipeline sets them (seeds come from ``seeds``).
SWEEP_MANAGED = MANAGED_PARAMETERS + ("SEED", "RESUME", "seed", "resume", "run_dir", "data_root")
SWEEP_KEYS = ("base", "grid", "arms", "seeds")
SWEEPS_FOLDER = "sweeps"  # under runs_dir
ABLATIONS_FOLDER = "ablations"  # under figures_dir
POLL_SECONDS = 1.0  # how often the progress thread reads a training run's metrics.jsonl


def _check_name(path: Path, kind: str, name: Any) -> str:
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{path}: {kind} name {name!r} must be letters, digits and . _ = , + - "
                         "(not starting with a dot): it becomes a folder name under runs_dir")
    return name


def confined(base: Path, name: str) -> Path:
    """``base / name``, refused when it would resolve outside ``base`` (``..``, absolute paths)."""
    base = Path(base).resolve()
    path = (base / name).resolve()
    if path == base or base not in path.parents:
        raise ValueError(f"{name!r} would write outside {base}")
    return path


# ----------------------------------------------------------------------------- the pipeline
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


@dataclass(frozen=True)
class Step:
    """One notebook execution of the pipeline."""

    run: str
    notebook: str  # file name inside notebooks/
    parameters: dict[str, Any]  # as given in figures.yaml (plus --tiny), before paths are added
    prefix: str
    nproc: int = 1  # a training run: processes of its torchrun (1: trained inside the notebook)

    @property
    def stem(self) -> str:
        return Path(self.notebook).stem

    @property
    def names(self) -> set[str]:
        """What ``--only`` matches: the run, ``02_mean_drift.ipynb``, ``02_mean_drift``, ``02``."""
        return {self.run, self.notebook, self.stem, self.stem.split("_")[0]}


@dataclass(frozen=True)
class Plan:
    """Where a pipeline writes and which notebooks it executes, in order."""

    root: Path  # folder of figures.yaml: relative paths are relative to it
    runs_dir: Path
    figures_dir: Path
    steps: list[Step]  # to execute (after --only)
    all_steps: list[Step]  # of the whole file: index.md and metrics.md cover them all

    def run_dir(self, run: str) -> Path:
        return confined(self.runs_dir, run)

    def executed(self, step: Step) -> Path:
        return self.run_dir(step.run) / step.notebook

    def out_dir(self, step: Step) -> Path:
        return self.run_dir(step.run) / step.stem

    def parameters(self, step: Step) -> dict[str, Any]:
        """Everything injected into the notebook: the step's parameters with absolute paths."""
        values = {key: (str(self._absolute(value)) if key in PATH_PARAMETERS and value else value)
                  for key, value in step.parameters.items()}
        values.update(RUN_DIR=str(self.run_dir(step.run)), FIGURES_DIR=str(self.figures_dir),
                      FIGURE_PREFIX=step.prefix, OUT_DIR=str(self.out_dir(step)))
        return values

    def _absolute(self, path: str | os.PathLike) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.root / path).resolve()

    def display(self, path: str | os.PathLike) -> str:
        """``path`` relative to the config folder when inside it (for index.md and messages)."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares (``papermill.inspect_notebook``)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


@cache
def _declared(notebook: str) -> dict[str, dict[str, Any]]:
    return notebook_parameters(NOTEBOOKS_DIR / notebook)


def notebook_defaults(notebook: str = TRAIN_NOTEBOOK) -> dict[str, Any]:
    """The default values of a notebook's parameters cell (``{"EPOCHS": 16, ...}``)."""
    return {name: ast.literal_eval(spec["default"]) for name, spec in _declared(notebook).items()}


def train_config(parameters: Mapping[str, Any]):
    """The :class:`~dlde.train.TrainConfig` ``01_train.ipynb`` trains with these parameters
    (:func:`dlde.pipeline.notebook.train_config`); parameters not given take the notebook's defaults."""
    return notebook_train_config(notebook_defaults(TRAIN_NOTEBOOK) | dict(parameters))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read figures.yaml and check its shape (unknown keys and unsafe names fail loudly).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid YAML or not of the expected shape (one line, naming the file).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pipeline file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(config, Mapping):
        raise ValueError(f"{path}: expected a mapping of runs_dir, figures_dir, runs, notebooks, sweeps; "
                         f"got {type(config).__name__}")
    allowed = {"runs_dir", "figures_dir", "runs", "notebooks", "sweeps"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    runs = config.get("runs") or {}
    if not isinstance(runs, Mapping) or (not runs and not config.get("sweeps")):
        raise ValueError(f"{path}: 'runs' must map run names to training parameters")
    for name, parameters in runs.items():
        _check_name(path, "run", name)
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"{path}: run {name!r} must map parameters to values, got {parameters!r}")
    for entry in config.get("notebooks") or []:
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: each notebooks entry must be a mapping, got {entry!r}")
        extra = sorted(set(entry) - {"notebook", "run", "parameters"})
        if extra or "notebook" not in entry or "run" not in entry:
            raise ValueError(f"{path}: each notebooks entry needs 'notebook' and 'run' "
                             f"(optional 'parameters'); got {dict(entry)}")
        if entry["run"] not in runs:
            raise ValueError(f"{path}: notebook {entry['notebook']} uses run {entry['run']!r}, "
                             f"which is not in runs {sorted(runs)}")
    sweeps = config.get("sweeps") or {}
    if not isinstance(sweeps, Mapping):
        raise ValueError(f"{path}: 'sweeps' must map sweep names to {{base, grid | arms, seeds}}")
    for name, sweep in sweeps.items():
        _check_name(path, "sweep", name)
        if not isinstance(sweep, Mapping):
            raise ValueError(f"{path}: sweep {name!r} must be a mapping with {list(SWEEP_KEYS)}")
        extra = sorted(set(sweep) - set(SWEEP_KEYS))
        if extra:
            raise ValueError(f"{path}: sweep {name!r} has unknown keys {extra}; allowed: {list(SWEEP_KEYS)}")
        if ("grid" in sweep) == ("arms" in sweep):
            raise ValueError(f"{path}: sweep {name!r} needs exactly one of 'grid' (values to combine) "
                             "or 'arms' (named parameter sets)")
        seeds = sweep.get("seeds")
        if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                  for s in seeds) or len(set(seeds)) != len(seeds)):
            raise ValueError(f"{path}: sweep {name!r} needs 'seeds', a list of distinct integers; got {seeds!r}")
    return config


def make_plan(config_path: str | os.PathLike, *, tiny: bool = False, only: Sequence[str] = (),
              runs_dir: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None) -> Plan:
    """Turn figures.yaml (and the command-line options) into the list of notebook executions.

    Args:
        config_path: figures.yaml.
        tiny: use tiny parameters and write under ``<runs_dir>/tiny``.
        only: keep the steps whose run name or notebook (``02_mean_drift``, ``02``,
            ``02_mean_drift.ipynb``) is in ``only``; empty keeps all.
        runs_dir: overrides ``runs_dir`` of the file.
        figures_dir: overrides ``figures_dir`` of the file (with ``tiny``: default
            ``<runs_dir>/tiny/figures``).
    """
    config_path = Path(config_path).resolve()
    config = load_config(config_path)
    root, runs_root, figures = _folders(config_path, config, tiny=tiny, runs_dir=runs_dir, figures_dir=figures_dir)

    run_names = list(config.get("runs") or {})
    prefixes = {name: "" if index == 0 else f"{name}_" for index, name in enumerate(run_names)}
    entries = [(name, TRAIN_NOTEBOOK, dict(config["runs"][name] or {})) for name in run_names]
    entries += [(e["run"], e["notebook"], dict(e.get("parameters") or {})) for e in config.get("notebooks") or []]

    steps, seen = [], set()
    for run, notebook, parameters in entries:
        nproc = parameters.pop(NPROC_KEY, 1) if notebook == TRAIN_NOTEBOOK else 1
        if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
            raise ValueError(f"{config_path}: run {run!r}: {NPROC_KEY} must be a positive integer, got {nproc!r}")
        if (run, notebook) in seen:
            raise ValueError(f"{config_path}: {notebook} appears twice for run {run!r}; "
                             "add another run to run it with other parameters")
        seen.add((run, notebook))
        confined(runs_root, run)
        source = NOTEBOOKS_DIR / notebook
        if not source.exists():
            raise FileNotFoundError(f"{config_path}: notebook {source} does not exist")
        check_parameters_cell(source)  # a notebook edited in Lab cannot change what the pipeline computes
        declared = _declared(notebook)
        managed = sorted(set(parameters) & set(MANAGED_PARAMETERS))
        if managed:
            raise ValueError(f"{config_path}: {managed} of {notebook} (run {run!r}) are set by the pipeline; "
                             "use runs_dir / figures_dir instead")
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise ValueError(f"{config_path}: {notebook} (run {run!r}) has no parameters {unknown}; "
                             f"it declares {sorted(declared)}")
        if tiny:
            overrides = TINY_RUN if notebook == TRAIN_NOTEBOOK else TINY_NOTEBOOK
            parameters.update({k: v for k, v in overrides.items() if k in declared})
            if notebook == TRAIN_NOTEBOOK:
                parameters["DATA_ROOT"] = str(runs_root / "data")
        steps.append(Step(run, notebook, parameters, prefixes[run], nproc))

    if not only:
        return Plan(root, runs_root, figures, steps, steps)
    unmatched = sorted(name for name in only if not any(name in step.names for step in steps))
    if unmatched:
        raise ValueError(f"--only {unmatched} matches no run or notebook; runs: {run_names}, "
                         f"notebooks: {sorted({step.stem for step in steps})}")
    return Plan(root, runs_root, figures, [step for step in steps if step.names & set(only)], steps)


def _folders(config_path: Path, config: Mapping[str, Any], *, tiny: bool, runs_dir, figures_dir
             ) -> tuple[Path, Path, Path]:
    """``(root, runs_dir, figures_dir)``: absolute, from the file and the command line."""
    root = config_path.parent

    def absolute(path) -> Path:  # an absolute path stays as it is
        return (root / Path(path).expanduser()).resolve()

    runs_root = absolute(runs_dir if runs_dir is not None else config.get("runs_dir", "runs"))
    if tiny:
        runs_root = runs_root / "tiny"
        figures = absolute(figures_dir) if figures_dir is not None else runs_root / "figures"
    else:
        figures = absolute(figures_dir if figures_dir is not None else config.get("figures_dir", "figures"))
    return root, runs_root, figures


class NotebookFailed(RuntimeError):
    """A notebook raised; ``executed`` holds the executed copy with the traceback."""

    def __init__(self, step: Step, executed: Path, reason: str):
        super().__init__(f"{step.notebook} (run {step.run!r}) failed: {reason}")
        self.step, self.executed, self.reason = step, executed, reason


@contextmanager
def _environment(values: Mapping[str, str]):
    """Set environment variables (inherited by the kernels started inside) and restore them."""
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


# ------------------------------------------------------------------------------- progress
def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a metrics.jsonl being written (a torn last line is ignored)."""
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class EpochProgress:
    """Prints one line per epoch a training run finishes, read from its ``metrics.jsonl``.

    A background thread polls the file; a line reads
    ``  dlde: epoch 3/16, train loss 0.4123, val loss 0.3011, AP 0.512; 41 s elapsed, about 3 min 38 s left``.
    Only a file written after the watch started counts (an old run's file is not reported),
    and epochs up to ``done_before`` (a resumed run's) are not reported again.

    Use as a context manager around the notebook's execution.
    """

    def __init__(self, run_dir: Path, epochs: int, label: str, *, done_before: int = 0,
                 interval: float = POLL_SECONDS, echo: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.epochs, self.label, self.done_before, self.interval = epochs, label, done_before, interval
        self.echo = echo or (lambda line: print(line, flush=True))
        self.reported = done_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = 0.0
        self._started_ns = 0

    def __enter__(self) -> EpochProgress:
        self._started, self._started_ns = time.perf_counter(), time.time_ns()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epoch, if it landed between two polls

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        try:
            if self.path.stat().st_mtime_ns < self._started_ns:
                return
        except OSError:
            return
        for row in _read_rows(self.path):
            epoch = int(row.get("epoch", 0))
            if epoch <= self.reported:
                continue
            self.reported = epoch
            elapsed = time.perf_counter() - self._started
            left = elapsed / max(1, epoch - self.done_before) * (self.epochs - epoch)
            parts = [f"epoch {epoch}/{self.epochs}"]
            for key, title, digits in (("train_loss", "train loss", 4), ("val_loss", "val loss", 4), ("AP", "AP", 3)):
                if row.get(key) is not None:
                    parts.append(f"{title} {row[key]:.{digits}f}")
            self.echo(f"  {self.label}: {', '.join(parts)}; {_duration(elapsed)} elapsed, "
                      f"about {_duration(left)} left")


@dataclass
class Summary:
    """The steps of one pipeline invocation with their outcome and time, printed at the end."""

    rows: list[tuple[str, str, float]] = field(default_factory=list)  # (step, status, seconds)

    def add(self, step: str, status: str, seconds: float) -> None:
        self.rows.append((step, status, seconds))

    def table(self) -> str:
        """An aligned plain-text table (one line per step, then the total)."""
        if not self.rows:
            return "no steps"
        width = max(len("step"), *(len(r[0]) for r in self.rows))
        status_width = max(len("status"), *(len(r[1]) for r in self.rows))
        lines = [f"{'step':<{width}}  {'status':<{status_width}}  time",
                 f"{'-' * width}  {'-' * status_width}  ----"]
        lines += [f"{step:<{width}}  {status:<{status_width}}  {_duration(seconds)}"
                  for step, status, seconds in self.rows]
        lines.append(f"{'total':<{width}}  {'':<{status_width}}  {_duration(sum(r[2] for r in self.rows))}")
        return "\n".join(lines)


def _papermill(notebook: str, executed: Path, parameters: Mapping[str, Any], cwd: Path, log_output: bool) -> None:
    """Execute ``notebooks/<notebook>`` into ``executed``; papermill's exceptions propagate."""
    import papermill

    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS_DIR / notebook), str(executed), parameters=dict(parameters),
                               cwd=str(cwd), log_output=log_output, **PAPERMILL_OPTIONS)


def torchrun_command(config, preset: str, nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m dlde.train ...`` for a
    :class:`~dlde.train.TrainConfig`: ``--preset`` plus every field that differs from the preset.

    Raises:
        ValueError: a field is None where the preset has a value (no flag can express it).
    """
    import dataclasses

    from dlde.train import PRESETS

    base = PRESETS[preset]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dlde.train", "--preset", preset]
    for field in dataclasses.fields(config):
        value, default = getattr(config, field.name), getattr(base, field.name)
        if value == default:
            continue
        if value is None:
            raise ValueError(f"{field.name}=None cannot be passed to torchrun over preset {preset!r} ({default!r})")
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            command += [flag, "true" if value else "false"]
        elif isinstance(value, (tuple, list)):
            command += [flag, *map(str, value)]
        else:
            command += [flag, str(value)]
    return command


def _torchrun(config, preset: str, nproc: int, executed: Path, cwd: Path, step: Step) -> None:
    """Train ``config`` with ``nproc`` processes; its output goes next to the executed notebook."""
    import subprocess

    log = executed.with_name(f"{executed.stem}.torchrun.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as file:
        code = subprocess.run(torchrun_command(config, preset, nproc), cwd=cwd, stdout=file,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise NotebookFailed(step, log, f"torchrun with {nproc} processes exited with {code}: {tail[0][:300]}")


def _failure_reason(error: Exception) -> str:
    import papermill

    if isinstance(error, papermill.PapermillExecutionError):
        return f"{error.ename}: {error.evalue}"
    return f"{type(error).__name__}: {error}"  # the kernel died (e.g. out of memory) or did not start


def execute(plan: Plan, step: Step, *, log_output: bool = False, echo: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """Execute one notebook with papermill and return its results.json.

    A training notebook reports its epochs as they finish (:class:`EpochProgress`).

    Raises:
        NotebookFailed: the notebook raised, or wrote no results.json.
    """
    executed = plan.executed(step)
    out_dir = plan.out_dir(step)
    stale = out_dir / RESULTS_FILE
    for old in (stale, out_dir / STEP_FILE):  # a failure must not leave the previous numbers behind
        old.unlink(missing_ok=True)
    parameters = plan.parameters(step)
    watch = None
    if step.notebook == TRAIN_NOTEBOOK:
        run_dir = plan.run_dir(step.run)
        try:
            config = train_config(parameters)
            epochs = config.epochs
        except (ValueError, TypeError):  # a bad config: the notebook itself fails with the traceback
            config, epochs = None, None
        if config is not None:
            # The pipeline's run folder: an identical run is reused (resumed if unfinished; a finished
            # one only reloads), a run of another config is replaced, as figures.yaml now asks.
            state = run_state(run_dir, config.to_dict())
            if state in ("complete", "partial"):
                parameters["RESUME"] = True
            elif state == "changed":
                overrides = json.loads(parameters.get("OVERRIDES_JSON", notebook_defaults()["OVERRIDES_JSON"]))
                parameters["OVERRIDES_JSON"] = json.dumps({**overrides, "overwrite": True, "resume": False})
                parameters["RESUME"] = False
        resumed = parameters.get("RESUME", notebook_defaults()["RESUME"])
        done_before = len(_read_rows(run_dir / "metrics.jsonl")) if resumed else 0
        if epochs is not None and step.nproc > 1 and run_state(run_dir, config.to_dict()) != "complete":
            # Data-parallel: torchrun trains the run, then the notebook only reloads the finished run.
            overrides = json.loads(parameters.get("OVERRIDES_JSON", notebook_defaults()["OVERRIDES_JSON"]))
            launched = train_config(parameters | {"RESUME": bool(resumed)})
            with EpochProgress(run_dir, epochs, step.run, done_before=done_before, echo=echo):
                _torchrun(launched, parameters.get("PRESET", notebook_defaults()["PRESET"]), step.nproc, executed,
                          plan.root, step)
            parameters["RESUME"] = True
            parameters["OVERRIDES_JSON"] = json.dumps({k: v for k, v in overrides.items()
                                                       if k not in ("overwrite", "resume")})
        elif epochs is not None:
            watch = EpochProgress(run_dir, epochs, step.run, done_before=done_before, echo=echo)
    try:
        if watch is None:
            _papermill(step.notebook, executed, parameters, plan.root, log_output)
        else:
            with watch:
                _papermill(step.notebook, executed, parameters, plan.root, log_output)
    except Exception as error:
        raise NotebookFailed(step, executed, _failure_reason(error)) from None
    if not stale.exists():
        raise NotebookFailed(step, executed, f"it wrote no {stale}")
    record = {"run": step.run, "notebook": step.notebook, "parameters": _jsonable(step.parameters)}
    (out_dir / STEP_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return read_results(out_dir)


def _markdown_value(value: Any) -> str:
    return f"`{json.dumps(value)}`" if isinstance(value, str) else f"`{value}`"


def finished(plan: Plan) -> list[tuple[Step, dict[str, Any], dict[str, Any]]]:
    """``(step, results, record)`` of every step of the file that has finished (on disk).

    ``record`` holds the parameters the step ran with; with ``--only`` the other steps'
    records come from earlier pipeline runs. A step that failed (or never ran) has neither
    file: :func:`execute` removes both before it starts.
    """
    found = []
    for step in plan.all_steps:
        out_dir = plan.out_dir(step)
        if (out_dir / RESULTS_FILE).exists() and (out_dir / STEP_FILE).exists():
            found.append((step, read_results(out_dir), json.loads((out_dir / STEP_FILE).read_text())))
    return found


def _sweep_index_lines(plan: Plan) -> list[str]:
    """The ``Sweeps`` section of index.md: every aggregated sweep in ``<figures_dir>/ablations``."""
    from dlde.analysis.aggregate import SWEEP_RECORD_SUFFIX

    folder = plan.figures_dir / ABLATIONS_FOLDER
    records = sorted(folder.glob(f"*{SWEEP_RECORD_SUFFIX}")) if folder.is_dir() else []
    if not records:
        return []
    lines = ["", "## Sweeps (`python -m dlde.pipeline --sweeps`, `make ablations`)", "",
             "Mean ± sd and 95 % t-interval over seeds; every arm's runs are listed in the `.json`.", "",
             "| sweep | table | figure | base | arms | seeds |", "|---|---|---|---|---|---|"]
    for path in records:
        record = json.loads(path.read_text())
        name, parameters = record["sweep"], record.get("parameters", {})
        base = ", ".join(f"{k}={_markdown_value(v)}" for k, v in (parameters.get("base") or {}).items()) or "defaults"
        arms = parameters.get("grid") or parameters.get("arms") or {}
        arms_text = "; ".join(f"{k}: {_markdown_value(v)}" for k, v in arms.items())
        seeds = ", ".join(str(s) for s in parameters.get("seeds", []))
        lines.append(f"| {name} | [{name}.md]({ABLATIONS_FOLDER}/{name}.md) ([csv]({ABLATIONS_FOLDER}/{name}.csv)) "
                     f"| [{name}.png]({ABLATIONS_FOLDER}/{name}.png) ([pdf]({ABLATIONS_FOLDER}/{name}.pdf)) "
                     f"| {base} | {arms_text} | {seeds} |")
    return lines


def write_index(plan: Plan) -> Path:
    """``figures/index.md``: every current figure with its run, notebook and parameters, the
    steps whose figures are not current (failed or not run), and the aggregated sweeps."""
    lines = ["# Figures", "",
             "Written by `python -m dlde.pipeline`; edit `figures.yaml` and rerun it rather than this file.",
             "Every figure exists as PNG and PDF. Parameters not listed keep the notebook's defaults; "
             "`RUN_DIR`, `FIGURES_DIR`, `FIGURE_PREFIX` and `OUT_DIR` are set by the pipeline.", "",
             "| figure | run | notebook | executed copy | parameters |", "|---|---|---|---|---|"]
    done = finished(plan)
    for step, results, record in done:
        parameters = ", ".join(
            f"{key}={_markdown_value(plan.display(value) if key in PATH_PARAMETERS and value else value)}"
            for key, value in record["parameters"].items()) or "defaults"
        for name in results.get("figures", []):
            lines.append(f"| [{name}]({name}.png) ([pdf]({name}.pdf)) | {step.run} | "
                         f"`notebooks/{step.notebook}` | `{plan.display(plan.executed(step))}` | {parameters} |")
    current = {(step.run, step.notebook) for step, _, _ in done}
    missing = [step for step in plan.all_steps if (step.run, step.notebook) not in current]
    if missing:
        lines += ["", "## Not current", "",
                  "These steps failed or have not run: their figures (if any are left in this folder) are "
                  "not listed above and are not current. An executed copy holds the traceback.", "",
                  "| run | notebook | executed copy |", "|---|---|---|"]
        lines += [f"| {step.run} | `notebooks/{step.notebook}` | `{plan.display(plan.executed(step))}` |"
                  for step in missing]
    lines += _sweep_index_lines(plan)
    plan.figures_dir.mkdir(parents=True, exist_ok=True)
    path = plan.figures_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_metrics_table(plan: Plan) -> Path:
    """``figures/metrics.md``: final COCO AP, losses and training time of each trained run."""
    lines = ["| run | model | preset | epochs | AP | AP50 | AP75 | val loss | train time (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for step, r, _ in finished(plan):
        if step.notebook == TRAIN_NOTEBOOK:
            lines.append(f"| {step.run} | {r.get('model', '–')} | {r.get('preset', '–')} | {r.get('epochs')} | "
                         f"{_cell(r.get('AP'))} | {_cell(r.get('AP50'))} | {_cell(r.get('AP75'))} | "
                         f"{_cell(r.get('val_loss'))} | {_cell((r.get('train_time_s') or 0.0) / 60, 1)} |")
    plan.figures_dir.mkdir(parents=True, exist_ok=True)
    path = plan.figures_dir / "metrics.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_pipeline(plan: Plan, *, log_output: bool = False, threads: int | None = None,
                 summary: Summary | None = None) -> list[tuple[Step, dict[str, Any]]]:
    """Execute the plan's steps in order; then (also after a failure) write index.md and metrics.md.

    Args:
        plan: from :func:`make_plan`.
        log_output: stream the notebooks' outputs to the terminal.
        threads: ``OMP_NUM_THREADS`` of the kernels (None: torch's default). On a shared
            machine one thread per kernel avoids oversubscribed cores, which can make
            training many times slower.
        summary: collects each step's outcome and time (for the final table).

    Returns:
        ``(step, results)`` of each executed step.

    Raises:
        NotebookFailed: at the first failing notebook.
    """
    kernel_argv()  # fail before any work if the kernel is not this interpreter
    summary = summary if summary is not None else Summary()
    done: list[tuple[Step, dict[str, Any]]] = []
    environment = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    try:
        for index, step in enumerate(plan.steps, 1):
            label = f"[{index}/{len(plan.steps)}] {step.run}: {step.notebook}"
            print(f"{label} ...", flush=True)
            started = time.perf_counter()
            try:
                with _environment(environment):
                    results = execute(plan, step, log_output=log_output)
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


# ---------------------------------------------------------------------------------- sweeps
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
        return self.figures.figures_dir / ABLATIONS_FOLDER

    def run_dir(self, key: str) -> Path:
        return confined(self.sweeps_dir, key)

    def executed(self, key: str) -> Path:
        return self.run_dir(key) / TRAIN_NOTEBOOK

    def display(self, path: str | os.PathLike) -> str:
        return self.figures.display(path)

    def parameters(self, key: str, *, resume: bool) -> dict[str, Any]:
        """What is injected into ``01_train.ipynb`` for run ``key``."""
        run_dir = self.run_dir(key)
        values = {k: (str(self.figures._absolute(v)) if k in PATH_PARAMETERS and v else v)
                  for k, v in self.runs[key].parameters.items()}
        values.update(RESUME=resume, RUN_DIR=str(run_dir), FIGURES_DIR=str(run_dir / "figures"),
                      FIGURE_PREFIX="", OUT_DIR=str(run_dir / Path(TRAIN_NOTEBOOK).stem))
        return values


def _name_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_name_value(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def run_key(config: Mapping[str, Any], preset: str) -> str:
    """The folder of a resolved config under the sweeps folder: ``<preset>/<diffs>,seed=<seed>``.

    ``<diffs>`` are the fields that differ from the preset (sorted, ``name=value``), without
    those in :func:`not_identity`; equal configs get equal keys, whichever sweep asks.
    """
    from dlde.train import PRESETS

    base = PRESETS[preset].to_dict()
    diffs = [f"{name}={_name_value(value)}" for name, value in sorted(config.items())
             if name not in not_identity() and name != "seed" and value != base.get(name)]
    return f"{preset}/" + ",".join(diffs + [f"seed={config['seed']}"])


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    ignored = not_identity()
    return {key: value for key, value in config.items() if key not in ignored}


def _split_parameters(path: Path, where: str, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Notebook parameters (upper case) and TrainConfig fields (lower case) of a sweep entry."""
    from dlde.train import TrainConfig

    declared = _declared(TRAIN_NOTEBOOK)
    fields = set(TrainConfig.__dataclass_fields__)
    parameters, overrides = {}, {}
    for key, value in values.items():
        if key in SWEEP_MANAGED:
            raise ValueError(f"{path}: {where} sets {key!r}, which the sweep sets itself "
                             "(seeds come from 'seeds'; folders from runs_dir)")
        if key in declared:
            parameters[key] = value
        elif key in fields:
            overrides[key] = value
        else:
            raise ValueError(f"{path}: {where} has {key!r}, neither a parameter of {TRAIN_NOTEBOOK} "
                             f"{sorted(declared)} nor a TrainConfig field")
    return parameters, overrides


def _arms(path: Path, name: str, sweep: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Arm name -> its parameters: the named ``arms``, or every combination of ``grid``."""
    if "arms" in sweep:
        arms = sweep["arms"]
        if not isinstance(arms, Mapping) or not arms:
            raise ValueError(f"{path}: sweep {name!r}: 'arms' must map arm names to parameters")
        for arm, values in arms.items():
            _check_name(path, f"sweep {name!r} arm", arm)
            if not isinstance(values, Mapping):
                raise ValueError(f"{path}: sweep {name!r} arm {arm!r} must map parameters to values")
        return {arm: dict(values) for arm, values in arms.items()}
    grid = sweep["grid"]
    if not isinstance(grid, Mapping) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{path}: sweep {name!r}: 'grid' must map parameters to non-empty lists of values")
    keys = list(grid)
    arms = {}
    for combination in itertools.product(*(grid[k] for k in keys)):
        arm = ",".join(f"{k.lower()}={_name_value(v)}" for k, v in zip(keys, combination))
        arms[_check_name(path, f"sweep {name!r} arm", arm)] = dict(zip(keys, combination))
    return arms


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
    declared = config.get("sweeps") or {}
    if not declared:
        raise ValueError(f"{config_path}: no 'sweeps' section")
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise ValueError(f"--sweeps {unknown}: no such sweep in {config_path}; sweeps: {sorted(declared)}")
    check_parameters_cell(NOTEBOOKS_DIR / TRAIN_NOTEBOOK)  # its defaults decide every sweep run's config
    sweeps_dir = figures.runs_dir / SWEEPS_FOLDER
    sweeps, runs = [], {}
    for name in names or list(declared):
        sweep = declared[name]
        base_parameters, base_overrides = _split_parameters(config_path, f"sweep {name!r} base",
                                                            sweep.get("base") or {})
        arms = {}
        for arm, values in _arms(config_path, name, sweep).items():
            parameters, overrides = _split_parameters(config_path, f"sweep {name!r} arm {arm!r}", values)
            parameters = base_parameters | parameters
            keys = []
            for seed in sweep["seeds"]:
                values = dict(parameters, SEED=seed)
                extra = json.loads(values.get("OVERRIDES_JSON", "{}")) | base_overrides | overrides
                if tiny:
                    values.update({k: v for k, v in TINY_RUN.items() if k != "RESUME"})
                    values["DATA_ROOT"] = str(figures.runs_dir / "data")
                if extra:
                    values["OVERRIDES_JSON"] = json.dumps(extra, sort_keys=True)
                try:
                    resolved = train_config(values).to_dict()
                except (ValueError, TypeError) as error:
                    raise ValueError(f"{config_path}: sweep {name!r} arm {arm!r} seed {seed}: {error}") from None
                key = run_key(resolved, values.get("PRESET", notebook_defaults()["PRESET"]))
                confined(sweeps_dir, key)
                if key in runs and _identity(runs[key].config) != _identity(resolved):
                    raise ValueError(f"{config_path}: two different configs map to folder {key}")
                runs.setdefault(key, SweepRun(key, values, resolved))
                keys.append(key)
            arms[arm] = keys
        sweeps.append(Sweep(name, dict(sweep), arms))
    # Seed-major order: an interrupted sweep has every arm at about the same number of seeds.
    runs = dict(sorted(runs.items(), key=lambda item: item[1].parameters["SEED"]))
    return SweepPlan(figures, sweeps_dir, sweeps, runs)


def run_state(run_dir: Path, config: Mapping[str, Any]) -> str:
    """What a run folder holds for ``config``.

    Returns:
        ``"complete"`` (same config, last epoch written), ``"partial"`` (same config and a
        checkpoint to resume from), ``"changed"`` (another config), or ``"new"``.
    """
    record = run_dir / "config.json"
    if not record.exists():
        return "new"
    try:
        stored = json.loads(record.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "changed"
    if _identity(stored) != _identity(config):
        return "changed"
    rows = _read_rows(run_dir / "metrics.jsonl")
    if rows and int(rows[-1].get("epoch", 0)) >= int(config["epochs"]):
        return "complete"
    return "partial" if (run_dir / "checkpoint.pt").exists() else "new"


@dataclass(frozen=True)
class RunFailure:
    """A sweep run that failed: its folder, its executed notebook and why."""

    key: str
    executed: Path
    reason: str


def run_sweeps(plan: SweepPlan, *, force: bool = False, fail_fast: bool = False, log_output: bool = False,
               threads: int | None = None, summary: Summary | None = None,
               echo: Callable[[str], None] | None = None) -> list[RunFailure]:
    """Train every run of the plan that is not already complete, then aggregate each sweep.

    A complete run (same config, last epoch written) is skipped unless ``force``; a partial
    one resumes from its checkpoint; a run of another config (or any run with ``force``) is retrained
    in its folder with ``overwrite``, which replaces only the run's own files.
    After all runs (also after failures) every sweep is aggregated over its finished runs
    (:func:`dlde.analysis.aggregate.write_sweep`) and ``index.md`` is rewritten.

    Args:
        plan: from :func:`make_sweep_plan`.
        force: retrain complete runs too.
        fail_fast: stop at the first failed run.
        log_output: stream the notebooks' outputs.
        threads: ``OMP_NUM_THREADS`` of the kernels.
        summary: collects each run's outcome and time.
        echo: where progress lines go (default: print).

    Returns:
        The failed runs (empty when all succeeded).
    """
    from dlde.analysis.aggregate import write_sweep

    echo = echo or (lambda line: print(line, flush=True))
    summary = summary if summary is not None else Summary()
    environment = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    failures: list[RunFailure] = []
    keys = list(plan.runs)
    if keys:
        kernel_argv()
    try:
        for index, key in enumerate(keys, 1):
            run, run_dir = plan.runs[key], plan.run_dir(key)
            label = f"[{index}/{len(keys)}] {plan.display(run_dir)}"
            state = "changed" if force and run_dir.exists() else run_state(run_dir, run.config)
            if state == "complete":
                echo(f"{label}: complete, skipped")
                summary.add(key, "skipped", 0.0)
                continue
            resume = state == "partial"
            done_before = len(_read_rows(run_dir / "metrics.jsonl")) if resume else 0
            parameters = plan.parameters(key, resume=resume)
            if not resume and run_dir.exists():
                # A folder belongs to one run: the trainer replaces this folder's run files (overwrite) and
                # the notebook its outputs; nothing else in the folder is deleted.
                overrides = json.loads(parameters.get("OVERRIDES_JSON", notebook_defaults()["OVERRIDES_JSON"]))
                parameters["OVERRIDES_JSON"] = json.dumps({**overrides, "overwrite": True}, sort_keys=True)
            echo(f"{label}: {TRAIN_NOTEBOOK}, {'resuming after epoch ' + str(done_before) if resume else 'training'}"
                 f" ({run.epochs} epochs) ...")
            started = time.perf_counter()
            try:
                with _environment(environment), EpochProgress(run_dir, run.epochs, key, done_before=done_before,
                                                              echo=echo):
                    _papermill(TRAIN_NOTEBOOK, plan.executed(key), parameters, plan.figures.root, log_output)
                if run_state(run_dir, run.config) != "complete":
                    raise RuntimeError(f"the notebook finished but {run_dir / 'metrics.jsonl'} "
                                       f"lacks epoch {run.epochs}")
            except Exception as error:
                seconds = time.perf_counter() - started
                failure = RunFailure(key, plan.executed(key), _failure_reason(error))
                failures.append(failure)
                summary.add(key, "FAILED", seconds)
                echo(f"{label}: FAILED after {_duration(seconds)}: {failure.reason}\n"
                     f"  the traceback is in {failure.executed}")
                if fail_fast:
                    break
                continue
            seconds = time.perf_counter() - started
            summary.add(key, "resumed" if resume else "trained", seconds)
            echo(f"{label}: done in {_duration(seconds)}")
    finally:
        for sweep in plan.sweeps:
            arms = {arm: [plan.run_dir(k) for k in keys_] for arm, keys_ in sweep.arms.items()}
            written = write_sweep(sweep.name, arms, plan.ablations_dir, parameters=sweep.declaration,
                                  display_root=plan.figures.root)
            echo(f"sweep {sweep.name}: {plan.display(written['md'])}, {plan.display(written['png'])}")
        write_index(plan.figures)
    return failures


# ------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="figures.yaml", help="pipeline file (default: figures.yaml)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only the steps of this run or notebook (e.g. sigmoid, 03_embeddings, 03); repeatable")
    parser.add_argument("--sweeps", nargs="*", default=None, metavar="NAME",
                        help="run the sweeps of the config (all, or those named) instead of the figures")
    parser.add_argument("--force", action="store_true", help="with --sweeps: retrain runs that are already complete")
    parser.add_argument("--fail-fast", action="store_true", help="with --sweeps: stop at the first failed run")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny parameters, outputs under <runs_dir>/tiny (about a minute; used by the tests)")
    parser.add_argument("--runs-dir", default=None, help="overrides runs_dir of the config file")
    parser.add_argument("--figures-dir", default=None, help="overrides figures_dir of the config file")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads per notebook kernel (default: torch's choice); 1 helps on a busy machine")
    return parser


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
        if args.sweeps is not None:
            if args.only:
                raise ValueError("--only selects figure steps; with --sweeps name the sweeps instead")
            plan = make_sweep_plan(args.config, args.sweeps, tiny=args.tiny, runs_dir=args.runs_dir,
                                   figures_dir=args.figures_dir)
            failures = run_sweeps(plan, force=args.force, fail_fast=args.fail_fast, log_output=args.log_output,
                                  threads=args.threads, summary=summary)
            for failure in failures:
                print(f"FAILED {failure.key}: {failure.reason}\n  the traceback is in {failure.executed}",
                      file=sys.stderr, flush=True)
            print(f"tables and figures in {plan.ablations_dir}", flush=True)
            return finish(1 if failures else 0)
        if args.force or args.fail_fast:
            raise ValueError("--force and --fail-fast apply to --sweeps only")
        figure_plan = make_plan(args.config, tiny=args.tiny, only=args.only, runs_dir=args.runs_dir,
                                figures_dir=args.figures_dir)
        run_pipeline(figure_plan, log_output=args.log_output, threads=args.threads, summary=summary)
    except NotebookFailed as failure:
        print(f"FAILED {failure}\n  the traceback is in {failure.executed}", file=sys.stderr, flush=True)
        return finish(1)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"figures in {figure_plan.figures_dir} (index.md, metrics.md)")
    return finish(0)

