"""Calibration of detection scores: expected calibration error and reliability curves.

A detection is *correct* when it matches a ground-truth object of its class at IoU >= 0.5
(:func:`match_detections`); a calibrated detector's score is then the probability of being
correct. Scores are binned in equal-width bins over [0, 1]; bin ``b`` holds the scores in
``[b / B, (b + 1) / B)``, the last bin also holds 1.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from dlde.data.transforms import collate

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_IOU",
    "detection_calibration",
    "ece_of_curve",
    "expected_calibration_error",
    "match_detections",
    "reliability_curve",
]

DEFAULT_BINS = 15  # equal-width bins over [0, 1] (Guo et al., ICML 2017)
DEFAULT_IOU = 0.5  # a detection is correct at IoU >= 0.5 with an object of its class


def _vector(x: Any, name: str, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (N,), got shape {x.shape}")
    return x.astype(dtype)


def _scores_correct(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = _vector(scores, "scores", np.float64)
    correct = _vector(correct, "correct", np.float64)
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} differ in length")
    if not np.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        raise ValueError("scores must be finite and lie in [0, 1]")
    if not np.isin(correct, (0.0, 1.0)).all():
        raise ValueError("correct must hold booleans (0 or 1)")
    return scores, correct


def reliability_curve(scores: Any, correct: Any, bins: int = DEFAULT_BINS) -> dict:
    """Mean score and accuracy of the detections in each equal-width score bin.

    Args:
        scores: (N,) confidences in [0, 1].
        correct: (N,) booleans, whether each detection is correct.
        bins: number B of equal-width bins over [0, 1].

    Returns:
        ``bin_edges`` (B+1,), ``confidence`` (B,) mean score per bin, ``accuracy`` (B,)
        fraction correct per bin (both NaN for empty bins) and ``count`` (B,) int64.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    bins = int(bins)
    scores, correct = _scores_correct(scores, correct)
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)  # (N,) bin of each score
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=scores, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return {"bin_edges": np.linspace(0.0, 1.0, bins + 1), "confidence": confidence,
            "accuracy": accuracy, "count": count}


def ece_of_curve(curve: dict) -> float:
    """ECE of a :func:`reliability_curve`: bin gaps |accuracy - confidence| weighted by count.

    Returns NaN when the curve holds no detection.
    """
    count = np.asarray(curve["count"], dtype=np.float64)
    if count.sum() == 0:
        return float("nan")
    filled = count > 0
    gap = np.abs(np.asarray(curve["accuracy"])[filled] - np.asarray(curve["confidence"])[filled])
    return float((count[filled] * gap).sum() / count.sum())


def expected_calibration_error(scores: Any, correct: Any, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    Args:
        scores: (N,) confidences in [0, 1].
        correct: (N,) booleans, whether each detection is correct.
        bins: number of equal-width bins over [0, 1].

    Returns:
        The ECE in [0, 1]; NaN for N = 0.
    """
    return ece_of_curve(reliability_curve(scores, correct, bins))


def _as_tensor(x: Any, name: str, shape_tail: tuple[int, ...], dtype) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim != 1 + len(shape_tail) or tuple(x.shape[1:]) != shape_tail:
        want = "(N, " + ", ".join(map(str, shape_tail)) + ")" if shape_tail else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x.to(dtype)


def match_detections(
    pred_boxes: Any,
    pred_labels: Any,
    gt_boxes: Any,
    gt_labels: Any,
    iou: float = DEFAULT_IOU,
    *,
    scores: Any | None = None,
) -> np.ndarray:
    """Which detections of one image are true positives (greedy matching, as COCOeval).

    Detections are visited by decreasing score (in the given order when ``scores`` is None;
    :meth:`RetinaNet.predict` already sorts them). Each takes the unmatched ground-truth object
    of its own class with the highest IoU, if that IoU is >= ``iou``; an object is matched at
    most once. The IoU matrix is computed at once; the assignment is sequential by definition.

    Args:
        pred_boxes: (N, 4) as x1, y1, x2, y2.
        pred_labels: (N,) class ids.
        gt_boxes: (M, 4) as x1, y1, x2, y2, in the same pixels as ``pred_boxes``.
        gt_labels: (M,) class ids.
        iou: minimum IoU of a match.
        scores: optional (N,) detection scores that set the visiting order.

    Returns:
        (N,) bool numpy array in the order of ``pred_boxes``.
    """
    pred_boxes = _as_tensor(pred_boxes, "pred_boxes", (4,), torch.float32)
    gt_boxes = _as_tensor(gt_boxes, "gt_boxes", (4,), torch.float32)
    pred_labels = _as_tensor(pred_labels, "pred_labels", (), torch.int64)
    gt_labels = _as_tensor(gt_labels, "gt_labels", (), torch.int64)
    n, m = len(pred_boxes), len(gt_boxes)
    if len(pred_labels) != n or len(gt_labels) != m:
        raise ValueError(f"got {n} pred_boxes with {len(pred_labels)} pred_labels and "
                         f"{m} gt_boxes with {len(gt_labels)} gt_labels")
    correct = np.zeros(n, dtype=bool)
    if n == 0 or m == 0:
        return correct
    if scores is None:
        order = np.arange(n)
    else:
        scores = _as_tensor(scores, "scores", (), torch.float64)
        if len(scores) != n:
            raise ValueError(f"got {len(scores)} scores for {n} pred_boxes")
        order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    overlap = box_iou(pred_boxes, gt_boxes)  # (N, M)
    candidate = (overlap >= iou) & (pred_labels[:, None] == gt_labels[None, :])
    overlap = torch.where(candidate, overlap, torch.full_like(overlap, -1.0)).numpy()
    overlap = overlap[order]  # rows in visiting order
    taken = np.zeros(m, dtype=bool)
    for row in np.flatnonzero((overlap >= 0).any(axis=1)):  # greedy: one detection at a time
        ious = np.where(taken, -1.0, overlap[row])
        best = int(ious.argmax())
        if ious[best] >= 0:
            taken[best] = True
            correct[order[row]] = True
            if taken.all():
                break
    return correct


@torch.no_grad()
def detection_calibration(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 16,
    iou: float = DEFAULT_IOU,
    bins: int = DEFAULT_BINS,
    device: torch.device | str | None = None,
) -> dict:
    """Scores and correctness of every detection on a validation set, with ECE and curve.

    Runs ``model.predict`` (one label per box: the argmax class, its probability the score)
    over the dataset and matches each image's detections to its annotations with
    :func:`match_detections`. Boxes and annotations are both in network-input pixels.

    Args:
        model: a detector with ``predict(images (B, 3, H, W)) -> [{'boxes', 'scores',
            'labels'}]``; its train/eval mode is restored by ``predict``.
        dataset: items ``(image (3, H, W), annotations (M, 5) x1, y1, x2, y2, label)``,
            e.g. a :class:`dlde.data.coco.CocoDetection` with a non-flipping transform.
        batch_size: images per forward pass.
        iou: minimum IoU of a correct detection.
        bins: number of equal-width bins of the ECE and the curve.
        device: where to run; defaults to the device of the model's parameters.

    Returns:
        ``scores`` (D,) float64 and ``correct`` (D,) bool over all D detections, ``ece``
        (float, NaN without detections) and ``curve`` (see :func:`reliability_curve`).
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    all_scores, all_correct = [], []
    for images, targets in loader:
        predictions = model.predict(images.to(device))
        if len(predictions) != len(images):
            raise ValueError(f"model.predict returned {len(predictions)} results for "
                             f"{len(images)} images")
        for prediction, target in zip(predictions, targets):  # loop over images
            target = target[target[:, 4] >= 0]  # drop collate's padding rows (label -1)
            all_scores.append(prediction["scores"].detach().double().cpu().numpy())
            all_correct.append(match_detections(prediction["boxes"], prediction["labels"],
                                                target[:, :4], target[:, 4].long(), iou,
                                                scores=prediction["scores"]))
    # The directional head's ratio of sigmoids can round a hair above 1.
    scores = np.clip(np.concatenate(all_scores), 0.0, 1.0) if all_scores else np.zeros(0)
    correct = np.concatenate(all_correct) if all_correct else np.zeros(0, dtype=bool)
    curve = reliability_curve(scores, correct, bins)
    return {"scores": scores, "correct": correct, "ece": ece_of_curve(curve), "curve": curve}
