"""What the notebooks call: paths, the training config, figure saving, the base runs of ``05_few_shot`` and
``06_open_set`` (:func:`base_models`), and the numbers each notebook reports.

Each notebook ends by writing a small ``results.json`` whose content is defined by one of the
``*_results`` functions here, so tests and the pipeline can read the numbers back. What executes
the notebooks lives elsewhere: :mod:`.lock` (their committed parameters cells) and the pipeline
(:mod:`.plan`, :mod:`.execute`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlde.data.digits import make_digits_dataset
from dlde.files import atomic_write_text, jsonable
from dlde.plots.interactive import widget_canvas
from dlde.plots.plotting import save_figure
from dlde.protocols.base_runs import BaseModels, base_config, base_run_dir, prepare
from dlde.train import TrainConfig
from dlde.train.runs import RunFolder, describe_changes

RESULTS_FILE = "results.json"


#: Files that mark the project root (the repository): ``project_root`` walks up to them.
ROOT_MARKERS = ("figures.yaml", "pyproject.toml")
#: Environment variable naming the project root explicitly (wins over the walk up).
ROOT_ENV = "DLDE_PROJECT_ROOT"


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder relative notebook paths are relative to.

    In order: ``$DLDE_PROJECT_ROOT`` when set; else the nearest folder at or above ``start``
    (default: the working directory) holding ``figures.yaml`` or ``pyproject.toml``; else
    ``start`` itself. Never the location of the installed package: a notebook opened in
    JupyterLab (whose kernel runs in the notebook's folder, e.g. ``notebooks/``) and the same
    notebook run from the repository root resolve ``runs/dlde`` to the same folder, and a
    copy of the notebooks in another project writes into that project.

    Raises:
        FileNotFoundError: ``$DLDE_PROJECT_ROOT`` names a folder that does not exist.
    """
    explicit = os.environ.get(ROOT_ENV)
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"{ROOT_ENV}={explicit}: no such folder")
        return root
    start = Path.cwd() if start is None else Path(start).expanduser().resolve()
    for folder in (start, *start.parents):
        if any((folder / marker).is_file() for marker in ROOT_MARKERS):
            return folder
    return start


def project_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``path`` as an absolute path; a relative one is taken relative to the project root.

    Args:
        path: absolute, or relative to the project root.
        root: the project root; None finds it with :func:`project_root` (working directory,
            ``$DLDE_PROJECT_ROOT``), never from where the ``dlde`` package is installed.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = Path(root).expanduser().resolve() if root is not None else project_root()
    return (base / path).resolve()


def output_dirs(run_dir: str | os.PathLike, figures_dir: str, out_dir: str, stem: str,
                root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The figures folder and the ``results.json`` folder of one notebook.

    Args:
        run_dir: the run folder (``RUN_DIR``).
        figures_dir: ``FIGURES_DIR``; ``""`` means ``RUN_DIR/figures``, so a notebook run by
            hand writes inside its run folder and only the pipeline writes ``figures/``.
        out_dir: ``OUT_DIR``; ``""`` means ``RUN_DIR/<stem>``.
        stem: the notebook's name without ``.ipynb`` (e.g. ``"01_train"``).
        root: see :func:`project_path`.

    Returns:
        ``(figures folder, results folder)``, absolute.
    """
    run = project_path(run_dir, root)
    return (project_path(figures_dir, root) if figures_dir else run / "figures",
            project_path(out_dir, root) if out_dir else run / stem)


def environment_summary() -> str:
    """One line naming the interpreter, where ``dlde`` is imported from and the project root,
    so a notebook shows which environment its kernel runs in."""
    package = Path(__file__).resolve().parents[1]
    return f"python: {sys.executable} (prefix {sys.prefix}) | dlde: {package} | project root: {project_root()}"


@dataclass
class Figures:
    """Saves figures of one notebook under stable names and displays them.

    Attributes:
        directory: output folder (PNG + PDF per figure).
        prefix: prepended to every name (e.g. ``"sigmoid_"``).
        interactive: display each figure as an ``ipympl`` widget (zoom, pan, 3-D rotation)
            instead of a static image; see :func:`dlde.plots.interactive.use_widgets`.
        names: the names saved so far, in order (for ``results.json``).
    """

    directory: Path
    prefix: str = ""
    interactive: bool = False
    names: list[str] = field(default_factory=list)

    def show(self, fig, name: str) -> None:
        """Display ``fig`` (in a notebook), save it as ``<prefix><name>.png/.pdf`` and close it.

        Interactive figures stay open (their widget keeps drawing them) after being saved.
        """
        full = f"{self.prefix}{name}"
        try:
            from IPython import get_ipython
            from IPython.display import display
            in_ipython = get_ipython() is not None
        except ImportError:  # plain Python without IPython: save only
            in_ipython = False
        if in_ipython and self.interactive:
            save_figure(fig, self.directory, full)  # closes it in pyplot; the widget keeps it
            display(widget_canvas(fig))
        else:
            if in_ipython:
                display(fig)
            save_figure(fig, self.directory, full)
        self.names.append(full)


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as ``out_dir/results.json`` (NaN becomes null) and return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    atomic_write_text(path, json.dumps(jsonable(results), indent=1) + "\n")
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
    per_image = {Path(d["path"]).name: len(d["scores"]) for d in detections}
    labels = (np.concatenate([np.asarray(d["labels"], dtype=np.int64) for d in detections]) if detections
              else np.zeros(0, np.int64))
    known = labels[labels >= 0]  # -1: flagged as an unknown object
    counts = np.bincount(known, minlength=len(class_names)) if len(known) else np.zeros(len(class_names), int)
    return {"images": len(detections), "detections": int(sum(per_image.values())),
            "detections_per_image": per_image,
            "mean_detections_per_image": float(np.mean(list(per_image.values()))) if per_image else 0.0,
            "detections_per_class": dict(zip(class_names, counts)), "unknown_detections": int((labels < 0).sum())}


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
    if run_config.get("dataset", "digits") != "digits":
        raise ValueError("demo images exist only for the digits dataset: set IMAGES_DIR to a folder of images")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("demo_*.png"):
        old.unlink()
    digits = TrainConfig.from_dict(run_config).dataset_settings()  # old flat records too
    skip = digits.digits_val_images
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_digits_dataset(scratch, **{**digits.arguments(), "train_images": 0, "val_images": skip + n})
        for index, source in enumerate(sorted(paths.val_images_dir.glob("*.png"))[skip:]):
            shutil.copyfile(source, folder / f"demo_{index:03d}.png")
    return folder


def _shown(path: Path) -> str:
    """``path`` as a notebook parameter would name it: relative to the project root when inside it."""
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def base_models(like: Mapping[str, Any], base_runs_dir: str | os.PathLike, heads: Sequence[str], *,
                seeds: Sequence[int], epochs: int | None = None) -> BaseModels:
    """:func:`dlde.protocols.base_runs.prepare` for ``05_few_shot`` and ``06_open_set``, refusing first, before
    anything trains, when a base run folder holds a run of other settings, with the notebook parameters
    that resolve it (``BASE_EPOCHS``, ``RUN_DIR``, ``BASE_RUNS_DIR``).

    ``make figures`` trains the base runs with ``BASE_EPOCHS = 8`` into ``runs/fewshot_base``, the folder
    the notebooks use by default with the epochs of ``RUN_DIR``'s run (16): without this check, opening
    either notebook with its defaults afterwards stopped on the first base run, naming neither parameter.

    Args:
        like: the configuration the base runs copy (the ``config`` of the run in ``RUN_DIR``).
        base_runs_dir: ``BASE_RUNS_DIR`` resolved.
        heads, seeds: the heads and base seeds (``HEADS``, ``BASE_SEEDS``).
        epochs: ``BASE_EPOCHS`` (None or 0: those of ``like``).

    Raises:
        FileExistsError: a base run folder holds a run of other settings; nothing was trained.
    """
    base_runs_dir = Path(base_runs_dir)
    overrides = {"epochs": int(epochs)} if epochs else {}
    taken = []
    for seed in seeds:
        for head in heads:
            config = base_config(head, base_run_dir(base_runs_dir, head, seed), like=like, seed=int(seed), **overrides)
            folder = RunFolder(config.run_dir)
            if folder.state(config) == "changed":
                try:
                    taken.append((folder.path, folder.config_changes(config)))
                except ValueError:  # not a run record
                    taken.append((folder.path, {}))
    if taken:
        raise FileExistsError(_base_runs_taken(taken, base_runs_dir))
    return prepare(like, base_runs_dir, heads, seeds=seeds, epochs=epochs or None)


def _base_runs_taken(taken: Sequence[tuple[Path, Mapping[str, tuple[Any, Any]]]], base_runs_dir: Path) -> str:
    """The refusal of :func:`base_models`: which folders hold which other settings, and the parameters to set."""
    changes: dict[str, tuple[Any, Any]] = {}
    for _, changed in taken:
        for key, value in changed.items():
            changes.setdefault(key, value)
    first = _shown(taken[0][0])
    holds = f"{first} and {len(taken) - 1} more base run folders hold base runs" if len(taken) > 1 else \
        f"{first} holds a base run"
    what = describe_changes(changes) if changes else "no run record"
    ways = []
    if set(changes) == {"epochs"}:
        ways.append(f"BASE_EPOCHS = {changes['epochs'][0]!r} to use the base runs already there")
    elif set(changes) - {"epochs"}:
        ways.append("RUN_DIR to the run they were trained from (the base runs copy its configuration)")
    suggested = _shown(base_runs_dir.parent / f"{base_runs_dir.name}_mine")
    ways.append(f'BASE_RUNS_DIR = "{suggested}" (a new folder) to train these base runs there')
    return (f"{holds} of other settings than this notebook asks for ({what}): set "
            + ", or ".join(ways) + f"; or delete {_shown(base_runs_dir)}. Nothing was trained.")
