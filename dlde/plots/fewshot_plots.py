"""Figures of the few-shot protocol (a metric against k per method, forgetting) and of its unknown-object
comparison over base seeds.

:func:`plot_shots` and :func:`plot_forgetting` read the rows of :func:`dlde.protocols.fewshot.summarize`,
:func:`plot_unknown_scores` the result of :func:`dlde.protocols.openset.pool_open_set`; all
return matplotlib figures, one column wide but the two panels of :func:`plot_unknown_scores` (two
columns). Each method or model has its own marker (:data:`dlde.plots.plotting.MARKERS`) besides
its colour, so the series read apart in grey.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from dlde.analysis.openset import SCORES
from dlde.protocols.fewshot import FewShotSummary, interval_over
from dlde.protocols.openset import PooledOpenSet

from .plotting import MARKERS, OKABE_ITO, class_colors, figure_size, print_style

__all__ = ["plot_shots", "plot_forgetting", "plot_unknown_scores"]

#: Axis titles of the metrics :func:`plot_unknown_scores` draws.
_UNKNOWN_METRICS = {"auroc": "AUROC (0.5: chance)", "unknown_recall": "unknown recall\nat 95 % known precision",
                    "known_recall": "known recall\nat 95 % known precision", "wilderness_impact_flagged":
                    "WI after flagging", "A-OSE_flagged": "A-OSE after flagging"}


@print_style
def plot_shots(summary: Sequence[FewShotSummary], metric: str = "novel_AP"):
    """``metric`` against k per method: the mean with its 95 % interval as an error bar (over draws, or over
    base seeds of the per-seed means: :func:`dlde.protocols.fewshot.summarize`; the title says which), the
    methods dodged sideways so that each interval reads as its own in grey too.

    Args:
        summary: :func:`dlde.protocols.fewshot.summarize` rows.
        metric: one of :data:`dlde.protocols.fewshot.SUMMARY_METRICS`.
    """
    fig, ax, series = _per_method(summary)
    for color, marker, method, rows, k in series:
        _mean_and_interval(ax, k, [e.metric(metric) for e in rows], color=color, marker=marker, label=method)
    _shots_axis(ax, summary, metric.replace("_", " "),
                f"{metric.replace('_', ' ')}\n(mean, 95 % interval over {interval_over(summary)})")
    return fig


@print_style
def plot_forgetting(summary: Sequence[FewShotSummary]):
    """Base AP after adding the novel classes against k per method, with its 95 % interval as an error bar
    (as :func:`plot_shots`), and the base model's AP before as a dashed line ending in the method's marker."""
    fig, ax, series = _per_method(summary)
    for color, marker, method, rows, k in series:
        _mean_and_interval(ax, k, [e.base_AP for e in rows], color=color, marker=marker, label=method)
        ax.axhline(rows[0].base_AP_before, color=color, linestyle="--", linewidth=1, marker=marker,
                   markevery=[1], markersize=4, clip_on=False)  # the marker on the right edge
    _shots_axis(ax, summary, "base AP", f"base classes after adding the novel ones\n(mean, 95 % interval over "
                f"{interval_over(summary)}; dashed: before)")
    return fig


def _per_method(summary: Sequence[FewShotSummary]):
    """A figure, its axes and per method (in order of appearance) ``(color, marker, method, rows, k (n,))``,
    k dodged: multiplied by a factor per method, equal gaps on the log axis."""
    methods = list(dict.fromkeys(e.method for e in summary))
    colors = class_colors(len(methods))
    fig, ax = plt.subplots(figsize=figure_size(2.6), layout="constrained")
    series = []
    for index, (color, method) in enumerate(zip(colors, methods)):
        rows = [e for e in summary if e.method == method]
        dodge = 1.06 ** (index - (len(methods) - 1) / 2)
        series.append((color, MARKERS[index % len(MARKERS)], method, rows,
                       np.array([e.k for e in rows], dtype=np.float64) * dodge))
    return fig, ax, series


def _mean_and_interval(ax, k: np.ndarray, stats: Sequence[Mapping[str, float]], **style: Any) -> None:
    """The means of ``stats`` (``mean``, ``low``, ``high`` per k) as a line with markers and their intervals
    as error bars (none where the interval is NaN)."""
    mean, low, high = (np.array([s[key] for s in stats], dtype=np.float64) for key in ("mean", "low", "high"))
    errors = np.where(np.isfinite(low) & np.isfinite(high), np.stack([mean - low, high - mean]), 0.0)  # (2, n)
    ax.errorbar(k, mean, yerr=errors, capsize=2.5, markersize=5, **style)


def _shots_axis(ax, summary: Sequence[FewShotSummary], ylabel: str, title: str) -> None:
    """k on a log axis with a tick at every k, the labels and the legend."""
    ax.set_xscale("log")
    ks = sorted({e.k for e in summary})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="shots per novel class (k)", ylabel=ylabel, title=title)
    ax.legend()


@print_style
def plot_unknown_scores(pooled: PooledOpenSet, metrics: Sequence[str] = ("auroc", "unknown_recall")):
    """Each unknown score (x) of each model (marker), one panel per metric: the mean over base seeds with
    its 95 % t-interval as an error bar.

    Args:
        pooled: :func:`dlde.protocols.openset.pool_open_set`.
        metrics: keys of :data:`dlde.protocols.openset.POOLED_SCORE_METRICS`.
    """
    models = list(pooled.models)
    kinds = [k for k in SCORES if any(k in m.scores for m in pooled.models.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=figure_size(3.2, columns=2), layout="constrained", squeeze=False)
    offsets = (np.arange(len(models)) - (len(models) - 1) / 2) * 0.2
    for ax, metric in zip(axes[0], metrics):
        for j, name in enumerate(models):
            scores = pooled.models[name].scores
            x = np.array([i for i, k in enumerate(kinds) if k in scores], dtype=np.float64)
            stats = [scores[k].metric(metric) for k in kinds if k in scores]
            mean = np.array([s["mean"] for s in stats], dtype=np.float64)
            low = np.array([s["low"] for s in stats], dtype=np.float64)
            high = np.array([s["high"] for s in stats], dtype=np.float64)
            error = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)  # one seed: no interval
            ax.errorbar(x + offsets[j], mean, yerr=error, fmt=MARKERS[j % len(MARKERS)], linestyle="none",
                        color=OKABE_ITO[j % len(OKABE_ITO)], capsize=3, markersize=5, label=name)
        if metric == "auroc":
            ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", rotation_mode="anchor")
        ax.set(xlim=(-0.5, len(kinds) - 0.5), ylabel=_UNKNOWN_METRICS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=len(models),
               frameon=False)
    fig.suptitle(f"unknown scores: mean, 95 % interval over {len(pooled.base_seeds)} base seeds")
    return fig
