"""The numbers of a sweep: one run folder's final numbers, and per arm their mean and t-interval over seeds.

A sweep (``figures.yaml``, section ``sweeps``) trains every arm once per seed. For each run
:func:`run_summary` reads the final numbers from its folder; :func:`summarize_arms` gives, per arm,
the number of seeds, the mean, the sample standard deviation and a 95 % confidence interval of the
mean from the t-distribution over seeds. Runs evaluated with LVIS's frequency buckets (a
large-vocabulary dataset such as ``glyphs``) add the metrics of :data:`VOCABULARY_METRICS`.
:func:`collapse_curves` gives the largest cosine between two class means per epoch of every run.
The report of a sweep (tables and figures) is written by :mod:`dlde.reports.sweeps`.

Everything here is a pure function of run folders or metric dicts, so it is tested on
hand-made inputs.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlde.evaluation.lvis_eval import FREQUENCY_BUCKETS
from dlde.train.runs import RunFolder

from .stats import CONFIDENCE, t_interval

#: The numbers tabulated per arm, in order, with their column titles.
METRICS: dict[str, str] = {"AP": "AP", "AP50": "AP50", "AP75": "AP75",
                           "min_angle_deg": "min. angle between means (°)", "kappa": "final κ̂",
                           "ECE": "ECE (IoU ≥ 0.5)"}
#: Tabulated only when the runs were evaluated with LVIS's frequency buckets (so the tables of the
#: digits sweeps keep their columns): APr, APc, APf of the last epoch and the training time per
#: epoch (the mean over epochs of ``train_time_s``, without validation), in seconds.
VOCABULARY_METRICS: dict[str, str] = {"APr": "APr", "APc": "APc", "APf": "APf",
                                      "epoch_time_s": "training time per epoch (s)"}
BUCKET_METRICS = tuple(FREQUENCY_BUCKETS)  # APr, APc, APf
#: What the tracked means did, from the last epoch's row of ``metrics.jsonl`` (runs written since
#: the per-epoch diagnostics, :func:`dlde.model.means.means_diagnostics`), and the images trained
#: over all epochs (the budget; repeat-factor sampling makes epochs longer). A second table.
DIAGNOSTIC_METRICS: dict[str, str] = {
    "cos_start_r": "cos to start, rare", "cos_start_c": "cos to start, common", "cos_start_f": "cos to start, frequent",
    "embedding_norm": "length of the mean embedding", "w": "w (mean over classes)", "images": "images trained"}
#: Keys of the metrics row that the diagnostics read.
_DIAGNOSTIC_KEYS = {"cos_start_r": "means_cos_to_start_r", "cos_start_c": "means_cos_to_start_c",
                    "cos_start_f": "means_cos_to_start_f", "embedding_norm": "mean_embedding_norm", "w": "w_mean"}
#: Column order when the vocabulary columns are shown.
_ORDER = ("AP", "AP50", "AP75", "APr", "APc", "APf", "min_angle_deg", "kappa", "ECE", "epoch_time_s")
#: Where 01_train writes its results.json inside a run folder (holds the calibration error).
TRAIN_RESULTS = Path("01_train") / "results.json"


# ------------------------------------------------------------------------------ statistics
def min_angle_deg(means: Any) -> float:
    """Smallest angle between two class means, in degrees.

    Args:
        means: (C, d) class mean directions (need not be unit length). A zero mean (a class
            never tracked) has no direction and is left out.

    Returns:
        min over pairs ``i != j`` of ``arccos(cos(μ_i, μ_j))`` in degrees; NaN with fewer than
        two usable means.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must be (C, d), got shape {means.shape}")
    norms = np.linalg.norm(means, axis=1)
    usable = np.isfinite(norms) & (norms > 0)
    if usable.sum() < 2:
        return float("nan")
    unit = means[usable] / norms[usable, None]  # (C', d)
    cosines = unit @ unit.T  # (C', C')
    np.fill_diagonal(cosines, -np.inf)
    return float(np.degrees(np.arccos(np.clip(cosines.max(), -1.0, 1.0))))


def final_kappa(kappa_history: Any) -> float:
    """Mean over classes of the last row of ``kappa_history`` (E+1, C); NaN entries are skipped."""
    last = np.asarray(kappa_history, dtype=np.float64)[-1]
    return float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")


# ------------------------------------------------------------------------------- run folders
def run_summary(run_dir: str | os.PathLike) -> dict[str, float]:
    """The final numbers of one finished run folder.

    Returns:
        ``AP``, ``AP50``, ``AP75`` of the last epoch of ``metrics.jsonl``; ``min_angle_deg``
        from the last row of ``means_history.npy`` and ``kappa`` from ``kappa_history.npy``
        (NaN for heads without tracked means); ``ECE`` from 01_train's ``results.json``. Only
        when the run has them: ``APr``, ``APc``, ``APf`` (when the last epoch holds them) and
        ``epoch_time_s`` (when the epochs hold ``train_time_s``).

    Raises:
        ValueError: the folder holds no finished epoch.
    """
    run_dir = Path(run_dir)
    rows = RunFolder(run_dir).metrics()
    if not rows:
        raise ValueError(f"{run_dir}: no finished epoch in metrics.jsonl")
    last = rows[-1]
    nan = float("nan")
    summary = {key: (nan if last.get(key) is None else float(last[key])) for key in ("AP", "AP50", "AP75")}
    means, kappa = run_dir / "means_history.npy", run_dir / "kappa_history.npy"
    summary["min_angle_deg"] = min_angle_deg(np.load(means, allow_pickle=False)[-1]) if means.exists() else nan
    summary["kappa"] = final_kappa(np.load(kappa, allow_pickle=False)) if kappa.exists() else nan
    results = run_dir / TRAIN_RESULTS
    ece = json.loads(results.read_text()).get("ECE") if results.exists() else None
    summary["ECE"] = nan if ece is None else float(ece)
    summary.update({key: (nan if last[key] is None else float(last[key])) for key in BUCKET_METRICS if key in last})
    times = [float(row["train_time_s"]) for row in rows if row.get("train_time_s") is not None]
    if times:
        summary["epoch_time_s"] = float(np.mean(times))
    summary.update({name: float(last[key]) for name, key in _DIAGNOSTIC_KEYS.items() if last.get(key) is not None})
    if all(row.get("train_images") is not None for row in rows):
        summary["images"] = float(sum(row["train_images"] for row in rows))
    return summary


def has_buckets(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row of :func:`summarize_arms` holds a finite bucket metric (APr, APc or APf)."""
    return any(math.isfinite(row.get(f"{metric}_mean", math.nan)) for row in rows for metric in BUCKET_METRICS)


def tabulated(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics of the table of ``rows``: :data:`METRICS`, and :data:`VOCABULARY_METRICS`
    where the runs were evaluated with frequency buckets (:func:`has_buckets`)."""
    return list(_ORDER) if has_buckets(rows) else list(METRICS)


def metric_title(metric: str) -> str:
    """A metric's column and panel title."""
    return METRICS.get(metric) or VOCABULARY_METRICS[metric]



def max_mean_cosine(means_history: Any) -> np.ndarray:
    """``(E + 1,)`` largest cosine between two different class means at every epoch of a
    ``(E + 1, C, d)`` history: 1 when two means have collapsed onto each other."""
    history = np.asarray(means_history, dtype=np.float64)
    norms = np.linalg.norm(history, axis=2, keepdims=True)
    unit = np.divide(history, norms, out=np.zeros_like(history), where=norms > 0)
    cosines = unit @ unit.transpose(0, 2, 1)  # (E + 1, C, C)
    classes = history.shape[1]
    off = cosines[:, ~np.eye(classes, dtype=bool)].reshape(len(history), -1)
    valid = (norms[:, :, 0] > 0)[:, :, None] & (norms[:, :, 0] > 0)[:, None, :]
    off = np.where(valid[:, ~np.eye(classes, dtype=bool)], off, -np.inf)
    out = off.max(axis=1)
    return np.where(np.isfinite(out), out, np.nan)



def collapse_curves(arms: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, np.ndarray]:
    """Per arm, :func:`max_mean_cosine` of every run folder holding a ``means_history.npy``, cut to the
    shortest: ``(S, E + 1)`` over its ``S`` such runs. Arms without means are left out."""
    curves = {}
    for arm, dirs in arms.items():
        found = [max_mean_cosine(np.load(Path(d) / "means_history.npy", allow_pickle=False))
                 for d in dirs if (Path(d) / "means_history.npy").exists()]
        if found:
            length = min(len(c) for c in found)
            curves[arm] = np.stack([c[:length] for c in found])
    return curves


def summarize_arms(arms: Mapping[str, Sequence[Mapping[str, float]]],
                   confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """Per arm, :func:`~dlde.analysis.stats.t_interval` of every metric of :data:`METRICS` over its seeds.

    Args:
        arms: arm name -> one summary per seed (as from :func:`run_summary`).
        confidence: coverage of the intervals.

    Returns:
        One row per arm, in the order given: ``arm``, ``n`` (seeds) and, per metric ``m``,
        ``m_mean``, ``m_sd``, ``m_low``, ``m_high``; the metrics of :data:`VOCABULARY_METRICS`
        too when any summary holds a bucket metric.
    """
    buckets = any(metric in s for summaries in arms.values() for s in summaries for metric in BUCKET_METRICS)
    metrics = list(_ORDER if buckets else METRICS)
    metrics += [m for m in DIAGNOSTIC_METRICS if any(m in s for summaries in arms.values() for s in summaries)]
    rows = []
    for arm, summaries in arms.items():
        row: dict[str, Any] = {"arm": arm, "n": len(summaries)}
        for metric in metrics:
            stats = t_interval([s.get(metric) for s in summaries], confidence)
            row.update({f"{metric}_{key}": stats[key] for key in ("mean", "sd", "low", "high")})
        rows.append(row)
    return rows

