"""Figures of the large-vocabulary sweeps: metrics against the number of classes per head, metrics per
arm of a sweep, what the tracked means did during training, and the class frequencies of a long-tailed
dataset.

Sized for one column of a paper (:func:`dlde.plots.plotting.figure_size`, 7-8 pt text; two for the
panels per arm and the tracking panels) and colour-blind safe: the heads and the frequency buckets
take colours of the Okabe-Ito palette, and each head (each arm in the tracking panels) also has its
own marker and line style, so the figures read in grey too. Every function returns a
:class:`matplotlib.figure.Figure` (save it with :func:`dlde.plots.plotting.save_figure`).
The inputs are the plain rows of :func:`dlde.protocols.vocabulary.arm_rows`, the curves of
:func:`dlde.protocols.vocabulary.tracking_curves` and the counts of
:func:`dlde.protocols.vocabulary.class_image_counts`; examples of detections are drawn by
:func:`dlde.plots.detection_plots.detection_grid`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dlde.analysis.stats import CONFIDENCE
from dlde.analysis.sweep_stats import METRICS, VOCABULARY_METRICS
from dlde.data.long_tail import BUCKETS

from .plotting import BUCKET_COLORS, BUCKET_HATCHES, BUCKET_LINES, LINES, MARKERS, OKABE_ITO, figure_size, print_style

__all__ = ["HEAD_STYLES", "plot_against_classes", "plot_arms", "plot_class_frequency", "plot_tracking"]

#: Head -> (label, colour, marker, line style); a head not listed takes the next free colour.
HEAD_STYLES: dict[str, tuple[str, str, str, str]] = {
    "dlde": ("DLDENet", OKABE_ITO[0], "o", "-"),
    "retinanet": ("sigmoid", OKABE_ITO[1], "s", "--"),
    "prototypes": ("learned prototypes", OKABE_ITO[2], "^", ":"),
}
_SPARE_MARKERS = ("D", "v", "P", "X")


Style = tuple[str, str, str, str]  # (label, colour, marker, line style)


def _head_style(head: str, index: int) -> Style:
    if head in HEAD_STYLES:
        return HEAD_STYLES[head]
    spare = index % len(_SPARE_MARKERS)
    return head, OKABE_ITO[3 + spare % (len(OKABE_ITO) - 3)], _SPARE_MARKERS[spare], "-."


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _metric_lines(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, x: str,
                  series: Callable[[Mapping], str], style: Callable[[str, int], Style], xlabel: str, title: str):
    """Panels of metrics against the numeric row field ``x`` (log axis), one line per series.

    Args:
        rows: with ``x`` and ``<metric>_mean``, ``_low``, ``_high`` (a missing metric is NaN).
        metrics: one panel each, two per row.
        series: the series of a row (rows of one series share a line).
        style: ``(series, index) -> (label, colour, marker, line style)``.
        xlabel: the label of the x axes; title: the figure's title ("" names the interval).
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(series(r) for r in rows))
    legend_columns = len(names) if len(names) <= 3 else 2
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    height = 0.35 + 1.55 * nrows + 0.2 * math.ceil(len(names) / max(1, legend_columns))
    fig, axes = plt.subplots(nrows, ncols, figsize=figure_size(height), squeeze=False, sharex=True,
                             layout="constrained")
    ticks = sorted({float(r[x]) for r in rows})
    for ax, metric in zip(axes.flat, metrics):
        for index, name in enumerate(names):
            label, color, marker, line = style(name, index)
            mine = sorted((r for r in rows if series(r) == name), key=lambda r: float(r[x]))
            dodge = 1.07 ** (index - (len(names) - 1) / 2)  # multiplicative: equal gaps on the log axis
            at = np.array([float(r[x]) for r in mine], dtype=np.float64) * dodge  # (points,)
            mean, low, high = (np.array([r.get(f"{metric}_{k}", math.nan) for r in mine], dtype=np.float64)
                               for k in ("mean", "low", "high"))
            errors = np.where(np.isfinite(low) & np.isfinite(high), np.stack([mean - low, high - mean]), 0.0)
            ax.errorbar(at, mean, yerr=errors, color=color, marker=marker, linestyle=line, markersize=4,
                        linewidth=1.2, capsize=2.5, label=label)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [_number(t) for t in ticks])
        ax.minorticks_off()
        if ticks:
            ax.set_xlim(ticks[0] / 1.6, ticks[-1] * 1.6)
        ax.set_title(METRICS.get(metric) or VOCABULARY_METRICS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
        if metric != "epoch_time_s":
            ax.set_ylim(bottom=0.0)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=max(1, legend_columns), frameon=False)
    fig.suptitle(title or f"mean and {100 * CONFIDENCE:g} % t-interval over seeds")
    return fig


@print_style
def plot_against_classes(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("AP", "APr", "APc", "APf"),
                         *, title: str = ""):
    """Metrics against the number of classes C, one line per head, with the t-interval over seeds.

    Args:
        rows: one per arm, with ``head``, ``classes`` and ``<metric>_mean``, ``_low``, ``_high``
            (:func:`dlde.protocols.vocabulary.arm_rows`); a metric a row lacks counts as NaN.
        metrics: one panel each (two per row), e.g. ``("AP", "APr", "APc", "APf")`` or
            ``("epoch_time_s",)``.
        title: the figure's title.

    Returns:
        A figure with one axis per metric: x = C (log scale, ticks at the C of the rows), per head
        the mean as a marker and line and the interval as error bars (heads dodged sideways).
    """
    return _metric_lines(rows, metrics, x="classes", series=lambda r: str(r["head"]), style=_head_style,
                         xlabel="classes C", title=title)


@print_style
def plot_arms(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("AP", "APr", "APc", "APf"), *,
              title: str = ""):
    """Metrics per arm of a sweep, one panel per metric side by side: the arms one below the other
    (in the order of ``rows``), each its mean and t-interval over seeds (no bar with one seed), in
    the colour and marker of its head (:data:`HEAD_STYLES`).

    Args:
        rows: one per arm, with ``arm``, ``head`` and ``<metric>_mean``, ``_low``, ``_high``
            (:func:`dlde.protocols.vocabulary.arm_rows`); a metric a row lacks counts as NaN.
        metrics: one panel each, sharing the arms' axis.
        title: the figure's title ("" names the interval).

    Returns:
        A figure two columns wide, its height growing with the number of arms; the legend names
        the heads.
    """
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(str(r["head"]) for r in rows))
    styles = {head: _head_style(head, index) for index, head in enumerate(heads)}
    fig, axes = plt.subplots(1, len(metrics), figsize=figure_size(0.9 + 0.17 * len(rows), columns=2), sharey=True,
                             squeeze=False, layout="constrained")
    at = np.arange(len(rows))  # (arms,) from the top
    for ax, metric in zip(axes[0], metrics):
        mean, low, high = (np.array([r.get(f"{metric}_{k}", math.nan) for r in rows], dtype=np.float64)
                           for k in ("mean", "low", "high"))  # (arms,)
        errors = np.where(np.isfinite(low) & np.isfinite(high), np.stack([mean - low, high - mean]), 0.0)  # (2, arms)
        for head, (label, colour, marker, _) in styles.items():
            mine = np.array([str(r["head"]) == head for r in rows])
            ax.errorbar(mean[mine], at[mine], xerr=errors[:, mine], color=colour, marker=marker, linestyle="none",
                        markersize=4, capsize=2, elinewidth=1.0, label=label)
        ax.set_title(METRICS.get(metric) or VOCABULARY_METRICS.get(metric, metric))
        drawn = np.concatenate([mean, high])
        drawn = drawn[np.isfinite(drawn)]
        ax.set_xlim(0.0, 1.1 * drawn.max() if drawn.size and drawn.max() > 0 else 1.0)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(at, [str(r["arm"]) for r in rows])
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)  # the first arm on top
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=max(1, len(heads)),
               frameon=False)
    fig.suptitle(title or f"mean and {100 * CONFIDENCE:g} % t-interval over seeds")
    return fig


def _edges(largest: int) -> np.ndarray:
    """Bin edges at half-integers, about evenly spaced on a log axis from 1 to ``largest``, with the
    bucket boundaries among them (every bin holds at least one integer)."""
    edges = np.round(np.geomspace(1, largest + 1, 24)) - 0.5
    bounds = [BUCKETS["r"][1] + 0.5, BUCKETS["c"][1] + 0.5]
    return np.unique(np.concatenate([edges, [b for b in bounds if b < largest + 0.5], [largest + 0.5]]))


@print_style
def plot_class_frequency(image_count: Sequence[int], frequency: Sequence[str], *, title: str = ""):
    """Histogram of the training images per class, on a log axis, with the LVIS buckets shaded (each in its
    colour and hatch).

    Args:
        image_count: (C,) training images containing each class
            (:func:`dlde.protocols.vocabulary.class_image_counts`); classes in no image are left out.
        frequency: (C,) each class's bucket letter ``r``, ``c`` or ``f``; the legend counts them.
        title: the axis title (default: the number of classes).

    Returns:
        A figure with one axis: x = images per class (log), y = classes per bin; the legend
        names each bucket's range and number of classes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    counts = np.asarray(image_count, dtype=np.int64)  # (C,)
    letters = np.asarray(list(frequency), dtype=object)
    if counts.shape != letters.shape:
        raise ValueError(f"image_count {counts.shape} and frequency {letters.shape} must have one entry per class")
    shown = counts > 0
    fig, ax = plt.subplots(figsize=figure_size(2.4), layout="constrained")
    largest = int(counts.max()) if shown.any() else 1
    spans = {"r": (0.5, BUCKETS["r"][1] + 0.5), "c": (BUCKETS["c"][0] - 0.5, BUCKETS["c"][1] + 0.5),
             "f": (BUCKETS["f"][0] - 0.5, max(largest, BUCKETS["f"][0]) + 0.5)}
    for letter, (name, color) in BUCKET_COLORS.items():
        ranges = f"{BUCKETS[letter][0]}–{BUCKETS[letter][1]}" if BUCKETS[letter][1] else f"> {BUCKETS[letter][0] - 1}"
        ax.axvspan(*spans[letter], facecolor=to_rgba(color, 0.25), edgecolor=to_rgba(color, 0.5), linewidth=0,
                   hatch=BUCKET_HATCHES[letter], label=f"{name} {ranges}: {int(np.sum(letters[shown] == letter))}")
    ax.hist(counts[shown], bins=_edges(largest), color="0.25", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_xlim(0.5, max(largest, BUCKETS["f"][0]) + 0.5)
    ticks = [1, 10, 100, 1000][: 2 + int(largest >= 100) + int(largest >= 1000)]
    ax.set_xticks(ticks, [_number(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images containing the class")
    ax.set_ylabel("classes")
    ax.set_title(title or f"class frequency ({_number(int(shown.sum()))} classes)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # headroom for the legend
    ax.legend(loc="upper left", framealpha=0.9, handlelength=1.0)
    return fig


#: Panels of :func:`plot_tracking`: curve keys of :func:`dlde.protocols.vocabulary.tracking_curves`
#: (the frequency buckets' line styles, :data:`~dlde.plots.plotting.BUCKET_LINES`, where a panel has
#: several) and the panel's title.
TRACKING_PANELS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("cos_start_r", "cos_start_c", "cos_start_f"),
     "cosine of a class mean to its start\n(rare ···, common --, frequent -·)"),
    (("min_angle",), "smallest angle between two means (°)"),
    (("embedding_norm",), "length of the mean tracked embedding\n(1: all point one way)"),
    (("w",), "scale w (mean over classes)"),
)


def _arm_style(index: int) -> tuple[str, str, str]:
    """``(colour, marker, line style)`` of the ``index``-th arm of :func:`plot_tracking`: the marker and,
    past :data:`~dlde.plots.plotting.MARKERS`, the line style tell every arm apart without colour."""
    turn = index // len(MARKERS)
    return (OKABE_ITO[(index + turn) % len(OKABE_ITO)], MARKERS[index % len(MARKERS)], LINES[turn % len(LINES)])


@print_style
def plot_tracking(curves: Mapping[str, Mapping[str, np.ndarray]], *, title: str = ""):
    """What the tracked means did during training, per arm, against the images trained: their
    cosine to their start per frequency bucket (1: never moved), the smallest angle between two of
    them (small: collapse), the length of the mean tracked embedding and the scale ``w``; the mean
    over seeds, with a band from the lowest to the highest seed where there are several.

    Args:
        curves: from :func:`dlde.protocols.vocabulary.tracking_curves`.
        title: the figure's title.

    Returns:
        A figure two columns wide with four panels sharing the images axis; each arm has its
        colour, marker and (after the seventh arm, in the panels of one curve) line style; the
        legend below grows with the arms.
    """
    import matplotlib.pyplot as plt

    legend_rows = math.ceil(len(curves) / 3)
    fig, axes = plt.subplots(2, 2, figsize=figure_size(4.0 + 0.14 * legend_rows, columns=2), squeeze=False,
                             sharex=True, layout="constrained")
    for ax, (keys, panel) in zip(axes.flat, TRACKING_PANELS):
        for index, (arm, curve) in enumerate(curves.items()):
            colour, marker, arm_line = _arm_style(index)
            labelled = False
            for key in keys:
                values = curve[key]  # (S, E + 1)
                if not np.isfinite(values).any():
                    continue
                known = np.isfinite(values).any(axis=0)  # points some seed has (w is unknown before training)
                images = curve["images"].mean(0)[known]
                values = values[:, known]
                line = BUCKET_LINES[key[-1]] if len(keys) > 1 else arm_line
                ax.plot(images, np.nanmean(values, axis=0), color=colour, marker=marker, ms=3, ls=line,
                        label=None if labelled else arm)
                labelled = True
                if len(values) > 1:
                    ax.fill_between(images, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colour,
                                    alpha=0.12, lw=0)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("images trained")
    handles, labels = axes[0, 1].get_legend_handles_labels()  # one curve per arm: its own line style
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), frameon=False)
    if title:
        fig.suptitle(title)
    return fig
