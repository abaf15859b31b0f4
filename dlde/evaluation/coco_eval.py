"""COCO box AP of detections on a :class:`dlde.data.coco.CocoDetection` dataset (pycocotools).

:func:`coco_metrics` is built from four steps that :mod:`dlde.evaluation.lvis_eval` reuses with
LVIS's rules between them: :func:`ground_truth`, :func:`results_array`, :func:`run_cocoeval`
(per-image matching) and :func:`summarize` (accumulation and the averages).
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["COCO_MAX_DETECTIONS", "coco_metrics", "ground_truth", "results_array", "run_cocoeval", "summarize"]

#: Detections per image COCOeval keeps by default (pycocotools' own).
COCO_MAX_DETECTIONS = 100

# Metric name -> (IoU threshold or None for the mean over .50:.95, area range label).
_METRICS = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "AP_small": (None, "small"),
    "AP_medium": (None, "medium"),
    "AP_large": (None, "large"),
}


def coco_metrics(dataset, detections: list[dict], *, max_detections: int = COCO_MAX_DETECTIONS) -> dict:
    """Scores detections against the dataset's ground truth with pycocotools' COCOeval.

    Ground truth is read from ``dataset.annotation_file``; boxes of zero width or height are
    dropped from it, as :class:`dlde.data.coco.CocoDetection` drops them from its targets, and
    crowd boxes are kept as COCOeval's "ignore" regions.

    Args:
        dataset: A :class:`dlde.data.coco.CocoDetection` (needs ``annotation_file``,
            ``image_ids``, ``category_ids``, ``class_names``).
        detections: One dict per dataset index with ``boxes`` (N, 4) as x1, y1, x2, y2 in
            ORIGINAL image pixels, ``scores`` (N,) and ``labels`` (N,) contiguous labels
            0..C-1 (tensors or arrays). An empty list means no detections at all.
        max_detections: Detections per image and class COCOeval keeps (highest scores first).

    Returns:
        ``AP`` (AP@[.5:.95]), ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large`` as
        floats, and ``per_class``: class name -> AP@[.5:.95] for classes with ground truth.
        With no detections the APs are 0.0. An area range without any ground truth box
        (e.g. no large objects) gives NaN instead of pycocotools' -1.
    """
    results = results_array(dataset, detections)  # (D, 7)
    coco_eval = run_cocoeval(ground_truth(dataset), results, dataset, max_detections)
    return summarize(coco_eval, dataset)


def ground_truth(dataset) -> COCO:
    """The ground truth of ``dataset.annotation_file`` as a pycocotools ``COCO``, made safe for
    COCOeval (ids, area and ``iscrowd`` filled in where missing, degenerate boxes dropped)."""
    gt = COCO()
    gt.dataset = _ground_truth(dataset.annotation_file)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def run_cocoeval(gt: COCO, results: np.ndarray, dataset, max_detections: int) -> COCOeval:
    """Matches the detections ``results`` (D, 7) (see :func:`results_array`) to ``gt`` image by
    image: a ``COCOeval`` over the dataset's images and categories after ``evaluate()``, before
    ``accumulate()`` (its ``evalImgs`` can still be changed)."""
    if len(results):
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(results)
    else:  # loadRes cannot take an empty list; an empty result set scores 0
        dt = COCO()
        dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                      "annotations": []}
        with contextlib.redirect_stdout(io.StringIO()):
            dt.createIndex()

    coco_eval = COCOeval(gt, dt, iouType="bbox")
    coco_eval.params.imgIds = list(dataset.image_ids)
    coco_eval.params.catIds = sorted(dataset.category_ids)
    coco_eval.params.maxDets = [1, 10, int(max_detections)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
    return coco_eval


def summarize(coco_eval: COCOeval, dataset) -> dict:
    """Accumulates an evaluated ``COCOeval`` and averages it: the metrics of :func:`coco_metrics`."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.accumulate()

    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M max dets);
    # max-dets index -1 is max_detections; -1 entries mark "no ground truth". Averaged here
    # as COCOeval.summarize() does (which only supports max_detections=100 for "AP").
    precision = coco_eval.eval["precision"]
    params = coco_eval.params
    metrics: dict = {}
    for key, (iou, area) in _METRICS.items():
        p = precision[:, :, :, params.areaRngLbl.index(area), -1]
        if iou is not None:
            p = p[np.isclose(params.iouThrs, iou)]
        p = p[p > -1]
        metrics[key] = float(p.mean()) if p.size else math.nan
    per_class = {}
    label_of = {cat_id: label for label, cat_id in enumerate(dataset.category_ids)}
    for k, cat_id in enumerate(coco_eval.params.catIds):  # loop over classes, once per eval
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            per_class[dataset.class_names[label_of[cat_id]]] = float(p.mean())
    metrics["per_class"] = per_class
    return metrics


def _ground_truth(annotation_file) -> dict:
    """Loads the COCO JSON and makes it safe for COCOeval (ids, area, degenerate boxes)."""
    with open(annotation_file) as f:
        data = json.load(f)
    annotations = []
    for i, ann in enumerate(data["annotations"]):  # parsing records, not a hot path
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            continue
        ann = dict(ann)
        ann.setdefault("id", i + 1)
        ann.setdefault("area", w * h)
        ann.setdefault("iscrowd", 0)
        annotations.append(ann)
    ids = [ann["id"] for ann in annotations]
    if len(set(ids)) != len(ids):  # COCOeval needs unique ids; renumber if the file's clash
        for i, ann in enumerate(annotations):
            ann["id"] = i + 1
    return {"images": data["images"], "categories": data["categories"],
            "annotations": annotations}


def results_array(dataset, detections: list[dict]) -> np.ndarray:
    """Packs detections (one dict per dataset index, as :func:`coco_metrics` takes them) as (D, 7)
    rows ``image_id, x, y, w, h, score, category_id``, checking them."""
    if len(detections) not in (0, len(dataset)):
        raise ValueError(
            f"need one detection dict per dataset item ({len(dataset)}), got {len(detections)}"
        )
    category_ids = np.asarray(dataset.category_ids, dtype=np.float64)
    parts = []
    for index, det in enumerate(detections):  # loop over images
        boxes = _as_numpy(det["boxes"], "boxes", index).reshape(-1, 4)
        scores = _as_numpy(det["scores"], "scores", index).reshape(-1)
        labels = _as_numpy(det["labels"], "labels", index).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"detections[{index}]: boxes, scores and labels differ in length "
                f"({len(boxes)}, {len(scores)}, {len(labels)})"
            )
        if len(labels) and (
            labels.min() < 0 or labels.max() >= len(category_ids) or (labels % 1).any()
        ):
            raise ValueError(
                f"detections[{index}]: labels must be integers in [0, {len(category_ids)})"
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"detections[{index}]: boxes and scores must be finite")
        rows = np.empty((len(boxes), 7), dtype=np.float64)
        rows[:, 0] = dataset.image_ids[index]
        rows[:, 1:3] = boxes[:, :2]
        rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]  # x1, y1, x2, y2 -> x, y, w, h
        rows[:, 5] = scores
        rows[:, 6] = category_ids[labels.astype(np.int64)]
        parts.append(rows)
    return np.concatenate(parts) if parts else np.zeros((0, 7))


def _as_numpy(value, name: str, index: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"detections[{index}]: '{name}' is not numeric") from None

