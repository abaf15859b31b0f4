"""Figures of the few-shot protocol: a metric against k per method, and forgetting.

Both read the rows of :func:`dlde.analysis.fewshot.summarize` and return matplotlib figures.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .plotting import class_colors

__all__ = ["plot_shots", "plot_forgetting"]


def plot_shots(summary: Sequence[Mapping[str, Any]], metric: str = "novel_AP"):
    """``metric`` against k per method: mean over draws with its 95 % interval as a band.

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
                f"{metric.replace('_', ' ')} (mean and 95 % interval over draws)")
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
