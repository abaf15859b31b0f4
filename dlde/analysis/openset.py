"""Unknown-object scores and open-set detection metrics.

An *unknown score* is high when a detection looks like none of the known classes:

- DLDENet: ``1 - max_c cos(e, mu_c)`` for the detection's unit embedding ``e`` and the tracked
  class means ``mu_c`` (:func:`cosine_unknown_score`, in [0, 2]);
- a sigmoid (or any probability) head: ``1 - max_c p_c`` (:func:`probability_unknown_score`).

The metrics take the unknown scores of detections that match a known object (``known``) and
of detections that match an unknown object (``unknown``); unknown is the positive class.
ORE's metrics (Joseph et al., CVPR 2021) are :func:`wilderness_impact` and
:func:`absolute_open_set_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from .calibration import DEFAULT_IOU

__all__ = [
    "DEFAULT_KNOWN_PRECISION",
    "absolute_open_set_error",
    "auroc",
    "cosine_unknown_score",
    "probability_unknown_score",
    "roc_curve",
    "unknown_recall_at_known_precision",
    "unknown_recall_at_known_recall",
    "wilderness_impact",
]

DEFAULT_KNOWN_PRECISION = 0.95  # operating point of unknown_recall_at_known_precision/_recall


def cosine_unknown_score(embeddings: Any, means: Any) -> torch.Tensor:
    """``1 - max_c cos(e, mu_c)``: how far each embedding is from the nearest class mean.

    Args:
        embeddings: (N, d) embeddings (normalized here; a zero row raises).
        means: (C, d) class means; all-zero rows (classes never seen) are ignored.

    Returns:
        (N,) float32 scores in [0, 2]; 0 when an embedding points exactly along a mean.
    """
    e = torch.as_tensor(embeddings).detach().float()
    m = torch.as_tensor(means).detach().float().to(e.device)
    if e.ndim != 2 or m.ndim != 2 or e.shape[1] != m.shape[1]:
        raise ValueError(f"need embeddings (N, d) and means (C, d), got {tuple(e.shape)} and "
                         f"{tuple(m.shape)}")
    e_norm, m_norm = e.norm(dim=1, keepdim=True), m.norm(dim=1, keepdim=True)
    if (e_norm == 0).any():
        raise ValueError(f"embeddings rows {torch.nonzero(e_norm[:, 0] == 0)[:5, 0].tolist()} "
                         "are zero and have no direction")
    seen = m_norm[:, 0] > 0
    if not seen.any():
        raise ValueError("every class mean is zero: no class has a direction yet")
    cosines = (e / e_norm) @ (m[seen] / m_norm[seen]).T  # (N, C_seen)
    return (1.0 - cosines.max(dim=1).values).clamp(0.0, 2.0)


def probability_unknown_score(probabilities: Any) -> torch.Tensor:
    """``1 - max_c p_c`` of per-class probabilities (sigmoid or softmax head).

    Args:
        probabilities: (N, C) class probabilities in [0, 1], C >= 1.

    Returns:
        (N,) float32 scores in [0, 1].
    """
    p = torch.as_tensor(probabilities).detach().float()
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 1, got {tuple(p.shape)}")
    return 1.0 - p.max(dim=1).values


def _scores(known: Any, unknown: Any) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, x in (("known_scores", known), ("unknown_scores", unknown)):
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"{name} must be a non-empty (N,) array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be finite")
        out.append(x)
    return out[0], out[1]


def auroc(known_scores: Any, unknown_scores: Any) -> float:
    """Area under the ROC curve of telling unknown (positive) from known by the score.

    Equals the probability that a random unknown detection scores higher than a random
    known one, ties counting one half (Mann-Whitney U / (N_known N_unknown)).

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.

    Returns:
        AUROC in [0, 1]; 0.5 is chance.
    """
    from sklearn.metrics import roc_auc_score

    known, unknown = _scores(known_scores, unknown_scores)
    truth = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    return float(roc_auc_score(truth, np.concatenate([known, unknown])))


def roc_curve(known_scores: Any, unknown_scores: Any) -> dict:
    """ROC of unknown detection, for :func:`dlde.analysis.metric_plots.plot_roc`.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.

    Returns:
        ``fpr`` (T,) fraction of known flagged, ``tpr`` (T,) fraction of unknown flagged (at
        decreasing thresholds ``thresholds`` (T,): flagged when score >= threshold) and
        ``auroc``.
    """
    from sklearn.metrics import roc_curve as _sk_roc_curve

    known, unknown = _scores(known_scores, unknown_scores)
    truth = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    fpr, tpr, thresholds = _sk_roc_curve(truth, np.concatenate([known, unknown]),
                                         drop_intermediate=False)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds,
            "auroc": auroc(known, unknown)}


def unknown_recall_at_known_precision(
    known_scores: Any, unknown_scores: Any, precision: float = DEFAULT_KNOWN_PRECISION
) -> dict:
    """Unknown recall at the least strict threshold that keeps the known set ``precision`` pure.

    A detection is *flagged unknown* when its score is > ``threshold`` and *kept as known*
    otherwise. Known precision at a threshold is the fraction of kept detections that are
    known objects. The threshold is the **largest** score ``t`` (over the observed scores)
    with known precision >= ``precision``, i.e. the operating point that keeps the most known
    detections while at most ``1 - precision`` of the kept ones are unknown. Reported there:
    unknown recall = fraction of unknown detections flagged, and known recall = fraction of
    known detections kept. When no threshold reaches the precision, everything is flagged
    (threshold -inf, unknown recall 1, known recall 0).

    Read unknown recall together with known recall: a score that cannot separate the two
    reaches the precision only by flagging almost everything (both recalls near 1 and 0).
    :func:`unknown_recall_at_known_recall` fixes the known side instead.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.
        precision: required known precision in (0, 1].

    Returns:
        ``unknown_recall``, ``known_recall``, ``known_precision`` (reached) and ``threshold``.
    """
    if not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must lie in (0, 1], got {precision}")
    known, unknown = _scores(known_scores, unknown_scores)
    scores = np.concatenate([known, unknown])
    is_unknown = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    order = np.argsort(scores, kind="stable")
    scores, is_unknown = scores[order], is_unknown[order]
    last = np.r_[scores[1:] != scores[:-1], True]  # last position of each distinct score
    kept_unknown = np.cumsum(is_unknown)[last]  # kept when score <= that distinct value
    kept = (np.arange(scores.size) + 1)[last]
    kept_known = kept - kept_unknown
    ok = np.flatnonzero(kept_known / kept >= precision - 1e-12)
    if ok.size == 0:
        return {"unknown_recall": 1.0, "known_recall": 0.0, "known_precision": float("nan"),
                "threshold": float("-inf")}
    j = ok[-1]
    return {"unknown_recall": float(1.0 - kept_unknown[j] / unknown.size),
            "known_recall": float(kept_known[j] / known.size),
            "known_precision": float(kept_known[j] / kept[j]),
            "threshold": float(scores[last][j])}


def unknown_recall_at_known_recall(
    known_scores: Any, unknown_scores: Any, recall: float = DEFAULT_KNOWN_PRECISION
) -> dict:
    """Unknown recall when the threshold keeps a fraction ``recall`` of the known detections.

    The out-of-distribution convention (TNR at 95 % TPR): the threshold is the smallest
    observed known score ``t`` with at least ``recall`` of the known scores <= ``t``; a
    detection is flagged unknown when its score is > ``t``.

    Args:
        known_scores: (N,) unknown scores of known objects.
        unknown_scores: (M,) unknown scores of unknown objects.
        recall: fraction of known detections to keep, in (0, 1].

    Returns:
        ``unknown_recall`` (fraction of unknown flagged), ``known_recall`` (reached) and
        ``threshold``.
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must lie in (0, 1], got {recall}")
    known, unknown = _scores(known_scores, unknown_scores)
    known = np.sort(known)
    threshold = known[int(np.ceil(recall * known.size - 1e-9)) - 1]
    return {"unknown_recall": float(np.mean(unknown > threshold)),
            "known_recall": float(np.mean(known <= threshold)), "threshold": float(threshold)}


def wilderness_impact(precision_closed: Any, precision_open: Any) -> Any:
    """ORE's wilderness impact ``WI = P_K / P_{K u U} - 1``.

    ``P_K`` is the precision of the known-class detections evaluated on known classes only
    (closed set), ``P_{K u U}`` the same detections' precision when unknown objects are in the
    images (open set), both at the same recall (ORE uses recall 0.8). 0 means the unknowns
    cause no false positives.

    Args:
        precision_closed: P_K, a float or array in (0, 1].
        precision_open: P_{K u U}, same shape, in (0, 1].

    Returns:
        WI, a float (or an array for array inputs).
    """
    closed = np.asarray(precision_closed, dtype=np.float64)
    open_ = np.asarray(precision_open, dtype=np.float64)
    if (open_ <= 0).any() or (open_ > 1).any() or (closed < 0).any() or (closed > 1).any():
        raise ValueError("precision_closed must lie in [0, 1] and precision_open in (0, 1]")
    wi = closed / open_ - 1.0
    return float(wi) if wi.ndim == 0 else wi


def absolute_open_set_error(
    detections: Sequence[Mapping[str, Any]],
    targets: Sequence[Any],
    unknown_labels: Iterable[int],
    *,
    iou: float = DEFAULT_IOU,
) -> int:
    """ORE's absolute open-set error: unknown objects detected as a known class.

    An unknown object (a target whose label is in ``unknown_labels``) counts once when at
    least one detection with a known label (>= 0; label -1 marks a detection flagged unknown)
    overlaps it at IoU >= ``iou``. ORE's code counts the detections instead; with NMS the two
    differ only for duplicate boxes on one object.

    Args:
        detections: one dict per image with ``boxes`` (N, 4) x1, y1, x2, y2 and ``labels``
            (N,) in the pixels of ``targets``.
        targets: one (M, 5) x1, y1, x2, y2, label per image (padding rows with label -1 are
            ignored).
        unknown_labels: the labels of the objects the model was not trained on.
        iou: minimum IoU.

    Returns:
        The number of unknown objects detected as a known class.
    """
    if len(detections) != len(targets):
        raise ValueError(f"got {len(detections)} detection dicts for {len(targets)} targets")
    unknown = torch.as_tensor(sorted({int(u) for u in unknown_labels}), dtype=torch.int64)
    count = 0
    for index, (det, target) in enumerate(zip(detections, targets)):  # loop over images
        target = torch.as_tensor(target).detach().cpu().float().reshape(-1, 5)
        boxes = torch.as_tensor(det["boxes"]).detach().cpu().float().reshape(-1, 4)
        labels = torch.as_tensor(det["labels"]).detach().cpu().reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"detections[{index}]: {len(boxes)} boxes but {len(labels)} labels")
        objects = target[torch.isin(target[:, 4].long(), unknown), :4]  # (U, 4)
        boxes = boxes[labels >= 0]
        if len(objects) and len(boxes):
            count += int((box_iou(objects, boxes) >= iou).any(dim=1).sum())
    return count
