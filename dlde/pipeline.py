"""The figure pipeline: train the runs of ``figures.yaml`` and execute the notebooks on them.

::

    python -m dlde.pipeline --config figures.yaml [--only NAME ...] [--tiny] [--threads N]
                            [--runs-dir DIR] [--figures-dir DIR] [--log-output]

``figures.yaml`` holds ``runs`` (run name -> parameters of ``notebooks/01_train.ipynb``) and
``notebooks`` (a list of ``{notebook, run, parameters}``). Each run is trained by executing
``01_train.ipynb`` into ``<runs_dir>/<run>/01_train.ipynb``; then every listed notebook is
executed with papermill into ``<runs_dir>/<run>/<notebook>``. A notebook writes its figures
(PNG + PDF) into the figures folder and its numbers into ``<runs_dir>/<run>/<stem>/results.json``.
Figures of the first run keep their plain names; those of any other run are prefixed with
the run's name (``sigmoid_train_curves``). At the end ``figures/index.md`` lists every figure
with its notebook and parameters, and ``figures/metrics.md`` tabulates the final metrics of
each run. The first failing notebook stops the pipeline with exit status 1 and the path of
the executed notebook holding the traceback.

``--tiny`` swaps in tiny parameters (preset ``tiny``, one epoch, a few images) and writes
everything under ``<runs_dir>/tiny/`` (figures in ``<runs_dir>/tiny/figures``), so it never
touches the real figures; the tests use it.

This module also holds the small helpers the notebooks share: :func:`project_path`,
:class:`Figures`, :func:`write_results`, :func:`demo_images` and the ``*_results`` functions
that define what each notebook's ``results.json`` contains.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TRAIN_NOTEBOOK = "01_train.ipynb"
KERNEL_NAME = "python3"  # the native ipykernel spec: resolves to this interpreter (see kernel_argv)
#: How every notebook is executed (``papermill.execute_notebook`` keywords). The kernel logs
#: errors only: its one start-up warning (unencrypted TCP on 127.0.0.1) would print once per
#: notebook; tracebacks still reach the executed notebook. The kernel is stopped at once when
#: the notebook is done, which saves the ~3 s a graceful shutdown takes after importing torch.
PAPERMILL_OPTIONS = {"kernel_name": KERNEL_NAME, "progress_bar": False,
                     "extra_arguments": ["--IPKernelApp.log_level=ERROR"], "shutdown_kernel": "immediate"}

#: Parameters the pipeline sets itself; figures.yaml may not set them.
MANAGED_PARAMETERS = ("RUN_DIR", "FIGURES_DIR", "FIGURE_PREFIX", "OUT_DIR")
#: Parameters holding paths: relative values in figures.yaml are relative to its folder.
PATH_PARAMETERS = ("RUN_DIR", "DATA_ROOT", "FIGURES_DIR", "OUT_DIR", "IMAGES_DIR")
#: ``--tiny``: parameters replaced in every training run / every notebook that declares them.
TINY_RUN = {"PRESET": "tiny", "EPOCHS": 1, "RESUME": False, "DETECTION_IMAGES": 4}
TINY_NOTEBOOK = {"MAX_IMAGES": 16, "DEMO_IMAGES": 4}
RESULTS_FILE = "results.json"
STEP_FILE = "pipeline_step.json"  # next to results.json: the parameters the pipeline injected


# ------------------------------------------------------------------------- notebook helpers
def project_path(path: str | os.PathLike) -> Path:
    """``path`` as an absolute path; a relative one is taken relative to the repository root.

    Notebooks run with their own folder as working directory in Jupyter and with the
    repository root under the pipeline; resolving against the root makes the default
    parameters (``runs/dlde``, ``figures``) mean the same folder in both. Outside a source
    checkout (no ``pyproject.toml`` next to the package) the working directory is used.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = Path(__file__).resolve().parents[1]
    base = root if (root / "pyproject.toml").exists() else Path.cwd()
    return (base / path).resolve()


@dataclass
class Figures:
    """Saves figures of one notebook under stable names and displays them.

    Attributes:
        directory: output folder (PNG + PDF per figure).
        prefix: prepended to every name (e.g. ``"sigmoid_"``).
        names: the names saved so far, in order (for ``results.json``).
    """

    directory: Path
    prefix: str = ""
    names: list[str] = field(default_factory=list)

    def show(self, fig, name: str) -> None:
        """Display ``fig`` (in a notebook), save it as ``<prefix><name>.png/.pdf`` and close it."""
        from .plotting import save_figure

        full = f"{self.prefix}{name}"
        try:
            from IPython import get_ipython
            from IPython.display import display
            if get_ipython() is not None:
                display(fig)
        except ImportError:  # plain Python without IPython: save only
            pass
        save_figure(fig, self.directory, full)
        self.names.append(full)


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as ``out_dir/results.json`` (NaN becomes null) and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    return path


def read_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` a notebook wrote into ``out_dir``."""
    return json.loads((Path(out_dir) / RESULTS_FILE).read_text())


def training_results(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers of ``01_train``: the last epoch's COCO AP and losses, and ``train_time_s``, the
    wall time of all epochs (training and evaluation, without start-up).

    Args:
        metrics: one dict per epoch, as in ``metrics.jsonl``.
    """
    if not metrics:
        raise ValueError("no finished epoch: nothing to report")
    last = metrics[-1]
    return {"epochs": int(last["epoch"]), "AP": last.get("AP"), "AP50": last.get("AP50"),
            "AP75": last.get("AP75"), "val_loss": last["val_loss"], "train_loss": last["train_loss"],
            "train_time_s": float(sum(row.get("time_s") or 0.0 for row in metrics)),
            "per_class_AP": last.get("per_class_AP", {})}


def _max_off_diagonal(cosines: np.ndarray) -> float:
    off = cosines[~np.eye(len(cosines), dtype=bool)]
    off = off[np.isfinite(off)]
    return float(off.max()) if off.size else float("nan")


def mean_drift_results(steps: np.ndarray, first_cosines: np.ndarray, last_cosines: np.ndarray,
                       kappa_history: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Numbers of ``02_mean_drift``.

    Args:
        steps: (E, C) degrees each mean moved per epoch (``analysis.angular_steps``).
        first_cosines: (C, C) cosines between the means before training.
        last_cosines: (C, C) cosines between the final means.
        kappa_history: (E+1, C) κ̂ per epoch.
        class_names: C names.

    Returns:
        ``total_drift_deg`` (class -> summed steps), ``mean_last_step_deg``,
        ``max_off_diagonal_cosine_first`` / ``_last`` and ``last_kappa`` (class -> κ̂).
    """
    steps, kappa = np.asarray(steps, dtype=np.float64), np.asarray(kappa_history, dtype=np.float64)
    names = list(class_names)
    return {"epochs": int(steps.shape[0]),
            "total_drift_deg": dict(zip(names, np.nansum(steps, axis=0))),
            "mean_last_step_deg": float(np.nanmean(steps[-1])) if np.isfinite(steps[-1]).any() else None,
            "max_off_diagonal_cosine_first": _max_off_diagonal(np.asarray(first_cosines)),
            "max_off_diagonal_cosine_last": _max_off_diagonal(np.asarray(last_cosines)),
            "last_kappa": dict(zip(names, kappa[-1]))}


def embedding_results(own: np.ndarray, nearest_other: np.ndarray, embedding_size: int) -> dict[str, Any]:
    """Numbers of ``03_embeddings`` from ``analysis.cosine_margins``.

    Returns:
        ``N`` (embeddings), ``embedding_size``, ``fraction_own_above_other`` (the anchors the
        means classify correctly), ``mean_own_cosine`` and ``mean_nearest_other_cosine``.
    """
    own, other = np.asarray(own, dtype=np.float64), np.asarray(nearest_other, dtype=np.float64)
    both = np.isfinite(own) & np.isfinite(other)
    return {"N": int(own.size), "embedding_size": int(embedding_size),
            "fraction_own_above_other": float(np.mean(own[both] > other[both])) if both.any() else None,
            "mean_own_cosine": float(np.nanmean(own)) if np.isfinite(own).any() else None,
            "mean_nearest_other_cosine": float(np.nanmean(other)) if np.isfinite(other).any() else None}


def inference_results(detections: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Numbers of ``04_inference``: images, detections per image (file -> count, by class)."""
    per_image = {Path(d["path"]).name: int(len(d["scores"])) for d in detections}
    labels = np.concatenate([np.asarray(d["labels"], dtype=np.int64) for d in detections]) if detections else []
    counts = np.bincount(labels, minlength=len(class_names)) if len(labels) else np.zeros(len(class_names), int)
    return {"images": len(detections), "detections": int(sum(per_image.values())),
            "detections_per_image": per_image,
            "mean_detections_per_image": float(np.mean(list(per_image.values()))) if per_image else 0.0,
            "detections_per_class": dict(zip(class_names, counts))}


def demo_images(folder: str | os.PathLike, n: int, run_config: Mapping[str, Any]) -> Path:
    """Write ``n`` digits canvases the run never saw into ``folder`` (its PNGs are replaced).

    The canvases follow the run's digits settings (classes, sizes, canvas size) and use only
    validation-pool digits; they are the canvases that come after the run's validation set,
    so they are new images, not copies of validation images.

    Args:
        folder: output folder.
        n: number of images.
        run_config: the run's training configuration (``Run.config``).

    Returns:
        ``folder``.
    """
    from .digits import make_digits_dataset

    if run_config.get("dataset", "digits") != "digits":
        raise ValueError("demo images exist only for the digits dataset: set IMAGES_DIR to a folder of images")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("demo_*.png"):
        old.unlink()
    skip = int(run_config["digits_val_images"])
    classes = run_config.get("digits_classes")
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_digits_dataset(
            scratch, seed=int(run_config["digits_seed"]), canvas_size=int(run_config["digits_canvas_size"]),
            digit_size=tuple(run_config["digits_size"]), digits_per_image=tuple(run_config["digits_per_image"]),
            train_images=0, val_images=skip + n, classes=None if classes is None else tuple(classes))
        for index, source in enumerate(sorted(paths.val_images_dir.glob("*.png"))[skip:]):
            shutil.copyfile(source, folder / f"demo_{index:03d}.png")
    return folder


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
        return self.runs_dir / run

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


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read figures.yaml and check its shape (unknown keys fail loudly)."""
    import yaml

    path = Path(path)
    config = yaml.safe_load(path.read_text()) or {}
    allowed = {"runs_dir", "figures_dir", "runs", "notebooks"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    runs = config.get("runs") or {}
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"{path}: 'runs' must map run names to training parameters")
    for entry in config.get("notebooks") or []:
        extra = sorted(set(entry) - {"notebook", "run", "parameters"})
        if extra or "notebook" not in entry or "run" not in entry:
            raise ValueError(f"{path}: each notebooks entry needs 'notebook' and 'run' "
                             f"(optional 'parameters'); got {dict(entry)}")
        if entry["run"] not in runs:
            raise ValueError(f"{path}: notebook {entry['notebook']} uses run {entry['run']!r}, "
                             f"which is not in runs {sorted(runs)}")
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
    root = config_path.parent

    def absolute(path) -> Path:  # an absolute path stays as it is
        return (root / Path(path).expanduser()).resolve()

    runs_root = absolute(runs_dir if runs_dir is not None else config.get("runs_dir", "runs"))
    if tiny:
        runs_root = runs_root / "tiny"
        figures = absolute(figures_dir) if figures_dir is not None else runs_root / "figures"
    else:
        figures = absolute(figures_dir if figures_dir is not None else config.get("figures_dir", "figures"))

    run_names = list(config["runs"])
    prefixes = {name: "" if index == 0 else f"{name}_" for index, name in enumerate(run_names)}
    entries = [(name, TRAIN_NOTEBOOK, dict(config["runs"][name] or {})) for name in run_names]
    entries += [(e["run"], e["notebook"], dict(e.get("parameters") or {})) for e in config.get("notebooks") or []]

    steps, seen = [], set()
    for run, notebook, parameters in entries:
        if (run, notebook) in seen:
            raise ValueError(f"{config_path}: {notebook} appears twice for run {run!r}; "
                             "add another run to run it with other parameters")
        seen.add((run, notebook))
        source = NOTEBOOKS_DIR / notebook
        if not source.exists():
            raise FileNotFoundError(f"{config_path}: notebook {source} does not exist")
        declared = notebook_parameters(source)
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
        steps.append(Step(run, notebook, parameters, prefixes[run]))

    if not only:
        return Plan(root, runs_root, figures, steps, steps)
    unmatched = sorted(name for name in only if not any(name in step.names for step in steps))
    if unmatched:
        raise ValueError(f"--only {unmatched} matches no run or notebook; runs: {run_names}, "
                         f"notebooks: {sorted({step.stem for step in steps})}")
    return Plan(root, runs_root, figures, [step for step in steps if step.names & set(only)], steps)


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


def execute(plan: Plan, step: Step, *, log_output: bool = False) -> dict[str, Any]:
    """Execute one notebook with papermill and return its results.json.

    Raises:
        NotebookFailed: the notebook raised, or wrote no results.json.
    """
    import papermill

    executed = plan.executed(step)
    executed.parent.mkdir(parents=True, exist_ok=True)
    out_dir = plan.out_dir(step)
    stale = out_dir / RESULTS_FILE
    stale.unlink(missing_ok=True)  # a failure must not leave the previous numbers behind
    try:
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / step.notebook), str(executed), parameters=plan.parameters(step),
            cwd=str(plan.root), log_output=log_output, **PAPERMILL_OPTIONS)
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(step, executed, f"{error.ename}: {error.evalue}") from None
    except Exception as error:  # the kernel died (e.g. out of memory) or did not start
        raise NotebookFailed(step, executed, f"{type(error).__name__}: {error}") from error
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
    records come from earlier pipeline runs.
    """
    found = []
    for step in plan.all_steps:
        out_dir = plan.out_dir(step)
        if (out_dir / RESULTS_FILE).exists() and (out_dir / STEP_FILE).exists():
            found.append((step, read_results(out_dir), json.loads((out_dir / STEP_FILE).read_text())))
    return found


def write_index(plan: Plan) -> Path:
    """``figures/index.md``: every figure with its run, notebook and parameters."""
    lines = ["# Figures", "",
             "Written by `python -m dlde.pipeline`; edit `figures.yaml` and rerun it rather than this file.",
             "Every figure exists as PNG and PDF. Parameters not listed keep the notebook's defaults; "
             "`RUN_DIR`, `FIGURES_DIR`, `FIGURE_PREFIX` and `OUT_DIR` are set by the pipeline.", "",
             "| figure | run | notebook | executed copy | parameters |", "|---|---|---|---|---|"]
    for step, results, record in finished(plan):
        parameters = ", ".join(
            f"{key}={_markdown_value(plan.display(value) if key in PATH_PARAMETERS and value else value)}"
            for key, value in record["parameters"].items()) or "defaults"
        for name in results.get("figures", []):
            lines.append(f"| [{name}]({name}.png) ([pdf]({name}.pdf)) | {step.run} | "
                         f"`notebooks/{step.notebook}` | `{plan.display(plan.executed(step))}` | {parameters} |")
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


def run_pipeline(plan: Plan, *, log_output: bool = False, threads: int | None = None
                 ) -> list[tuple[Step, dict[str, Any]]]:
    """Execute the plan's steps in order; then (also after a failure) write index.md and metrics.md.

    Args:
        plan: from :func:`make_plan`.
        log_output: stream the notebooks' outputs to the terminal.
        threads: ``OMP_NUM_THREADS`` of the kernels (None: torch's default). On a shared
            machine one thread per kernel avoids oversubscribed cores, which can make
            training many times slower.

    Returns:
        ``(step, results)`` of each executed step.

    Raises:
        NotebookFailed: at the first failing notebook.
    """
    kernel_argv()  # fail before any work if the kernel is not this interpreter
    done: list[tuple[Step, dict[str, Any]]] = []
    environment = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
    try:
        for index, step in enumerate(plan.steps, 1):
            label = f"[{index}/{len(plan.steps)}] {step.run}: {step.notebook}"
            print(f"{label} ...", flush=True)
            started = time.perf_counter()
            with _environment(environment):
                results = execute(plan, step, log_output=log_output)
            done.append((step, results))
            print(f"{label} done in {time.perf_counter() - started:.1f} s "
                  f"({len(results.get('figures', []))} figures)", flush=True)
    finally:
        write_index(plan)
        write_metrics_table(plan)
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="figures.yaml", help="pipeline file (default: figures.yaml)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only the steps of this run or notebook (e.g. sigmoid, 03_embeddings, 03); repeatable")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny parameters, outputs under <runs_dir>/tiny (about a minute; used by the tests)")
    parser.add_argument("--runs-dir", default=None, help="overrides runs_dir of the config file")
    parser.add_argument("--figures-dir", default=None, help="overrides figures_dir of the config file")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    parser.add_argument("--threads", type=int, default=None,
                        help="OpenMP threads per notebook kernel (default: torch's choice); 1 helps on a busy machine")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        plan = make_plan(args.config, tiny=args.tiny, only=args.only, runs_dir=args.runs_dir,
                         figures_dir=args.figures_dir)
        run_pipeline(plan, log_output=args.log_output, threads=args.threads)
    except NotebookFailed as failure:
        print(f"FAILED {failure}\n  the traceback is in {failure.executed}", file=sys.stderr, flush=True)
        print(f"total wall time {time.perf_counter() - started:.1f} s", flush=True)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"figures in {plan.figures_dir} (index.md, metrics.md)")
    print(f"total wall time {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
