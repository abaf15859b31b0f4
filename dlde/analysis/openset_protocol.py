"""Unknown objects: base models on images that also hold classes they never saw (:func:`open_set_evaluation`).

On the digits, the base models of the few-shot protocol (:mod:`dlde.analysis.fewshot`, trained
on 0-6) meet validation images that also hold 7-9; each detection is scored with the unknown
scores of :mod:`dlde.analysis.openset` and counted by its metrics.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from dlde.data.coco import CocoDetection
from dlde.data.transforms import collate

from .calibration import DEFAULT_IOU, match_detections
from .inspection import device_of
from .openset import (
    DEFAULT_KNOWN_PRECISION,
    absolute_open_set_error,
    auroc,
    cosine_unknown_score,
    probability_unknown_score,
    roc_curve,
    unknown_recall_at_known_precision,
    wilderness_impact,
)
from .retrieval import box_embeddings

__all__ = ["WI_RECALL", "open_set_evaluation", "open_set_summary"]

#: Operating recall of ORE's wilderness impact.
WI_RECALL = 0.8


@torch.no_grad()
def open_set_evaluation(models: Mapping[str, nn.Module], dataset: CocoDetection, known_names: Sequence[str], *,
                        max_images: int | None = None, score_threshold: float | None = None, iou: float = DEFAULT_IOU,
                        precision: float = DEFAULT_KNOWN_PRECISION, batch_size: int = 32) -> dict[str, Any]:
    """Unknown-object detection by base models on images that also hold unknown classes.

    Every detection (``model.predict``: one label per box) is matched to the ground-truth object
    of any class with the highest IoU; at IoU >= ``iou`` it is *known* when that object's class is
    in ``known_names`` and *unknown* otherwise (unmatched detections are left out). Scores
    (:mod:`dlde.analysis.openset`): ``probability`` = 1 - max class probability (every head) and, for heads
    with an embedding space, ``cosine`` = 1 - the cosine of the box's embedding
    (:func:`dlde.analysis.retrieval.box_embeddings`) to the nearest class direction (DLDENet's tracked
    means, the learned prototypes). For those heads a detection whose box gets no anchor (a
    duplicate of another detected box under another class) is left out.

    Per model and score: AUROC, the ROC curve, unknown recall at ``precision`` known precision;
    per model: ORE's wilderness impact (precision of the known detections at recall 0.8 on the
    images without unknown objects vs on all images) and absolute open-set error (unknown objects
    detected as a known class), before and after flagging the detections whose primary score
    (cosine when there is one) exceeds the threshold of ``precision``.

    Args:
        models: name -> base detector whose classes are ``known_names`` (label order).
        dataset: images with known and unknown objects (e.g. the ten-digit validation set).
        known_names: class names of the models, names of ``dataset`` classes.
        max_images: first images only (None: all).
        score_threshold: smallest detection score kept (None: each model's ``score_threshold``).
        iou: IoU of a match.
        precision: known precision of the unknown-recall operating point.
        batch_size: images per forward pass.

    Returns:
        ``{"models": name -> metrics, "scores": name -> {score: {"known", "unknown"} arrays},
        "known_objects", "unknown_objects", "images"}``.
    """
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    known = torch.as_tensor([dataset.class_names.index(n) for n in known_names], dtype=torch.long)
    unknown_labels = [c for c in range(len(dataset.class_names)) if c not in known.tolist()]
    targets = [dataset.targets(i) for i in indices]
    closed = np.array([not torch.isin(t[:, 4].long(), torch.as_tensor(unknown_labels)).any() for t in targets])
    out: dict[str, Any] = {"models": {}, "scores": {}, "images": len(indices), "closed_images": int(closed.sum()),
                           "known_objects": int(sum(torch.isin(t[:, 4].long(), known).sum() for t in targets)),
                           "unknown_objects": int(sum((~torch.isin(t[:, 4].long(), known)).sum() for t in targets))}
    for name, model in models.items():  # a few models
        threshold = float(model.score_threshold if score_threshold is None else score_threshold)
        directions = model.class_directions()
        kinds = ["probability"] + (["cosine"] if directions is not None else [])
        per_image = _scored_detections(model, directions, dataset, indices, known, threshold, batch_size)
        kind_of = np.concatenate([_object_kind(d["boxes"], t, known, iou) for d, t in zip(per_image, targets)]) \
            if per_image else np.zeros(0, np.int64)
        metrics, scores = _score_metrics(per_image, kinds, kind_of, precision)
        primary = "cosine" if "cosine" in kinds else "probability"
        metrics["primary_score"] = primary
        metrics["wilderness_impact"] = _wilderness(per_image, targets, closed, known, iou)
        metrics["A-OSE"] = absolute_open_set_error(per_image, targets, unknown_labels, iou=iou)
        metrics["A-OSE_flagged"] = absolute_open_set_error(_flagged(per_image, primary, metrics[primary]["threshold"]),
                                                           targets, unknown_labels, iou=iou)
        metrics["known_detections"] = int((kind_of == 0).sum())
        metrics["unknown_detections"] = int((kind_of == 1).sum())
        out["models"][name], out["scores"][name] = metrics, scores
    return out


def _scored_detections(model: nn.Module, directions: Tensor | None, dataset: CocoDetection, indices: Sequence[int],
                       known: Tensor, threshold: float, batch_size: int) -> list[dict[str, Tensor]]:
    """Per image the detections scoring at least ``threshold``, in original pixels and dataset
    labels, with their unknown scores (``probability``, and ``cosine`` when ``directions`` (C, d))."""
    device = device_of(model)
    per_image = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        images, _ = collate([dataset[i] for i in chunk])
        images = images.to(device)
        predictions = model.predict(images)
        boxes = [p["boxes"][p["scores"] >= threshold] for p in predictions]
        embedded = box_embeddings(model, images, boxes) if directions is not None else [None] * len(chunk)
        for i, p, b, e in zip(chunk, predictions, boxes, embedded):  # loop over images
            keep = p["scores"] >= threshold
            if e is not None:  # a duplicate box (same box, other class) may get no anchor: left out
                usable = e.norm(dim=1) > 0
                keep[keep.clone()] = usable
                b, e = b[usable], e[usable]
            scale = dataset.meta(i)["scale"]
            det = {"boxes": (b / scale).cpu(), "scores": p["scores"][keep].cpu(),
                   "labels": known[p["labels"][keep].cpu()]}
            det["probability"] = probability_unknown_score(det["scores"][:, None]) if len(b) else torch.zeros(0)
            if e is not None:
                det["cosine"] = cosine_unknown_score(e.cpu(), directions.cpu()) if len(b) else torch.zeros(0)
            per_image.append(det)
    return per_image


def _score_metrics(per_image: Sequence[Mapping[str, Tensor]], kinds: Sequence[str], kind_of: np.ndarray,
                   precision: float) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Per score kind: AUROC, ROC curve and the operating point at ``precision`` known precision
    (NaN without both known and unknown detections), and the known and unknown score arrays."""
    metrics, scores = {}, {}
    for kind in kinds:
        values = torch.cat([d[kind] for d in per_image]).numpy() if per_image else np.zeros(0)
        k_scores, u_scores = values[kind_of == 0], values[kind_of == 1]
        scores[kind] = {"known": k_scores, "unknown": u_scores}
        if k_scores.size and u_scores.size:
            at = unknown_recall_at_known_precision(k_scores, u_scores, precision)
            metrics[kind] = {"auroc": auroc(k_scores, u_scores), "roc": roc_curve(k_scores, u_scores),
                             "unknown_recall": at["unknown_recall"], "known_recall": at["known_recall"],
                             "threshold": at["threshold"]}
        else:
            metrics[kind] = {"auroc": math.nan, "unknown_recall": math.nan, "known_recall": math.nan,
                             "threshold": math.nan}
    return metrics, scores


def _flagged(per_image: Sequence[Mapping[str, Tensor]], score: str, threshold: float) -> list[dict[str, Tensor]]:
    """The detections with label -1 where ``score`` exceeds ``threshold`` (none flagged when NaN)."""
    flagged = []
    for d in per_image:  # loop over images
        labels = d["labels"].clone()
        if math.isfinite(threshold):
            labels[d[score] > threshold] = -1
        flagged.append({"boxes": d["boxes"], "labels": labels})
    return flagged


def _object_kind(boxes: Tensor, target: Tensor, known: Tensor, iou: float) -> np.ndarray:
    """``(N,)`` per detection: 0 matches a known object, 1 an unknown one, -1 nothing (IoU < ``iou``)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if len(target) == 0:
        return np.full(len(boxes), -1, np.int64)
    best, which = box_iou(boxes.float(), target[:, :4].float()).max(dim=1)  # (N,)
    is_known = torch.isin(target[which, 4].long(), known)
    return torch.where(best >= iou, (~is_known).long(), torch.full_like(which, -1)).numpy()


def _precision_at_recall(scores: np.ndarray, correct: np.ndarray, objects: int, recall: float) -> float:
    """Interpolated precision at ``recall`` (the best precision at any recall >= it); NaN if never reached."""
    if objects == 0 or scores.size == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, tp.size + 1)
    reached = tp / objects >= recall - 1e-12
    return float(precision[reached].max()) if reached.any() else math.nan


def _wilderness(per_image: Sequence[Mapping[str, Tensor]], targets: Sequence[Tensor], closed: np.ndarray,
                known: Tensor, iou: float) -> float:
    """ORE's WI at recall :data:`WI_RECALL`: known-class precision on the closed images vs all images."""
    precisions = []
    for subset in (closed, np.ones_like(closed)):
        scores, correct, objects = [], [], 0
        for d, t, use in zip(per_image, targets, subset):  # loop over images
            if not use:
                continue
            gt = t[torch.isin(t[:, 4].long(), known)]
            objects += len(gt)
            scores.append(d["scores"].numpy())
            correct.append(match_detections(d["boxes"], d["labels"], gt[:, :4], gt[:, 4].long(), iou,
                                            scores=d["scores"]))
        precisions.append(_precision_at_recall(np.concatenate(scores) if scores else np.zeros(0),
                                               np.concatenate(correct) if correct else np.zeros(0, bool),
                                               objects, WI_RECALL))
    if not all(math.isfinite(p) for p in precisions) or precisions[1] <= 0:
        return math.nan
    return wilderness_impact(precisions[0], precisions[1])


def open_set_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`open_set_evaluation` without curves and score arrays (JSON-able)."""
    models = {name: {key: ({k: v for k, v in value.items() if k != "roc"} if isinstance(value, Mapping) else value)
                     for key, value in metrics.items()}
              for name, metrics in result["models"].items()}
    return {key: value for key, value in result.items() if key not in ("models", "scores")} | {"models": models}
