"""Figures of the few-shot protocol (a metric against k per method, forgetting) and of its unknown-object
comparison over base seeds.

:func:`plot_shots` and :func:`plot_forgetting` read the rows of :func:`dlde.analysis.fewshot.summarize`,
:func:`plot_unknown_scores` the result of :func:`dlde.analysis.openset_protocol.pool_open_set`; all
return matplotlib figures.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .fewshot import interval_over
from .openset import SCORES
from .plotting import OKABE_ITO, WIDTH, class_colors

__all__ = ["plot_shots", "plot_forgetting", "plot_unknown_scores"]

#: Marker per model in :func:`plot_unknown_scores`, so the heads read apart in grey too.
_MARKERS = ("o", "s", "^", "D", "v", "P")
#: Axis titles of the metrics :func:`plot_unknown_scores` draws.
_UNKNOWN_METRICS = {"auroc": "AUROC (0.5: chance)", "unknown_recall": "unknown recall\nat 95 % known precision",
                    "known_recall": "known recall\nat 95 % known precision", "wilderness_impact_flagged":
                    "WI after flagging", "A-OSE_flagged": "A-OSE after flagging"}


def plot_shots(summary: Sequence[Mapping[str, Any]], metric: str = "novel_AP"):
    """``metric`` against k per method: the mean with its 95 % interval as a band (over draws, or over
    base seeds of the per-seed means: :func:`dlde.analysis.fewshot.summarize`; the title says which).

    Args:
        summary: :func:`dlde.analysis.fewshot.summarize` rows.
        metric: one of :data:`dlde.analysis.fewshot.SUMMARY_METRICS`.
    """
    fig, ax, series = _per_method(summary)
    for color, method, rows, k in series:
        mean = np.array([e[metric]["mean"] for e in rows], dtype=np.float64)
        low = np.array([e[metric]["low"] for e in rows], dtype=np.float64)
        high = np.array([e[metric]["high"] for e in rows], dtype=np.float64)
        ax.plot(k, mean, marker="o", color=color, label=method)
        ax.fill_between(k, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean),
                        color=color, alpha=0.2, linewidth=0)
    _shots_axis(ax, summary, metric.replace("_", " "),
                f"{metric.replace('_', ' ')} (mean, 95 % interval over {interval_over(summary)})")
    return fig


def plot_forgetting(summary: Sequence[Mapping[str, Any]]):
    """Base AP after adding the novel classes against k per method, the base model's AP dashed."""
    fig, ax, series = _per_method(summary)
    for color, method, rows, k in series:
        mean = np.array([e["base_AP"]["mean"] for e in rows], dtype=np.float64)
        ax.plot(k, mean, marker="o", color=color, label=method)
        ax.axhline(rows[0]["base_AP_before"], color=color, linestyle="--", linewidth=1)
    _shots_axis(ax, summary, "base AP", "base classes after adding the novel ones (dashed: before)")
    return fig


def _per_method(summary: Sequence[Mapping[str, Any]]):
    """A figure, its axes and per method (in order of appearance) ``(color, method, rows, k (n,))``."""
    methods = list(dict.fromkeys(e["method"] for e in summary))
    colors = class_colors(len(methods))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    series = []
    for color, method in zip(colors, methods):
        rows = [e for e in summary if e["method"] == method]
        series.append((color, method, rows, np.array([e["k"] for e in rows], dtype=np.float64)))
    return fig, ax, series


def _shots_axis(ax, summary: Sequence[Mapping[str, Any]], ylabel: str, title: str) -> None:
    """k on a log axis with a tick at every k, the labels and the legend."""
    ax.set_xscale("log")
    ks = sorted({e["k"] for e in summary})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="shots per novel class (k)", ylabel=ylabel, title=title)
    ax.legend(fontsize="small")


def plot_unknown_scores(pooled: Mapping[str, Any], metrics: Sequence[str] = ("auroc", "unknown_recall")):
    """Each unknown score (x) of each model (marker), one panel per metric: the mean over base seeds with
    its 95 % t-interval as an error bar.

    Args:
        pooled: :func:`dlde.analysis.openset_protocol.pool_open_set`.
        metrics: keys of :data:`dlde.analysis.openset_protocol.POOLED_SCORE_METRICS`.
    """
    models = list(pooled["models"])
    kinds = [k for k in SCORES if any(k in m["scores"] for m in pooled["models"].values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2 * WIDTH, 3.2), layout="constrained", squeeze=False)
    offsets = (np.arange(len(models)) - (len(models) - 1) / 2) * 0.2
    for ax, metric in zip(axes[0], metrics):
        for j, name in enumerate(models):
            scores = pooled["models"][name]["scores"]
            x = np.array([i for i, k in enumerate(kinds) if k in scores], dtype=np.float64)
            stats = [scores[k][metric] for k in kinds if k in scores]
            mean = np.array([s["mean"] for s in stats], dtype=np.float64)
            low = np.array([s["low"] for s in stats], dtype=np.float64)
            high = np.array([s["high"] for s in stats], dtype=np.float64)
            error = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)  # one seed: no interval
            ax.errorbar(x + offsets[j], mean, yerr=error, fmt=_MARKERS[j % len(_MARKERS)], linestyle="none",
                        color=OKABE_ITO[j % len(OKABE_ITO)], capsize=3, markersize=5, label=name)
        if metric == "auroc":
            ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", rotation_mode="anchor")
        ax.set(xlim=(-0.5, len(kinds) - 0.5), ylabel=_UNKNOWN_METRICS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=len(models),
               fontsize="small", frameon=False)
    fig.suptitle(f"unknown scores: mean, 95 % interval over {len(pooled['base_seeds'])} base seeds", fontsize="medium")
    return fig
