"""Figures of the tracked class means and the embeddings around them.

How the means move and spread during training (angular drift, cosine matrices, concentration)
and where the embeddings lie (a 2-D layout, the unit sphere, cosine margins). Each function
returns a :class:`matplotlib.figure.Figure` one column wide, but the two side-by-side panels of
the drift and the cosine matrices, which take two; class ``c`` is drawn in
:func:`dlde.plots.plotting.class_colors` ``(C)[c]`` and named in a legend beside the axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dlde.analysis.embeddings import to_numpy

from .plotting import HATCH, MIN_TEXT_PT, as_labels, class_colors, display_names, figure_size, print_style

__all__ = [
    "plot_angular_drift",
    "plot_cosine_heatmaps",
    "plot_concentration",
    "plot_embedding_2d",
    "plot_sphere",
    "plot_cosine_histograms",
]

#: Most entries of a class legend in one column beside the axes (more go under them).
_LEGEND_ROWS = 13


@print_style
def plot_angular_drift(steps: Any, to_final: Any, class_names: Sequence[str] | None) -> Figure:
    """How far each class mean moves per epoch and how far it is from its final direction.

    Args:
        steps: (E, C) degrees moved between epochs e−1 and e (from ``angular_steps``);
            drawn at epochs 1..E.
        to_final: (E+1, C) degrees to the final mean (from ``angle_to_final``); epochs 0..E.
        class_names: C names, or None for "0", "1", ...

    Returns:
        Figure with two axes, one line per class in each.
    """
    steps, to_final = to_numpy(steps), to_numpy(to_final)
    num_classes = steps.shape[1]
    names, colors = display_names(class_names, num_classes), class_colors(num_classes)
    fig, (ax_step, ax_final) = plt.subplots(1, 2, figsize=figure_size(2.6, columns=2), layout="constrained")
    for c in range(num_classes):
        ax_step.plot(np.arange(1, steps.shape[0] + 1), steps[:, c], marker=".",
                     color=colors[c], label=names[c])
        ax_final.plot(np.arange(to_final.shape[0]), to_final[:, c], marker=".",
                      color=colors[c], label=names[c])
    ax_step.set(title="step per epoch", xlabel="epoch", ylabel="degrees")
    ax_final.set(title="angle to final mean", xlabel="epoch", ylabel="degrees")
    for ax in (ax_step, ax_final):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _class_legend(fig, ax_final.get_legend_handles_labels()[0])
    return fig


def _class_legend(fig: Figure, handles: list, **kwargs: Any) -> None:
    """The legend naming the classes: one column right of the axes, or four under them for more than
    :data:`_LEGEND_ROWS` entries."""
    if len(handles) <= _LEGEND_ROWS:
        fig.legend(handles=handles, loc="outside right upper", **kwargs)
    else:
        fig.legend(handles=handles, loc="outside lower center", ncols=4, **kwargs)


@print_style
def plot_cosine_heatmaps(
    first: Any,
    last: Any,
    class_names: Sequence[str] | None,
    *,
    titles: tuple[str, str] = ("first epoch", "last epoch"),
) -> Figure:
    """Side-by-side cosine matrices between class means, sharing one colorbar.

    Args:
        first: (C, C) cosines (from ``cosine_matrix``); NaN cells are drawn gray.
        last: (C, C) cosines.
        class_names: C names, or None.
        titles: titles of the two panels.

    Returns:
        Figure with two heatmap axes and one colorbar axis. Values are written in the
        cells when C <= 12.
    """
    mats = [to_numpy(first), to_numpy(last)]
    num_classes = mats[0].shape[0]
    names = display_names(class_names, num_classes)
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.8")
    fig, axes = plt.subplots(1, 2, figsize=figure_size(3.4, columns=2), layout="constrained")
    for ax, mat, title in zip(axes, mats, titles):
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=-1.0, vmax=1.0)
        ax.set_title(title)
        ax.set_xticks(np.arange(num_classes), names, rotation=90)
        ax.set_yticks(np.arange(num_classes), names)
        if num_classes <= 12:
            for (i, j), value in np.ndenumerate(mat):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=MIN_TEXT_PT,
                            color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=list(axes), label="cosine", shrink=0.8)
    return fig


@print_style
def plot_concentration(kappa_history: Any, class_names: Sequence[str] | None) -> Figure:
    """Estimated concentration κ̂ of each class per epoch, on a log axis.

    Args:
        kappa_history: (E+1, C) κ̂ (from ``concentration``); NaN and non-positive
            values are not drawn.
        class_names: C names, or None.

    Returns:
        Figure with one axis, one line per class.
    """
    kappa = to_numpy(kappa_history)
    num_classes = kappa.shape[1]
    names, colors = display_names(class_names, num_classes), class_colors(num_classes)
    fig, ax = plt.subplots(figsize=figure_size(2.6), layout="constrained")
    kappa = np.where(kappa > 0, kappa, np.nan)
    for c in range(num_classes):
        ax.plot(np.arange(kappa.shape[0]), kappa[:, c], marker=".", color=colors[c],
                label=names[c])
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="class concentration", xlabel="epoch", ylabel="κ̂ (vMF)")
    _class_legend(fig, ax.get_legend_handles_labels()[0])
    return fig


@print_style
def plot_embedding_2d(
    points: Any,
    labels: Any,
    mean_points: Any | None,
    class_names: Sequence[str] | None,
    *,
    point_size: float = 8.0,
) -> Figure:
    """2-D scatter of embeddings colored by class, with class means as stars.

    Args:
        points: (N, 2) layout coordinates (e.g. from ``project_with_means``).
        labels: (N,) class ids in [0, C).
        mean_points: (C, 2) mean coordinates (NaN rows are skipped), or None.
        class_names: C names, or None (then C = max label + 1).
        point_size: marker area of the points.

    Returns:
        Figure with one axis: one scatter per class present, one star scatter for means.
    """
    points, labels = to_numpy(points), as_labels(labels)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    names, colors = display_names(class_names, num_classes), class_colors(num_classes)
    fig, ax = plt.subplots(figsize=figure_size(2.8), layout="constrained")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=point_size, color=colors[c], alpha=0.7,
                   linewidths=0, label=names[c])
    handles, _ = ax.get_legend_handles_labels()
    if mean_points is not None:
        mean_points = to_numpy(mean_points)
        ok = np.isfinite(mean_points).all(axis=1)
        ax.scatter(mean_points[ok, 0], mean_points[ok, 1], s=110, marker="*",
                   c=colors[ok], edgecolors="black", linewidths=0.8, zorder=3)
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=8,
                              markerfacecolor="white", markeredgecolor="black",
                              label="class mean"))
    ax.set(xticks=[], yticks=[], title="embeddings (UMAP)")
    _class_legend(fig, handles, markerscale=1.5)
    return fig


@print_style
def plot_sphere(
    xyz: Any,
    labels: Any,
    mean_xyz: Any | None,
    class_names: Sequence[str] | None,
    *,
    arrows: bool = True,
    point_size: float = 6.0,
) -> Figure:
    """Points on the unit sphere in 3-D, with class means as arrows from the origin.

    Works for ``umap_sphere`` output and for raw 3-D embeddings alike.

    Args:
        xyz: (N, 3) points (unit norm for sphere layouts).
        labels: (N,) class ids in [0, C).
        mean_xyz: (C, 3) class means (NaN or zero rows skipped), or None. They are
            normalized to unit length so arrows end on the sphere.
        class_names: C names, or None (then C = max label + 1).
        arrows: draw means as arrows (``ax.quiver``); otherwise as star markers.
        point_size: marker area of the points.

    Returns:
        Figure with one 3-D axis.
    """
    xyz, labels = to_numpy(xyz), as_labels(labels)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    names, colors = display_names(class_names, num_classes), class_colors(num_classes)
    fig = plt.figure(figsize=figure_size(2.8), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    theta, phi = np.meshgrid(np.linspace(0, np.pi, 13), np.linspace(0, 2 * np.pi, 25))
    ax.plot_wireframe(np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta),
                      color="0.6", linewidth=0.4, alpha=0.3)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(xyz[sel, 0], xyz[sel, 1], xyz[sel, 2], s=point_size, color=colors[c],
                   alpha=0.8, depthshade=False, label=names[c])
    if mean_xyz is not None:
        m = to_numpy(mean_xyz)
        norm = np.linalg.norm(m, axis=1)
        ok = np.isfinite(norm) & (norm > 0)
        u = m[ok] / norm[ok, None]
        if arrows:
            zeros = np.zeros(len(u))
            ax.quiver(zeros, zeros, zeros, u[:, 0], u[:, 1], u[:, 2], colors=colors[ok],
                      linewidths=2.5, arrow_length_ratio=0.12)
        else:
            ax.scatter(u[:, 0], u[:, 1], u[:, 2], s=90, marker="*", c=colors[ok],
                       edgecolors="black", depthshade=False)
    lim = (-1.05, 1.05)
    ax.set(xlim=lim, ylim=lim, zlim=lim, xlabel="x", ylabel="y", zlabel="z")
    ax.set_box_aspect((1, 1, 1), zoom=0.85)  # room for the z label beside the legend
    _class_legend(fig, ax.get_legend_handles_labels()[0], markerscale=2)
    return fig


@print_style
def plot_cosine_histograms(own: Any, nearest_other: Any, *, bins: int = 40) -> Figure:
    """Overlaid histograms of the cosine to the own mean and to the nearest other mean.

    Args:
        own: (N,) cosine to the own class mean (from ``cosine_margins``); NaN skipped.
        nearest_other: (N,) max cosine to another class mean; NaN skipped.
        bins: number of bins over [-1, 1].

    Returns:
        Figure with one axis; the title gives the fraction with own > nearest other.
    """
    own, other = to_numpy(own).ravel(), to_numpy(nearest_other).ravel()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=figure_size(2.4), layout="constrained")
    ax.hist(own[np.isfinite(own)], bins=edges, alpha=0.6, label="own class mean")
    ax.hist(other[np.isfinite(other)], bins=edges, alpha=0.6, hatch=HATCH, label="nearest other mean")
    both = np.isfinite(own) & np.isfinite(other)
    title = "cosine to class means"
    if both.any():
        title += f" (own > other: {np.mean(own[both] > other[both]):.1%})"
    ax.set(xlim=(-1, 1), xlabel="cosine", ylabel="anchors", title=title)
    ax.legend()
    return fig
