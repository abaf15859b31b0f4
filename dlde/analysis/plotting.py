"""Figures for training curves, tracked class means, embeddings and detections.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` and never calls
``plt.show``; pass it to :func:`save_figure` (which closes it) or display it in a
notebook. Class ``c`` is drawn in ``class_colors(C)[c]`` in every figure. Inputs may be
numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .embeddings import _to_numpy

__all__ = [
    "class_colors",
    "plot_training_curves",
    "plot_angular_drift",
    "plot_cosine_heatmaps",
    "plot_concentration",
    "plot_embedding_2d",
    "plot_sphere",
    "plot_cosine_histograms",
    "draw_detections",
    "detection_grid",
    "save_figure",
    "plot_reliability",
    "plot_per_class_ap",
    "plot_score_histograms",
    "plot_roc",
    "plot_retrieval_grid",
]

# Metadata that would otherwise embed a timestamp or version string in the file.
_DETERMINISTIC_METADATA = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "Producer": None},
    "svg": {"Date": None},
}


def class_colors(num_classes: int) -> np.ndarray:
    """Categorical colors, one per class.

    Args:
        num_classes: C.

    Returns:
        (C, 4) RGBA rows: tab10 for C <= 10, tab20 for C <= 20, evenly spaced turbo beyond.
    """
    if num_classes <= 10:
        return colormaps["tab10"](np.arange(num_classes))
    if num_classes <= 20:
        return colormaps["tab20"](np.arange(num_classes))
    return colormaps["turbo"](np.linspace(0.0, 1.0, num_classes))


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    return list(class_names)


def _labels(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64).reshape(-1)


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
    steps, to_final = _to_numpy(steps), _to_numpy(to_final)
    num_classes = steps.shape[1]
    names, colors = _names(class_names, num_classes), class_colors(num_classes)
    fig, (ax_step, ax_final) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for c in range(num_classes):
        ax_step.plot(np.arange(1, steps.shape[0] + 1), steps[:, c], marker=".",
                     color=colors[c], label=names[c])
        ax_final.plot(np.arange(to_final.shape[0]), to_final[:, c], marker=".",
                      color=colors[c], label=names[c])
    ax_step.set(title="step per epoch", xlabel="epoch", ylabel="degrees")
    ax_final.set(title="angle to final mean", xlabel="epoch", ylabel="degrees")
    for ax in (ax_step, ax_final):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_final.legend(fontsize="small", ncols=max(1, num_classes // 12))
    return fig


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
    mats = [_to_numpy(first), _to_numpy(last)]
    num_classes = mats[0].shape[0]
    names = _names(class_names, num_classes)
    cmap = colormaps["RdBu_r"].with_extremes(bad="0.8")
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    for ax, mat, title in zip(axes, mats, titles):
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=-1.0, vmax=1.0)
        ax.set_title(title)
        ax.set_xticks(np.arange(num_classes), names, rotation=90)
        ax.set_yticks(np.arange(num_classes), names)
        if num_classes <= 12:
            for (i, j), value in np.ndenumerate(mat):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=list(axes), label="cosine", shrink=0.8)
    return fig


def plot_concentration(kappa_history: Any, class_names: Sequence[str] | None) -> Figure:
    """Estimated concentration κ̂ of each class per epoch, on a log axis.

    Args:
        kappa_history: (E+1, C) κ̂ (from ``concentration``); NaN and non-positive
            values are not drawn.
        class_names: C names, or None.

    Returns:
        Figure with one axis, one line per class.
    """
    kappa = _to_numpy(kappa_history)
    num_classes = kappa.shape[1]
    names, colors = _names(class_names, num_classes), class_colors(num_classes)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    kappa = np.where(kappa > 0, kappa, np.nan)
    for c in range(num_classes):
        ax.plot(np.arange(kappa.shape[0]), kappa[:, c], marker=".", color=colors[c],
                label=names[c])
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="class concentration", xlabel="epoch", ylabel="κ̂ (vMF)")
    ax.legend(fontsize="small", ncols=max(1, num_classes // 12))
    return fig


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
    points, labels = _to_numpy(points), _labels(labels)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    names, colors = _names(class_names, num_classes), class_colors(num_classes)
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=point_size, color=colors[c], alpha=0.7,
                   linewidths=0, label=names[c])
    handles, _ = ax.get_legend_handles_labels()
    if mean_points is not None:
        mean_points = _to_numpy(mean_points)
        ok = np.isfinite(mean_points).all(axis=1)
        ax.scatter(mean_points[ok, 0], mean_points[ok, 1], s=300, marker="*",
                   c=colors[ok], edgecolors="black", linewidths=1.2, zorder=3)
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=12,
                              markerfacecolor="white", markeredgecolor="black",
                              label="class mean"))
    ax.set(xticks=[], yticks=[], title="embeddings (UMAP)")
    ax.legend(handles=handles, fontsize="small", loc="best")
    return fig


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
    xyz, labels = _to_numpy(xyz), _labels(labels)
    num_classes = len(class_names) if class_names is not None else int(labels.max(initial=-1)) + 1
    names, colors = _names(class_names, num_classes), class_colors(num_classes)
    fig = plt.figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    theta, phi = np.meshgrid(np.linspace(0, np.pi, 13), np.linspace(0, 2 * np.pi, 25))
    ax.plot_wireframe(np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta),
                      color="0.6", linewidth=0.4, alpha=0.3)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(xyz[sel, 0], xyz[sel, 1], xyz[sel, 2], s=point_size, color=colors[c],
                   alpha=0.8, depthshade=False, label=names[c])
    if mean_xyz is not None:
        m = _to_numpy(mean_xyz)
        norm = np.linalg.norm(m, axis=1)
        ok = np.isfinite(norm) & (norm > 0)
        u = m[ok] / norm[ok, None]
        if arrows:
            zeros = np.zeros(len(u))
            ax.quiver(zeros, zeros, zeros, u[:, 0], u[:, 1], u[:, 2], colors=colors[ok],
                      linewidths=2.5, arrow_length_ratio=0.12)
        else:
            ax.scatter(u[:, 0], u[:, 1], u[:, 2], s=250, marker="*", c=colors[ok],
                       edgecolors="black", depthshade=False)
    lim = (-1.05, 1.05)
    ax.set(xlim=lim, ylim=lim, zlim=lim, xlabel="x", ylabel="y", zlabel="z")
    ax.set_box_aspect((1, 1, 1))
    ax.legend(fontsize="small", markerscale=2, loc="upper left")
    return fig


def plot_cosine_histograms(own: Any, nearest_other: Any, *, bins: int = 40) -> Figure:
    """Overlaid histograms of the cosine to the own mean and to the nearest other mean.

    Args:
        own: (N,) cosine to the own class mean (from ``cosine_margins``); NaN skipped.
        nearest_other: (N,) max cosine to another class mean; NaN skipped.
        bins: number of bins over [-1, 1].

    Returns:
        Figure with one axis; the title gives the fraction with own > nearest other.
    """
    own, other = _to_numpy(own).ravel(), _to_numpy(nearest_other).ravel()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.hist(own[np.isfinite(own)], bins=edges, alpha=0.6, label="own class mean")
    ax.hist(other[np.isfinite(other)], bins=edges, alpha=0.6, label="nearest other mean")
    both = np.isfinite(own) & np.isfinite(other)
    title = "cosine to class means"
    if both.any():
        title += f" (own > other: {np.mean(own[both] > other[both]):.1%})"
    ax.set(xlim=(-1, 1), xlabel="cosine", ylabel="anchors", title=title)
    ax.legend()
    return fig


def _image_hwc(image: Any) -> np.ndarray:
    """Returns an image as (H, W, 3) float in [0, 1] or (H, W) for grayscale."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    is_uint8 = image.dtype == np.uint8
    img = image.astype(np.float64)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise ValueError(f"image must be (3, H, W), (H, W, 3) or (H, W); got {img.shape}")
    if is_uint8:
        img = img / 255.0
    return np.clip(img, 0.0, 1.0)


#: Label of a detection flagged as an unknown object; drawn dotted in grey as "unknown".
UNKNOWN_LABEL = -1
UNKNOWN_COLOR = (0.55, 0.55, 0.55)


def _draw_on(ax, image, boxes, labels, scores, names, colors, *, gt_boxes, score_thresh) -> None:
    img = _image_hwc(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    if gt_boxes is not None:
        for x1, y1, x2, y2 in _to_numpy(gt_boxes).reshape(-1, 4):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                                   linestyle="--", linewidth=1.5, path_effects=outline))
    boxes = _to_numpy(boxes).reshape(-1, 4)
    labels, scores = _labels(labels), _to_numpy(scores).reshape(-1)
    keep = scores >= score_thresh
    for (x1, y1, x2, y2), label, score in zip(boxes[keep], labels[keep], scores[keep]):
        unknown = label == UNKNOWN_LABEL  # flagged far from every class mean (dlde.analysis.inspection)
        color = UNKNOWN_COLOR if unknown else colors[label]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                               linewidth=2, linestyle=":" if unknown else "-"))
        ax.text(x1, y1, f"{'unknown' if unknown else names[label]} {score:.2f}", fontsize=7, color="white",
                va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})
    ax.set_axis_off()


def draw_detections(
    image: Any,
    boxes: Any,
    labels: Any,
    scores: Any,
    class_names: Sequence[str],
    *,
    gt_boxes: Any | None = None,
    score_thresh: float = 0.0,
) -> Figure:
    """One image with its detections.

    Args:
        image: (3, H, W) float in [0, 1], or (H, W, 3) uint8 (or float), or (H, W).
        boxes: (N, 4) as x1, y1, x2, y2 in pixels.
        labels: (N,) class ids indexing ``class_names``.
        scores: (N,) scores; boxes below ``score_thresh`` are not drawn.
        class_names: C names.
        gt_boxes: optional (M, 4) ground-truth boxes, drawn dashed.
        score_thresh: minimum score to draw.

    Returns:
        Figure with one axis holding one Rectangle patch per drawn box (GT included)
        and a "name score" label per detection.
    """
    img = _image_hwc(image)
    fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / img.shape[1] + 0.2),
                           layout="constrained")
    _draw_on(ax, img, boxes, labels, scores, list(class_names), class_colors(len(class_names)),
             gt_boxes=gt_boxes, score_thresh=score_thresh)
    return fig


def detection_grid(
    samples: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    cols: int = 4,
    score_thresh: float = 0.0,
) -> Figure:
    """Several images with detections in one figure.

    Args:
        samples: dicts with ``image, boxes, labels, scores`` and optional ``gt_boxes``,
            in the formats of :func:`draw_detections`.
        class_names: C names.
        cols: images per row.
        score_thresh: minimum score to draw.

    Returns:
        Figure with one axis per sample (unused grid cells are removed).
    """
    if not samples:
        raise ValueError("samples is empty")
    cols = min(cols, len(samples))
    rows = math.ceil(len(samples) / cols)
    first = _image_hwc(samples[0]["image"])
    aspect = first.shape[0] / first.shape[1]  # H / W sets the cell height
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 3.5 * rows * aspect + 0.2),
                             squeeze=False, layout="constrained")
    names, colors = list(class_names), class_colors(len(class_names))
    for ax, sample in zip(axes.flat, samples):
        _draw_on(ax, sample["image"], sample["boxes"], sample["labels"], sample["scores"],
                 names, colors, gt_boxes=sample.get("gt_boxes"), score_thresh=score_thresh)
    for ax in axes.flat[len(samples):]:
        ax.remove()
    return fig


def save_figure(
    fig: Figure,
    directory: str | Path,
    name: str,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
) -> list[Path]:
    """Writes ``directory/name.<fmt>`` for each format and closes the figure.

    Timestamps and version strings are left out of the file metadata, so saving the same
    figure again gives identical bytes.

    Args:
        fig: the figure.
        directory: output folder, created if missing.
        name: file stem.
        formats: file extensions understood by matplotlib.
        dpi: resolution of raster formats.

    Returns:
        The written paths, in the order of ``formats``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            path = directory / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_DETERMINISTIC_METADATA.get(fmt))
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


# ------------------------------------------------------------------ calibration, open set, retrieval
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
    from .calibration import ece_of_curve

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
    known, unknown = _to_numpy(known).ravel(), _to_numpy(unknown).ravel()
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
        ax.plot(_to_numpy(curve["fpr"]), _to_numpy(curve["tpr"]), color=colors[k],
                label=f"{name} (AUROC {float(curve['auroc']):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (known flagged)",
           ylabel="true positive rate (unknown flagged)", title="unknown-object ROC")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_retrieval_grid(
    query_crops: Sequence[Any],
    result_crops: Sequence[Sequence[Any]],
    *,
    query_labels: Any | None = None,
    result_labels: Any | None = None,
    result_scores: Any | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Image crops of queries (first column) and their retrieved boxes (next columns).

    Args:
        query_crops: Q images (formats of :func:`draw_detections`, e.g. from
            :func:`dlde.analysis.retrieval.crop_boxes`).
        result_crops: Q rows of k images each, most similar first.
        query_labels: optional (Q,) class ids; with ``result_labels`` a result's frame is
            green when its label equals the query's and red otherwise.
        result_labels: optional (Q, k) class ids of the results.
        result_scores: optional (Q, k) similarities, written under each result.
        class_names: names indexed by the labels (default: the ids).

    Returns:
        Figure with a Q x (k + 1) grid of axes.
    """
    rows = len(query_crops)
    if rows == 0 or len(result_crops) != rows:
        raise ValueError(f"need Q >= 1 query crops and Q rows of results, got {rows} and "
                         f"{len(result_crops)}")
    k = max(len(r) for r in result_crops)
    name = (lambda c: class_names[c]) if class_names is not None else str
    q_labels = None if query_labels is None else _labels(query_labels)
    r_labels = None if result_labels is None else _labels(result_labels).reshape(rows, -1)
    r_scores = None if result_scores is None else _to_numpy(result_scores).reshape(rows, -1)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.8 * rows), squeeze=False,
                             layout="constrained")
    for q in range(rows):  # a small grid of thumbnails
        img = _image_hwc(query_crops[q])
        axes[q, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
        axes[q, 0].set_title("query" + ("" if q_labels is None else f" {name(q_labels[q])}"),
                             fontsize=8)
        for j in range(k):
            ax = axes[q, j + 1]
            if j >= len(result_crops[q]):
                ax.set_axis_off()
                continue
            img = _image_hwc(result_crops[q][j])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
            parts = []
            if r_labels is not None:
                parts.append(name(r_labels[q, j]))
            if r_scores is not None:
                parts.append(f"{r_scores[q, j]:.2f}")
            ax.set_title(" ".join(parts), fontsize=8)
            if q_labels is not None and r_labels is not None:
                color = "tab:green" if r_labels[q, j] == q_labels[q] else "tab:red"
                for spine in ax.spines.values():
                    spine.set(edgecolor=color, linewidth=2.5)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[q, 0].set_ylabel(f"#{q}", fontsize=8)
    return fig
