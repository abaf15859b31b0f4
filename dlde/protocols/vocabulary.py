"""The large-vocabulary sweeps read back: per head and number of classes, what the runs measured.

The ``vocabulary_*`` sweeps of ``figures.yaml`` (the heads against C, the long-tail comparison over
seeds, the one-seed screen of DLDENet's levers) train the heads on ``glyphs`` datasets of several
sizes C (:mod:`dlde.data.glyphs`). Here their run folders become plain rows for
:mod:`dlde.plots.vocabulary_plots` and the tables of :mod:`dlde.reports.sweeps`: which runs are
missing, the mean and t-interval of every metric per arm with the arm's head and C, what the
tracked means did per epoch, the training images per class of a dataset, and detections of one run
per head for example canvases; :func:`describe_arms` and :func:`describe_tracking` say in one line
per arm what the runs show. Each function takes ``arm -> run folders`` (as a sweep plan gives
them), or what one of them returned, so it is tested on hand-made folders.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dlde.analysis.sweep_stats import min_angle_deg, run_summary, summarize_arms
from dlde.data.generated import GeneratedPaths
from dlde.data.long_tail import frequency
from dlde.inference.detect import detection_samples
from dlde.model.registry import HEADS
from dlde.tables import interval_cell
from dlde.train.runs import RunFolder, load_run, run_identity

Arms = Mapping[str, Sequence[str | os.PathLike]]  # arm name -> its run folders (one per seed)


def missing_runs(arms: Arms) -> list[Path]:
    """The run folders of ``arms`` that hold no finished run (:meth:`dlde.train.RunFolder.is_finished`), in order."""
    return [Path(d) for dirs in arms.values() for d in dirs if not RunFolder(d).is_finished()]


def missing_report(name: str, arms: Arms, root: str | os.PathLike | None = None) -> str:
    """One line per sweep saying how many of its runs are finished, then one per missing run
    folder (relative to ``root`` when inside it)."""
    missing = missing_runs(arms)
    total = sum(len(dirs) for dirs in arms.values())
    lines = [f"{name}: {total - len(missing)} of {total} runs finished"]
    for path in missing:
        shown = path.resolve()
        if root is not None and Path(root).resolve() in shown.parents:
            shown = shown.relative_to(Path(root).resolve())
        lines.append(f"  missing: {shown}")
    return "\n".join(lines)


def _head_and_classes(run_dir: Path) -> tuple[str, int]:
    """``(head, C)`` of a run: its model and its number of classes."""
    record = RunFolder(run_dir).record()
    return str(record["config"]["model"]), len(record["class_names"])


def _head_options(run_dir: Path) -> dict[str, Any]:
    """The options of a run's head (defaults resolved), e.g. ``embedding_size``, ``classifier_init``."""
    identity = run_identity(RunFolder(run_dir).saved_config())
    head = HEADS.get(identity.get("model"))
    return {f.name: identity[f.name] for f in fields(head.Options)} if head is not None else {}


def arm_rows(arms: Arms) -> list[dict[str, Any]]:
    """Per arm with a finished run, :func:`dlde.analysis.sweep_stats.summarize_arms` over its finished
    runs, with its ``head`` (the model) and ``classes`` (C) added; arms without one are left out.

    Returns:
        Rows in the order of ``arms``: ``arm``, ``n``, ``head``, ``classes``, the options of the
        head (``embedding_size``, ``classifier_init``, ...: those of the arm's first finished run)
        and per metric ``m`` ``m_mean``, ``m_sd``, ``m_low``, ``m_high`` (APr/APc/APf and
        ``epoch_time_s`` when the runs have them).
    """
    finished = {arm: [Path(d) for d in dirs if RunFolder(d).is_finished()] for arm, dirs in arms.items()}
    finished = {arm: dirs for arm, dirs in finished.items() if dirs}
    rows = []
    for row in summarize_arms({arm: [run_summary(d) for d in dirs] for arm, dirs in finished.items()}):
        dirs = finished[row["arm"]]
        head, classes = _head_and_classes(dirs[0])
        rows.append({"arm": row["arm"], "n": row["n"], "head": head, "classes": classes, **_head_options(dirs[0]),
                     **row})
    return rows


def describe_arms(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("AP", "APr", "APc", "APf")) -> list[str]:
    """One line per row of :func:`arm_rows`: the arm, its seeds and each metric's mean and t-interval
    (:func:`dlde.tables.interval_cell`; one seed has none), e.g.
    ``C=1000,dlde (3 seeds): AP 0.114 [0.055, 0.173], APr 0.000 [0.000, 0.000], ...``. A metric the
    arm lacks (NaN) is left out."""
    lines = []
    for row in rows:
        cells = [f"{metric} {interval_cell({k: row.get(f'{metric}_{k}', math.nan) for k in ('mean', 'low', 'high')})}"
                 for metric in metrics if math.isfinite(row.get(f"{metric}_mean", math.nan))]
        seeds = f"{row['n']} seed{'s' if row['n'] != 1 else ''}"
        lines.append(f"{row['arm']} ({seeds}): {', '.join(cells) or 'no metric'}")
    return lines


def train_annotations(run_dir: str | os.PathLike) -> Path:
    """The training annotation file of a run's dataset: the generated layout under its
    ``data_root`` (digits, glyphs), or its ``train_annotations`` (COCO, LVIS)."""
    config = load_run(run_dir).config
    if config.get("dataset") == "coco":
        return Path(config["train_annotations"])
    return GeneratedPaths.under(Path(config["data_root"])).train_annotations


def training_sets(arms: Arms) -> dict[int, Path]:
    """Number of classes -> the training annotation file of the runs with that many classes
    (:func:`train_annotations` of the first run folder holding a record, finished or not), in
    increasing C; the file itself may be missing."""
    found: dict[int, Path] = {}
    for run_dir in (Path(d) for dirs in arms.values() for d in dirs):
        if RunFolder(run_dir).config_file.exists():
            found.setdefault(_head_and_classes(run_dir)[1], train_annotations(run_dir))
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class ClassCounts:
    """Per class of a dataset (in its category order): ``image_count`` ``(C,)`` int64, the training
    images holding it, and ``frequency``, its LVIS bucket letter ``r``/``c``/``f`` (``""`` for a class
    in no image)."""

    image_count: np.ndarray
    frequency: list[str]


@dataclass(frozen=True)
class ExampleDetections:
    """Detections of one run on its first validation images (:func:`example_detections`): ``run`` its
    folder, ``samples`` for :func:`dlde.plots.detection_plots.detection_grid`, ``class_names`` its classes."""

    run: Path
    samples: list[dict[str, Any]]
    class_names: list[str]


def class_image_counts(annotations_file: str | os.PathLike) -> ClassCounts:
    """Training images containing each class, and its LVIS bucket, from a COCO / LVIS file.

    A category's ``image_count`` and ``frequency`` are taken when it carries them (LVIS, glyphs);
    otherwise the images are counted from the annotations and the bucket follows from the count
    (:func:`dlde.data.long_tail.frequency`).

    Returns:
        The counts and buckets, in the file's category order.
    """
    data = json.loads(Path(annotations_file).read_text())
    categories = data["categories"]
    images_of: dict[int, set[int]] = {c["id"]: set() for c in categories}
    if not all("image_count" in c for c in categories):
        for annotation in data.get("annotations", []):
            images_of.setdefault(annotation["category_id"], set()).add(annotation["image_id"])
    counts = np.array([c["image_count"] if "image_count" in c else len(images_of[c["id"]]) for c in categories],
                      dtype=np.int64)  # (C,)
    letters = [c.get("frequency") or (frequency(int(n)) if n > 0 else "") for c, n in zip(categories, counts)]
    return ClassCounts(counts, letters)


def example_detections(arms: Arms, *, images: int, score_threshold: float) -> dict[str, ExampleDetections]:
    """Detections on the first validation images of one finished run per head, at the largest C.

    For each head, the first run (arms in order, seeds in order) at the largest number of classes
    of that head that has a checkpoint; its model and validation set are loaded (the dataset is
    generated when its folder is missing).

    Returns:
        Head -> the run's :class:`ExampleDetections`; heads without such a run are left out.
    """
    chosen: dict[str, tuple[int, Path]] = {}
    for dirs in arms.values():
        for run_dir in map(Path, dirs):
            if not (RunFolder(run_dir).is_finished() and RunFolder(run_dir).checkpoint_file.exists()):
                continue
            head, classes = _head_and_classes(run_dir)
            if head not in chosen or classes > chosen[head][0]:
                chosen[head] = (classes, run_dir)
    examples = {}
    for head, (_, run_dir) in chosen.items():
        run = load_run(run_dir)
        _, val_set = run.datasets()
        samples = detection_samples(run.load_model(), val_set, range(min(images, len(val_set))),
                                    score_threshold=score_threshold)
        examples[head] = ExampleDetections(run_dir, samples, run.class_names)
    return examples


#: The per-epoch diagnostics of the tracked means (:func:`dlde.model.means.means_diagnostics`) that
#: :func:`tracking_curves` reads, by the name of their curve.
TRACKING_KEYS = {"cos_start_r": "means_cos_to_start_r", "cos_start_c": "means_cos_to_start_c",
                 "cos_start_f": "means_cos_to_start_f", "min_angle": "means_min_angle",
                 "embedding_norm": "mean_embedding_norm", "w": "w_mean"}


def tracking_curves(arms: Arms) -> dict[str, dict[str, np.ndarray]]:
    """What the tracked means did in every finished run of ``arms``, against the images trained.

    Returns:
        arm -> ``images`` ``(S, E + 1)`` (images trained before each point, 0 first), and per key of
        :data:`TRACKING_KEYS` ``(S, E + 1)`` over its ``S`` finished seeds (NaN where a run has no
        value: before training only the cosine to the start, 1, and the smallest angle, from the
        starting means, are known). Arms whose runs have no tracked means (or no diagnostics, runs
        written before them) are left out.
    """
    curves: dict[str, dict[str, np.ndarray]] = {}
    for arm, dirs in arms.items():
        runs = [Path(d) for d in dirs if RunFolder(d).is_finished() and (Path(d) / "means_history.npy").exists()]
        per_run = [_tracking_run(d) for d in runs]
        per_run = [c for c in per_run if c is not None]
        if per_run:
            length = min(len(c["images"]) for c in per_run)
            curves[arm] = {key: np.stack([c[key][:length] for c in per_run]) for key in per_run[0]}
    return curves


def _tracking_run(run_dir: Path) -> dict[str, np.ndarray] | None:
    rows = RunFolder(run_dir).metrics()
    if not rows or "means_min_angle" not in rows[-1] or any(r.get("train_images") is None for r in rows):
        return None
    curve = {"images": np.concatenate([[0.0], np.cumsum([float(r["train_images"]) for r in rows])])}
    for name, key in TRACKING_KEYS.items():
        curve[name] = np.array([np.nan] + [np.nan if r.get(key) is None else float(r[key]) for r in rows])
    start = np.load(run_dir / "means_history.npy", allow_pickle=False)[0]
    curve["min_angle"][0] = min_angle_deg(start)
    for bucket in ("r", "c", "f"):
        if np.isfinite(curve[f"cos_start_{bucket}"][1:]).any():
            curve[f"cos_start_{bucket}"][0] = 1.0
    return curve


_BUCKET_NAMES = {"r": "rare", "c": "common", "f": "frequent"}  # LVIS bucket letter -> its name


def tracking_ends(curves: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Where the means of each arm of :func:`tracking_curves` ended: per :data:`TRACKING_KEYS` curve
    its mean over seeds after the last epoch (NaN where no run recorded it), with ``seeds``,
    ``images`` (trained, mean over seeds) and ``min_angle_start`` (the smallest angle before
    training)."""
    ends = {}
    for arm, curve in curves.items():
        points = {key: curve[key][:, -1] for key in TRACKING_KEYS} | {"min_angle_start": curve["min_angle"][:, 0]}
        ends[arm] = {"seeds": len(curve["images"]), "images": float(np.mean(curve["images"][:, -1]))} | {
            key: float(np.nanmean(values)) if np.isfinite(values).any() else math.nan  # values: (S,)
            for key, values in points.items()}
    return ends


def describe_tracking(curves: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """One line per arm of :func:`tracking_curves` saying where its means ended (:func:`tracking_ends`):
    the cosine of a class mean to its start per bucket (1.000: never moved), the smallest angle
    between two means before and after training (falling: collapse), the length of the mean tracked
    embedding (near 1: every embedding points one way) and ``w``; parts no run recorded are left out."""
    lines = []
    for arm, end in tracking_ends(curves).items():
        known = {key: value for key, value in end.items() if math.isfinite(value)}
        buckets = [f"{name} {known[f'cos_start_{b}']:.3f}" for b, name in _BUCKET_NAMES.items()
                   if f"cos_start_{b}" in known]
        parts = ["cosine of a mean to its start " + ", ".join(buckets)] if buckets else []
        if "min_angle" in known and "min_angle_start" in known:
            parts.append(f"smallest angle between means {known['min_angle_start']:.1f}° → {known['min_angle']:.1f}°")
        if "embedding_norm" in known:
            parts.append(f"length of the mean embedding {known['embedding_norm']:.3f}")
        if "w" in known:
            parts.append(f"w {known['w']:.2f}")
        seeds = end["seeds"]
        lines.append(f"{arm} ({seeds} seed{'s' if seeds != 1 else ''}, {end['images']:,.0f} images): "
                     + ("; ".join(parts) or "nothing recorded"))
    return lines
