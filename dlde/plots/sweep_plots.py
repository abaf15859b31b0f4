"""Figures of a sweep over seeds: per metric each arm's mean and t-interval (:func:`plot_sweep`), and
the collapse of the class means per epoch (:func:`plot_collapse`). :mod:`dlde.reports.sweeps` saves
them next to the sweep's tables.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dlde.analysis.stats import CONFIDENCE
from dlde.analysis.sweep_stats import metric_title, tabulated

from .plotting import LINES, MARKERS, figure_size, print_style

__all__ = ["plot_collapse", "plot_sweep"]


@print_style
def plot_collapse(curves: Mapping[str, np.ndarray], title: str = ""):
    """The collapse of class means, as a figure one column wide: per arm, the largest cosine between
    two class means after every epoch (mean over seeds, band = min..max), each arm with its own
    marker and line style.

    Args:
        curves: arm -> ``(S, E + 1)`` over its seeds (:func:`dlde.analysis.sweep_stats.collapse_curves`).
        title: the axes' title.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figure_size(2.6))
    for index, (arm, stacked) in enumerate(curves.items()):
        epochs = np.arange(stacked.shape[1])
        with warnings.catch_warnings():  # epoch 0 of zero starting means has no cosine: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = np.nanmean(stacked, axis=0), np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0)
        line, = ax.plot(epochs, mean, marker=MARKERS[index % len(MARKERS)], linestyle=LINES[index % len(LINES)],
                        ms=3, label=f"{arm} (n={len(stacked)})")
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("max cosine between\ntwo class means")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_title(title or "collapse of the class means")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


@print_style
def plot_sweep(rows: Sequence[Mapping[str, Any]], title: str = "",
               seeds: Mapping[str, Sequence[Mapping[str, float]]] | None = None, columns: int = 3):
    """Error-bar figure of a sweep: one panel per metric, per arm its mean and confidence interval.

    Args:
        rows: from :func:`dlde.analysis.sweep_stats.summarize_arms`.
        title: figure title (e.g. the sweep's name).
        seeds: arm -> the per-seed summaries the rows were computed from; drawn as grey
            points next to each mean when given.
        columns: panels per row of the figure.

    Returns:
        A matplotlib figure two columns wide (one for a single panel); metrics no arm has (e.g. κ̂
        in a sigmoid-only sweep) are omitted.
    """
    import matplotlib.pyplot as plt

    metrics = [m for m in tabulated(rows) if any(math.isfinite(r[f"{m}_mean"]) for r in rows)] or ["AP"]
    ncols = min(columns, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figure_size(0.3 + 2.2 * nrows, columns=2 if ncols > 1 else 1),
                             squeeze=False)
    x = np.arange(len(rows))
    labels = [str(r["arm"]) for r in rows]
    for ax, metric in zip(axes.flat, metrics):
        mean = np.array([r[f"{metric}_mean"] for r in rows], dtype=np.float64)  # (arms,)
        low = np.array([r[f"{metric}_low"] for r in rows], dtype=np.float64)
        high = np.array([r[f"{metric}_high"] for r in rows], dtype=np.float64)
        has_ci = np.isfinite(low) & np.isfinite(high)
        errors = np.where(has_ci, np.stack([mean - low, high - mean]), 0.0)  # (2, arms)
        if seeds is not None:
            for position, row in zip(x, rows):
                values = np.array([np.nan if s.get(metric) is None else s[metric] for s in seeds.get(row["arm"], [])],
                                  dtype=np.float64)
                ax.plot(np.full(values.shape, position + 0.15), values, ".", color="0.55", markersize=5)
        ax.errorbar(x, mean, yerr=errors, fmt="o", capsize=4, color="tab:blue")
        ax.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_title(metric_title(metric))
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(f"{title}: mean and {100 * CONFIDENCE:g} % t-interval over seeds (grey: single seeds)"
                     if seeds is not None else f"{title}: mean and {100 * CONFIDENCE:g} % t-interval over seeds")
    fig.tight_layout()
    return fig
