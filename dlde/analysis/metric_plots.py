"""Charts of measured numbers: training curves, AP per class, reliability, open-set scores and ROC.

Each function returns a :class:`matplotlib.figure.Figure` (see :mod:`dlde.analysis.plotting` for
the shared colors and :func:`~dlde.analysis.plotting.save_figure`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .calibration import ece_of_curve
from .embeddings import to_numpy
from .plotting import class_colors

__all__ = ["plot_training_curves", "plot_per_class_ap", "plot_reliability", "plot_score_histograms", "plot_roc"]


def plot_training_curves(metrics: Iterable[Mapping[str, Any]]) -> Figure:
    """Losses and AP per epoch.

    Args:
        metrics: one dict per epoch with any of ``epoch, train_loss, val_loss, AP, AP50``;
            missing or None values are skipped. Without ``epoch`` the list index is used.

    Returns:
        Figure with two axes: losses (left) and AP/AP50 (right).
    """
    rows = list(metrics)
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, keys, title in (
        (ax_loss, ("train_loss", "val_loss"), "loss"),
        (ax_ap, ("AP", "AP50"), "COCO box AP"),
    ):
        drawn = False
        for key in keys:
            pts = [
                (row.get("epoch", i), float(row[key]))
                for i, row in enumerate(rows)
                if row.get(key) is not None
            ]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o", label=key)
                drawn = True
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig



def plot_per_class_ap(
    per_class_ap: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    title: str | None = None,
) -> Figure:
    """Bar chart of AP per class, for one model or side by side for several.

    Args:
        per_class_ap: class name -> AP (one model, e.g. ``evaluate(...)["per_class"]``), or
            model name -> (class name -> AP). Classes are drawn in first-seen order; a class
            missing for a model is left empty.
        title: axis title (default "AP per class").

    Returns:
        Figure with one axis holding one bar container per model, one bar per class.
    """
    if not per_class_ap:
        raise ValueError("per_class_ap is empty")
    first = next(iter(per_class_ap.values()))
    models = dict(per_class_ap) if isinstance(first, Mapping) else {"": per_class_ap}
    classes = list(dict.fromkeys(name for ap in models.values() for name in ap))
    colors = class_colors(len(models))
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(classes) * len(models) + 2), 4),
                           layout="constrained")
    for k, (model, ap) in enumerate(models.items()):
        values = np.array([ap.get(c, np.nan) for c in classes], dtype=np.float64)
        ax.bar(x - 0.4 + (k + 0.5) * width, np.nan_to_num(values), width=width, color=colors[k],
               label=model or "_nolegend_")
    ax.set_xticks(x, classes)
    ax.set(ylim=(0, 1), ylabel="AP", title=title or "AP per class")
    if len(models) > 1:
        ax.legend(fontsize="small")
    return fig



def plot_reliability(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Reliability diagram: accuracy against confidence per score bin, one set per model.

    Args:
        curves: model name -> a :func:`dlde.analysis.calibration.reliability_curve` dict (``bin_edges,
            confidence, accuracy, count``), or a :func:`dlde.analysis.calibration.detection_calibration`
            result (its ``curve`` is used). All curves must share the same bins.

    Returns:
        Figure with one axis: the diagonal (perfect calibration), then per model one bar set
        (accuracy per bin, side by side within the bin) and one line (accuracy against mean
        confidence of the filled bins) labelled with its ECE.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="perfect calibration")
    colors = class_colors(len(curves))
    for k, (name, curve) in enumerate(curves.items()):
        curve = curve.get("curve", curve)
        edges = np.asarray(curve["bin_edges"], dtype=np.float64)
        accuracy = np.asarray(curve["accuracy"], dtype=np.float64)
        confidence = np.asarray(curve["confidence"], dtype=np.float64)
        width = np.diff(edges) / len(curves)
        ax.bar(edges[:-1] + k * width, np.nan_to_num(accuracy), width=width, align="edge",
               color=colors[k], alpha=0.3, edgecolor=colors[k], label="_nolegend_")
        filled = np.asarray(curve["count"]) > 0
        ax.plot(confidence[filled], accuracy[filled], marker="o", color=colors[k],
                label=f"{name} (ECE {ece_of_curve(curve):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (score)", ylabel="accuracy",
           title="reliability of detection scores")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    return fig



def plot_score_histograms(
    known: Any,
    unknown: Any,
    *,
    bins: int = 40,
    xlabel: str = "unknown score",
    title: str | None = None,
) -> Figure:
    """Overlaid density histograms of a score for known and unknown objects.

    Args:
        known: (N,) scores of detections of known classes; NaN skipped.
        unknown: (M,) scores of detections of unknown objects; NaN skipped.
        bins: number of shared bins over the range of both.
        xlabel: name of the score.
        title: axis title (default "known vs unknown").

    Returns:
        Figure with one axis holding two histograms (known first).
    """
    known, unknown = to_numpy(known).ravel(), to_numpy(unknown).ravel()
    known, unknown = known[np.isfinite(known)], unknown[np.isfinite(unknown)]
    both = np.concatenate([known, unknown])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.hist(known, bins=edges, density=bool(known.size), alpha=0.6,
            label=f"known ({known.size})")
    ax.hist(unknown, bins=edges, density=bool(unknown.size), alpha=0.6,
            label=f"unknown ({unknown.size})")
    ax.set(xlabel=xlabel, ylabel="density", title=title or "known vs unknown")
    ax.legend()
    return fig


def plot_roc(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """ROC curves of unknown detection (unknown is the positive class).

    Args:
        curves: name -> :func:`dlde.analysis.openset.roc_curve` dict (``fpr``, ``tpr``, ``auroc``).

    Returns:
        Figure with one axis: the chance diagonal, then one line per curve labelled with its
        AUROC.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="chance")
    colors = class_colors(len(curves))
    for k, (name, curve) in enumerate(curves.items()):
        ax.plot(to_numpy(curve["fpr"]), to_numpy(curve["tpr"]), color=colors[k],
                label=f"{name} (AUROC {float(curve['auroc']):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (known flagged)",
           ylabel="true positive rate (unknown flagged)", title="unknown-object ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig

