"""Charts of measured numbers: training curves, AP per class, reliability, open-set scores and ROC.

Each function returns a :class:`matplotlib.figure.Figure` one column wide (see
:mod:`dlde.plots.plotting` for the shared colors, print sizes and
:func:`~dlde.plots.plotting.save_figure`); AP bars for many classes take two columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dlde.analysis.calibration import ece_of_curve
from dlde.analysis.embeddings import to_numpy

from .plotting import (
    BUCKET_COLORS,
    BUCKET_LINES,
    FONT_PT,
    HATCH,
    HATCHES,
    MARKERS,
    MIN_TEXT_PT,
    WIDTH,
    class_colors,
    figure_size,
    print_style,
)

__all__ = ["MAX_CLASS_BARS", "plot_training_curves", "plot_per_class_ap", "plot_reliability", "plot_score_histograms",
           "plot_roc"]

#: Most classes :func:`plot_per_class_ap` draws as bars; beyond, it ranks them in a figure of fixed size.
MAX_CLASS_BARS = 60
#: Most bars (classes x models) :func:`plot_per_class_ap` draws one column wide; more take two columns.
_ONE_COLUMN_BARS = 24
#: LVIS bucket letter -> line style of its mean in the ranked view (so the buckets read in grey too).
_NAMED = 3  # classes named at each end of the ranked view
_NAME_CHARS = 28  # longer class names are cut there in the ranked view


@print_style
def plot_training_curves(metrics: Iterable[Mapping[str, Any]]) -> Figure:
    """Losses and AP per epoch.

    Args:
        metrics: one dict per epoch with any of ``epoch, train_loss, val_loss, AP, AP50``;
            missing or None values are skipped. Without ``epoch`` the list index is used.

    Returns:
        Figure with two axes: losses (left) and AP/AP50 (right).
    """
    rows = list(metrics)
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=figure_size(2.3), layout="constrained")
    for ax, keys, title in (
        (ax_loss, ("train_loss", "val_loss"), "loss"),
        (ax_ap, ("AP", "AP50"), "COCO box AP"),
    ):
        drawn = False
        for key, marker in zip(keys, MARKERS):
            pts = [
                (row.get("epoch", i), float(row[key]))
                for i, row in enumerate(rows)
                if row.get(key) is not None
            ]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker=marker, label=key)
                drawn = True
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig



@print_style
def plot_per_class_ap(
    per_class_ap: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    title: str | None = None,
    *,
    dataset: Any = None,
) -> Figure:
    """AP per class, for one model or side by side for several: bars for up to
    :data:`MAX_CLASS_BARS` classes, the classes ranked by AP beyond.

    Args:
        per_class_ap: class name -> AP (one model, e.g. ``evaluate(...)["per_class"]``), or
            model name -> (class name -> AP). Classes are drawn in first-seen order; a class
            missing for a model is left empty.
        title: axis title (default "AP per class"); the figure's title in the ranked view.
        dataset: the evaluated dataset (a :class:`dlde.data.coco.CocoDetection`), optional: when
            its ``frequencies`` (label -> ``r``/``c``/``f``) are not None, the ranked view marks
            each class's LVIS frequency bucket (matched by ``class_names``). The bars ignore it.

    Returns:
        Up to :data:`MAX_CLASS_BARS` classes: a figure with one axis holding one bar container
        per model, one bar per class, one column wide for up to 24 bars and two beyond (class names
        turned upright where they would not fit side by side). More classes: a figure
        one column wide whatever their number: per model a panel of its AP per class sorted in
        descending order with the mean AP (and each bucket's) as horizontal lines and the highest
        and lowest classes named, and with frequencies a strip under it marking each bucket's
        classes by rank (see :func:`_plot_ranked_ap`).
    """
    if not per_class_ap:
        raise ValueError("per_class_ap is empty")
    first = next(iter(per_class_ap.values()))
    models = dict(per_class_ap) if isinstance(first, Mapping) else {"": per_class_ap}
    classes = list(dict.fromkeys(name for ap in models.values() for name in ap))
    title = title or "AP per class"
    if len(classes) > MAX_CLASS_BARS:
        frequencies = getattr(dataset, "frequencies", None)
        buckets = dict(zip(dataset.class_names, frequencies)) if frequencies is not None else {}
        return _plot_ranked_ap(models, classes, title, buckets)
    colors = class_colors(len(models))
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    columns = 1 if len(classes) * len(models) <= _ONE_COLUMN_BARS else 2
    fig, ax = plt.subplots(figsize=figure_size(2.4, columns), layout="constrained")
    for k, (model, ap) in enumerate(models.items()):
        values = np.array([ap.get(c, np.nan) for c in classes], dtype=np.float64)
        ax.bar(x - 0.4 + (k + 0.5) * width, np.nan_to_num(values), width=width, color=colors[k],
               hatch=HATCHES[k % len(HATCHES)] or None, label=model or "_nolegend_")
    # a class name about 0.6 em per character; the axis about 85 % of the figure's width
    flat = max(len(c) for c in classes) * 0.6 * FONT_PT <= 0.85 * 72 * fig.get_figwidth() / len(classes)
    ax.set_xticks(x, classes, rotation=0 if flat else 90)
    ax.set(ylim=(0, 1), ylabel="AP", title=title)
    if len(models) > 1:
        ax.legend()
    return fig


def _plot_ranked_ap(models: Mapping[str, Mapping[str, float]], classes: list[str], title: str,
                    buckets: Mapping[str, str]) -> Figure:
    """The ranked view of :func:`plot_per_class_ap`, one column wide whatever the number of classes.

    Per model a panel of its AP per class in descending order (:func:`_ranked_panel`) and, with
    ``buckets`` (class name -> ``r``/``c``/``f``), a strip under it marking the rank of each
    bucket's classes in one row per bucket (:func:`_bucket_strip`); the legend under the
    panels gives each bucket's colour, the line style of its mean and its number of classes.
    """
    letters = np.array([buckets.get(c) for c in classes], dtype=object)  # (C,) None outside the buckets
    present = [letter for letter in BUCKET_COLORS if np.any(letters == letter)]
    rows = (2.0, 0.12 + 0.12 * len(present)) if present else (2.0,)  # panel, strip: inches
    fig, axes = plt.subplots(len(rows) * len(models), 1, sharex=True, layout="constrained",
                             figsize=figure_size(0.55 + sum(rows) * len(models)),
                             gridspec_kw={"height_ratios": rows * len(models)})
    axes = np.atleast_1d(axes).reshape(len(models), len(rows))  # (models, panel [+ strip])
    for row, (model, ap) in zip(axes, models.items()):
        values = np.array([ap.get(c, np.nan) for c in classes], dtype=np.float64)  # (C,)
        order = np.flatnonzero(np.isfinite(values))  # classes the model lacks left out
        order = order[np.argsort(-values[order], kind="stable")]  # (K,) class indices, highest AP first
        _ranked_panel(row[0], model, [classes[c] for c in order], values[order], letters[order])
        if present:
            _bucket_strip(row[1], letters[order], present)
    axes[-1, -1].set_xlabel(f"class rank by AP ({len(classes):,} classes)")
    fig.suptitle(title)
    if present:
        handles = [Line2D([], [], color=BUCKET_COLORS[letter][1], linestyle=BUCKET_LINES[letter],
                          label=f"{BUCKET_COLORS[letter][0]} ({int(np.sum(letters == letter))})")
                   for letter in present]
        handles.append(Line2D([], [], color="black", linewidth=0.8, label="all"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=MIN_TEXT_PT,
                   title="classes per bucket; lines: mean AP", title_fontsize=MIN_TEXT_PT, frameon=False,
                   handlelength=2.2, columnspacing=1.0)
    return fig


def _ranked_panel(ax, model: str, names: list[str], ranked: np.ndarray, letters: np.ndarray) -> None:
    """One model's AP per class in descending order, x = rank (1 = highest).

    Draws the AP as a grey step line, its mean as a black line and each bucket's mean as a line in
    the bucket's colour and line style, and names the ``_NAMED`` highest classes (lower left)
    and the lowest (upper right); the title gives the means.

    Args:
        ax: the panel.
        model: its name ("" for none).
        names: (K,) class names in rank order.
        ranked: (K,) their AP, descending.
        letters: (K,) their bucket letters, or None.
    """
    rank = np.arange(1, len(ranked) + 1)  # (K,)
    ax.plot(rank, ranked, color="0.45", linewidth=1.0, drawstyle="steps-mid")
    ax.axhline(ranked.mean(), color="black", linewidth=0.8)
    means = []
    for letter, (_, color) in BUCKET_COLORS.items():
        mine = letters == letter  # (K,)
        if mine.any():
            ax.axhline(ranked[mine].mean(), color=color, linestyle=BUCKET_LINES[letter], linewidth=1.2)
            means.append(f"{letter} {ranked[mine].mean():.3f}")
    bucket_means = f" ({', '.join(means)})" if means else ""
    ax.set_title(f"{model}: " * bool(model) + f"mean AP {ranked.mean():.3f}{bucket_means}", fontsize=FONT_PT)
    named = {"highest": (range(min(_NAMED, len(ranked))), 0.02, 0.03, "left", "bottom"),
             "lowest": (range(len(ranked) - 1, max(len(ranked) - 1 - _NAMED, -1), -1), 0.98, 0.97, "right", "top")}
    for head, (picked, x, y, ha, va) in named.items():
        text = "\n".join([f"{head} AP:", *(f"{_short(names[k])} {ranked[k]:.2f}" for k in picked)])
        ax.text(x, y, text, transform=ax.transAxes, fontsize=MIN_TEXT_PT, ha=ha, va=va,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0})
    ax.set(ylim=(0, 1), xlim=(0.5, max(len(ranked), 1) + 0.5))
    ax.set_ylabel("AP")


def _bucket_strip(ax, letters: np.ndarray, present: list[str]) -> None:
    """Under a :func:`_ranked_panel`: one row per bucket letter of ``present`` (named on the y
    axis), a tick in the bucket's colour at the rank of each of its classes.

    Args:
        ax: the strip.
        letters: (K,) the bucket letter of each rank, or None.
        present: the bucket letters to draw, top row first.
    """
    ax.eventplot([np.flatnonzero(letters == letter) + 1 for letter in present],
                 lineoffsets=np.arange(len(present))[::-1], linelengths=0.8, linewidths=0.4,
                 colors=[BUCKET_COLORS[letter][1] for letter in present])
    ax.set_yticks(np.arange(len(present))[::-1], [BUCKET_COLORS[letter][0] for letter in present])
    ax.set_ylim(-0.5, len(present) - 0.5)
    ax.tick_params(length=0)
    ax.tick_params(axis="y", labelsize=MIN_TEXT_PT)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _short(name: str) -> str:
    """``name`` cut to ``_NAME_CHARS`` characters."""
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"



def _unit_square(curves: Mapping[str, Any], diagonal: str) -> tuple[Figure, Any, np.ndarray]:
    """The axis a rate-against-rate plot draws on (reliability, ROC): refuses no curves, draws the dashed
    diagonal labelled ``diagonal``, and gives one colour per curve."""
    if not curves:
        raise ValueError("curves is empty")
    fig, ax = plt.subplots(figsize=figure_size(WIDTH), layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", label=diagonal)
    return fig, ax, class_colors(len(curves))


@print_style
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
    fig, ax, colors = _unit_square(curves, "perfect calibration")
    for k, (name, curve) in enumerate(curves.items()):
        curve = curve.get("curve", curve)
        edges = np.asarray(curve["bin_edges"], dtype=np.float64)
        accuracy = np.asarray(curve["accuracy"], dtype=np.float64)
        confidence = np.asarray(curve["confidence"], dtype=np.float64)
        width = np.diff(edges) / len(curves)
        ax.bar(edges[:-1] + k * width, np.nan_to_num(accuracy), width=width, align="edge",
               color=colors[k], alpha=0.3, edgecolor=colors[k], label="_nolegend_")
        filled = np.asarray(curve["count"]) > 0
        ax.plot(confidence[filled], accuracy[filled], marker=MARKERS[k % len(MARKERS)], color=colors[k],
                label=f"{name} (ECE {ece_of_curve(curve):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (score)", ylabel="accuracy",
           title="reliability of detection scores")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    return fig



@print_style
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
    fig, ax = plt.subplots(figsize=figure_size(2.4), layout="constrained")
    ax.hist(known, bins=edges, density=bool(known.size), alpha=0.6,
            label=f"known ({known.size})")
    ax.hist(unknown, bins=edges, density=bool(unknown.size), alpha=0.6, hatch=HATCH,
            label=f"unknown ({unknown.size})")
    ax.set(xlabel=xlabel, ylabel="density", title=title or "known vs unknown")
    ax.legend()
    return fig


@print_style
def plot_roc(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """ROC curves of unknown detection (unknown is the positive class).

    Args:
        curves: name -> :func:`dlde.analysis.openset.roc_curve` dict (``fpr``, ``tpr``, ``auroc``).

    Returns:
        Figure with one axis: the chance diagonal, then one line per curve labelled with its
        AUROC.
    """
    fig, ax, colors = _unit_square(curves, "chance")
    for k, (name, curve) in enumerate(curves.items()):
        ax.plot(to_numpy(curve["fpr"]), to_numpy(curve["tpr"]), color=colors[k], marker=MARKERS[k % len(MARKERS)],
                markevery=0.1, markersize=5, label=f"{name} (AUROC {float(curve['auroc']):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (known flagged)",
           ylabel="true positive rate (unknown flagged)", title="unknown-object ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return fig

