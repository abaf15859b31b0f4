"""The schema of ``figures.yaml`` and the plan of the figure pipeline: which notebooks run, in
which order, with which parameters, and where each writes.

``figures.yaml`` holds ``runs`` (run name -> parameters of ``notebooks/01_train.ipynb``),
``notebooks`` (a list of ``{notebook, run, sweeps, parameters}``), ``sweeps`` (planned by
:mod:`.sweeps`) and ``slurm`` (the jobs of ``--executor slurm``: :mod:`.executors`). A notebook
entry that names ``sweeps`` reads their runs (the pipeline trains them before it executes the
notebook) and may omit ``run``. :func:`load_config` checks its shape;
:func:`make_plan` turns it into :class:`Step` s of a :class:`Plan`.
"""
from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlde.reports.sweeps import ABLATIONS_FOLDER

from .lock import NOTEBOOKS_DIR, TRAIN_NOTEBOOK, check_parameters_cell, declared

#: A run's key in figures.yaml (not a notebook parameter): train it under torchrun with N processes.
NPROC_KEY = "nproc"
#: Parameters the pipeline sets itself; figures.yaml may not set them.
MANAGED_PARAMETERS = ("RUN_DIR", "FIGURES_DIR", "FIGURE_PREFIX", "OUT_DIR")
#: Parameters a notebook that reads sweeps declares and the pipeline sets: the pipeline file, the
#: ``runs_dir`` its sweeps were run with (``--runs-dir``) and whether they are the tiny ones (``--tiny``).
SWEEP_PARAMETERS = ("CONFIG", "RUNS_DIR", "TINY")
#: Parameters holding paths: relative values in figures.yaml are relative to its folder.
PATH_PARAMETERS = ("RUN_DIR", "DATA_ROOT", "FIGURES_DIR", "OUT_DIR", "IMAGES_DIR")
#: ``--tiny``: parameters replaced in every training run / every notebook that declares them.
TINY_RUN = {"PRESET": "tiny", "EPOCHS": 1, "RESUME": False, "DETECTION_IMAGES": 4}
TINY_NOTEBOOK = {"MAX_IMAGES": 16, "DEMO_IMAGES": 4, "SHOTS": "1,2", "DRAWS": 2, "FINETUNE_STEPS": 2, "BASE_EPOCHS": 1,
                 "IMPRINT_CLASS": 1, "IMPRINT_SHOTS": 2, "STREAM_BATCHES": 60}  # the tiny preset's classes are 0-2
STEP_FILE = "pipeline_step.json"  # next to results.json: the parameters the pipeline injected
#: Names of runs, sweeps and arms: they become folder names, so no separators and no leading dot.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")
#: The top-level keys of figures.yaml, and those of one sweep.
CONFIG_KEYS = ("runs_dir", "figures_dir", "runs", "notebooks", "sweeps", "slurm")
SWEEP_KEYS = ("base", "grid", "arms", "seeds")
NOTEBOOK_KEYS = ("notebook", "run", "sweeps", "parameters")


def check_name(path: Path, kind: str, name: Any) -> str:
    """``name`` when it is a safe folder name (:data:`SAFE_NAME`); a ValueError naming ``path`` otherwise."""
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


@dataclass(frozen=True)
class Step:
    """One notebook execution of the pipeline."""

    run: str
    notebook: str  # file name inside notebooks/
    parameters: dict[str, Any]  # as given in figures.yaml (plus --tiny), before paths are added
    prefix: str
    nproc: int = 1  # a training run: processes of its torchrun (1: trained inside the notebook)
    sweeps: tuple[str, ...] = ()  # the sweeps whose runs the notebook reads (trained before it runs)

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
    config: Path  # figures.yaml
    tiny: bool  # --tiny: runs_dir ends in tiny/

    @property
    def sweeps_runs_dir(self) -> Path:
        """``runs_dir`` as :func:`~dlde.pipeline.sweeps.make_sweep_plan` takes it (``--tiny`` adds ``tiny/``)."""
        return self.runs_dir.parent if self.tiny else self.runs_dir

    @property
    def ablations_dir(self) -> Path:
        return self.figures_dir / ABLATIONS_FOLDER

    def run_dir(self, run: str) -> Path:
        return confined(self.runs_dir, run)

    def executed(self, step: Step) -> Path:
        return self.run_dir(step.run) / step.notebook

    def out_dir(self, step: Step) -> Path:
        return self.run_dir(step.run) / step.stem

    def parameters(self, step: Step) -> dict[str, Any]:
        """Everything injected into the notebook: the step's parameters with absolute paths (and,
        for a notebook that reads sweeps, where they are: :data:`SWEEP_PARAMETERS`)."""
        values = self.absolute_paths(step.parameters)
        values.update(RUN_DIR=str(self.run_dir(step.run)), FIGURES_DIR=str(self.figures_dir),
                      FIGURE_PREFIX=step.prefix, OUT_DIR=str(self.out_dir(step)))
        if step.sweeps:
            values.update(self.sweep_parameters())
        return values

    def sweep_parameters(self) -> dict[str, Any]:
        """:data:`SWEEP_PARAMETERS` of a notebook that reads this file's sweeps."""
        return dict(zip(SWEEP_PARAMETERS, (str(self.config), str(self.sweeps_runs_dir), self.tiny)))

    def absolute_paths(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """``parameters`` with every non-empty path parameter made absolute (relative to the config folder)."""
        return {key: (str(self._absolute(value)) if key in PATH_PARAMETERS and value else value)
                for key, value in parameters.items()}

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


# --------------------------------------------------------------------------- figures.yaml
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
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    _check_runs(path, config)
    _check_sweeps(path, config.get("sweeps") or {})
    _check_notebooks(path, config.get("notebooks") or [], config.get("runs") or {}, config.get("sweeps") or {})
    return config


def _check_runs(path: Path, config: Mapping[str, Any]) -> None:
    runs = config.get("runs") or {}
    if not isinstance(runs, Mapping) or (not runs and not config.get("sweeps")):
        raise ValueError(f"{path}: 'runs' must map run names to training parameters")
    for name, parameters in runs.items():
        check_name(path, "run", name)
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"{path}: run {name!r} must map parameters to values, got {parameters!r}")


def _check_notebooks(path: Path, entries: Sequence[Any], runs: Mapping[str, Any], sweeps: Mapping[str, Any]) -> None:
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: each notebooks entry must be a mapping, got {entry!r}")
        extra = sorted(set(entry) - set(NOTEBOOK_KEYS))
        if extra or "notebook" not in entry or ("run" not in entry and "sweeps" not in entry):
            raise ValueError(f"{path}: each notebooks entry needs 'notebook' and 'run' or 'sweeps' "
                             f"(optional 'parameters'); got {dict(entry)}")
        if "run" in entry and entry["run"] not in runs:
            raise ValueError(f"{path}: notebook {entry['notebook']} uses run {entry['run']!r}, "
                             f"which is not in runs {sorted(runs)}")
        names = entry.get("sweeps", [])
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or ("sweeps" in entry and not names)):
            raise ValueError(f"{path}: notebook {entry['notebook']}: 'sweeps' must list sweep names, got {names!r}")
        unknown = [name for name in names if name not in sweeps]
        if unknown:
            raise ValueError(f"{path}: notebook {entry['notebook']} reads sweeps {unknown}, "
                             f"which are not in sweeps {sorted(sweeps)}")


def _check_sweeps(path: Path, sweeps: Any) -> None:
    if not isinstance(sweeps, Mapping):
        raise ValueError(f"{path}: 'sweeps' must map sweep names to {{base, grid | arms, seeds}}")
    for name, sweep in sweeps.items():
        check_name(path, "sweep", name)
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


# ----------------------------------------------------------------------------------- the plan
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
    entries = [(name, TRAIN_NOTEBOOK, dict(config["runs"][name] or {}), ()) for name in run_names]
    # A notebook that reads sweeps only (no run) writes into <runs_dir>/<its stem>.
    entries += [(e.get("run", Path(e["notebook"]).stem), e["notebook"], dict(e.get("parameters") or {}),
                 tuple(e.get("sweeps", ()))) for e in config.get("notebooks") or []]

    steps, seen = [], set()
    for run, notebook, parameters, sweeps in entries:
        nproc = parameters.pop(NPROC_KEY, 1) if notebook == TRAIN_NOTEBOOK else 1
        if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
            raise ValueError(f"{config_path}: run {run!r}: {NPROC_KEY} must be a positive integer, got {nproc!r}")
        if (run, notebook) in seen:
            raise ValueError(f"{config_path}: {notebook} appears twice for run {run!r}; "
                             "add another run to run it with other parameters")
        seen.add((run, notebook))
        confined(runs_root, run)
        _check_step_parameters(config_path, run, notebook, parameters, sweeps)
        if tiny:
            _make_tiny(notebook, parameters, runs_root)
        steps.append(Step(run, notebook, parameters, prefixes.get(run, ""), nproc, sweeps))

    if not only:
        return Plan(root, runs_root, figures, steps, steps, config_path, tiny)
    unmatched = sorted(name for name in only if not any(name in step.names for step in steps))
    if unmatched:
        raise ValueError(f"--only {unmatched} matches no run or notebook; runs: {run_names}, "
                         f"notebooks: {sorted({step.stem for step in steps})}")
    return Plan(root, runs_root, figures, [step for step in steps if step.names & set(only)], steps, config_path,
                tiny)


def _check_step_parameters(config_path: Path, run: str, notebook: str, parameters: Mapping[str, Any],
                           sweeps: Sequence[str]) -> None:
    """The notebook exists, its parameters cell is the committed one, and it declares ``parameters``
    (and, when it reads ``sweeps``, :data:`SWEEP_PARAMETERS`)."""
    source = NOTEBOOKS_DIR / notebook
    if not source.exists():
        raise FileNotFoundError(f"{config_path}: notebook {source} does not exist")
    check_parameters_cell(source)  # a notebook edited in Lab cannot change what the pipeline computes
    managed = sorted(set(parameters) & set(MANAGED_PARAMETERS + (SWEEP_PARAMETERS if sweeps else ())))
    if managed:
        raise ValueError(f"{config_path}: {managed} of {notebook} (run {run!r}) are set by the pipeline; "
                         "use runs_dir / figures_dir (and --tiny) instead")
    lacking = [name for name in SWEEP_PARAMETERS if sweeps and name not in declared(notebook)]
    if lacking:
        raise ValueError(f"{config_path}: {notebook} reads sweeps {list(sweeps)} but declares no {lacking}")
    unknown = sorted(set(parameters) - set(declared(notebook)))
    if unknown:
        raise ValueError(f"{config_path}: {notebook} (run {run!r}) has no parameters {unknown}; "
                         f"it declares {sorted(declared(notebook))}")


def notebook_values(notebook: str, pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``--notebook``'s ``-p NAME VALUE`` pairs as parameter values: a ``str`` parameter takes the
    text as it is, any other a Python literal (``4``, ``0.5``, ``True``).

    Raises:
        FileNotFoundError: the notebook does not exist.
        ValueError: its parameters cell is not the committed one, it declares no such parameter,
            the parameter is one of :data:`SWEEP_PARAMETERS` (``--config``, ``--runs-dir`` and
            ``--tiny`` set them), or the value is not a literal.
    """
    source = NOTEBOOKS_DIR / notebook
    if not source.exists():
        raise FileNotFoundError(f"notebook {source} does not exist")
    check_parameters_cell(source)
    values = {}
    for name, text in pairs:
        if name not in declared(notebook):
            raise ValueError(f"-p {name}: {notebook} has no such parameter; it declares {sorted(declared(notebook))}")
        if name in SWEEP_PARAMETERS:
            raise ValueError(f"-p {name}: set from --config, --runs-dir and --tiny")
        try:
            values[name] = text if declared(notebook)[name]["inferred_type_name"] == "str" else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"-p {name} {text!r}: not a Python literal") from None
    return values


def _make_tiny(notebook: str, parameters: dict[str, Any], runs_root: Path) -> None:
    """``--tiny``: replace the parameters of :data:`TINY_RUN` / :data:`TINY_NOTEBOOK` the notebook declares."""
    overrides = TINY_RUN if notebook == TRAIN_NOTEBOOK else TINY_NOTEBOOK
    parameters.update({k: v for k, v in overrides.items() if k in declared(notebook)})
    if notebook == TRAIN_NOTEBOOK:
        parameters["DATA_ROOT"] = str(runs_root / "data")


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
