"""Images with their detections, and retrieval results as image crops.

Images may be (3, H, W) float in [0, 1], (H, W, 3) uint8 or float, or (H, W) grayscale, as numpy
arrays or torch tensors; boxes are (N, 4) as x1, y1, x2, y2 in pixels. Each function returns a
:class:`matplotlib.figure.Figure`: one image one column wide, grids of images two columns wide
(the full text width, shared by the grid's columns); class ``c`` is drawn in
:func:`dlde.plots.plotting.class_colors` ``(C)[c]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dlde.analysis.embeddings import to_numpy
from dlde.inference.detect import UNKNOWN_LABEL

from .plotting import FONT_PT, TEXT_WIDTH, WIDTH, as_labels, class_colors, figure_size, print_style

__all__ = ["UNKNOWN_COLOR", "draw_detections", "detection_grid", "plot_retrieval_grid"]

#: Color of a detection flagged as an unknown object (label :data:`dlde.inference.detect.UNKNOWN_LABEL`),
#: drawn dotted and named "unknown".
UNKNOWN_COLOR = (0.55, 0.55, 0.55)


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


def _draw_on(ax, image, boxes, labels, scores, names, colors, *, gt_boxes, score_thresh) -> None:
    img = _image_hwc(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    if gt_boxes is not None:
        for x1, y1, x2, y2 in to_numpy(gt_boxes).reshape(-1, 4):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                                   linestyle="--", linewidth=1.5, path_effects=outline))
    boxes = to_numpy(boxes).reshape(-1, 4)
    labels, scores = as_labels(labels), to_numpy(scores).reshape(-1)
    keep = scores >= score_thresh
    for (x1, y1, x2, y2), label, score in zip(boxes[keep], labels[keep], scores[keep]):
        unknown = label == UNKNOWN_LABEL  # flagged far from every class mean (dlde.analysis.inspection)
        color = UNKNOWN_COLOR if unknown else colors[label]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                               linewidth=2, linestyle=":" if unknown else "-"))
        ax.text(x1, y1, f"{'unknown' if unknown else names[label]} {score:.2f}", color="white",
                va="bottom", clip_on=True,  # a long class name is cut at the image's edge, not drawn beside it
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})
    ax.set_axis_off()


@print_style
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
    fig, ax = plt.subplots(figsize=figure_size(WIDTH * img.shape[0] / img.shape[1] + 0.2), layout="constrained")
    _draw_on(ax, img, boxes, labels, scores, list(class_names), class_colors(len(class_names)),
             gt_boxes=gt_boxes, score_thresh=score_thresh)
    return fig


@print_style
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
    cell = TEXT_WIDTH / cols  # inches per image
    fig, axes = plt.subplots(rows, cols, figsize=figure_size(cell * rows * aspect + 0.2, columns=2),
                             squeeze=False, layout="constrained")
    names, colors = list(class_names), class_colors(len(class_names))
    for ax, sample in zip(axes.flat, samples):
        _draw_on(ax, sample["image"], sample["boxes"], sample["labels"], sample["scores"],
                 names, colors, gt_boxes=sample.get("gt_boxes"), score_thresh=score_thresh)
    for ax in axes.flat[len(samples):]:
        ax.remove()
    return fig


@print_style
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
    q_labels = None if query_labels is None else as_labels(query_labels)
    r_labels = None if result_labels is None else as_labels(result_labels).reshape(rows, -1)
    r_scores = None if result_scores is None else to_numpy(result_scores).reshape(rows, -1)
    cell = TEXT_WIDTH / (k + 1)  # inches per crop, and a line of title above it
    fig, axes = plt.subplots(rows, k + 1, figsize=figure_size((cell + 0.2) * rows, columns=2), squeeze=False,
                             layout="constrained")
    for q in range(rows):  # a small grid of thumbnails
        img = _image_hwc(query_crops[q])
        axes[q, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
        axes[q, 0].set_title("query" + ("" if q_labels is None else f" {name(q_labels[q])}"), fontsize=FONT_PT)
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
            ax.set_title(" ".join(parts), fontsize=FONT_PT)
            if q_labels is not None and r_labels is not None:
                color = "tab:green" if r_labels[q, j] == q_labels[q] else "tab:red"
                for spine in ax.spines.values():
                    spine.set(edgecolor=color, linewidth=2.5)
        for ax in axes[q]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[q, 0].set_ylabel(f"#{q}", fontsize=FONT_PT)
    return fig
