"""Box AP with LVIS's conventions (lvis-api's ``LVISEval``) on top of pycocotools' COCOeval.

What differs from :func:`dlde.evaluation.coco_eval.coco_metrics`:

- up to :data:`LVIS_MAX_DETECTIONS` detections per image, the best over all classes together
  (COCOeval's own cap counts per image and class);
- APr / APc / APf: the mean per-class AP over the classes of each frequency bucket (a category's
  ``frequency``: ``r`` rare, ``c`` common, ``f`` frequent);
- the federated rules, when the images list ``neg_category_ids`` and
  ``not_exhaustive_category_ids`` (LVIS's annotation, where each image is checked for a few
  classes only): a detection of a class neither annotated in its image nor listed there as
  negative is not evaluated at all, and an unmatched detection of a class listed as not
  exhaustively annotated in its image is ignored rather than counted as a false positive. A
  detection of a negative class (one verified absent) is a false positive as usual.

Classes without validation instances are left out of every mean, as in COCOeval (their
precision entries are -1). Matching, the IoU thresholds, the area ranges and the 101-point
interpolated precision are pycocotools', which lvis-api copies.
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .coco_eval import ground_truth, results_array, run_cocoeval, summarize

__all__ = ["FREQUENCY_BUCKETS", "LVIS_MAX_DETECTIONS", "lvis_metrics"]

#: Detections per image LVIS evaluates (lvis-api's ``max_dets``), over all classes together.
LVIS_MAX_DETECTIONS = 300
#: Bucket metric -> the ``frequency`` of the categories it averages.
FREQUENCY_BUCKETS = {"APr": "r", "APc": "c", "APf": "f"}


def lvis_metrics(dataset, detections: list[dict], *, max_detections: int = LVIS_MAX_DETECTIONS) -> dict:
    """Scores detections against the dataset's ground truth with LVIS's conventions.

    Args:
        dataset: A :class:`dlde.data.coco.CocoDetection` (as for
            :func:`dlde.evaluation.coco_metrics`, plus ``frequencies`` (label -> ``r``/``c``/``f``,
            or None) and, when ``is_federated``, ``neg_category_ids`` and
            ``not_exhaustive_category_ids`` per dataset index).
        detections: One dict per dataset index with ``boxes`` (N, 4) as x1, y1, x2, y2 in
            ORIGINAL image pixels, ``scores`` (N,) and ``labels`` (N,) contiguous labels 0..C-1.
        max_detections: Detections kept per image, the highest scores over all classes (ties in
            the given order).

    Returns:
        The keys of :func:`dlde.evaluation.coco_metrics` (``AP``, ``AP50``, ``AP75``,
        ``AP_small``, ``AP_medium``, ``AP_large``, ``per_class``) with the federated rules
        applied, and, when the dataset has frequencies, ``APr``, ``APc`` and ``APf`` before
        ``per_class``: means of per-class AP@[.5:.95] over the bucket's classes with ground truth
        (NaN for a bucket without any).
    """
    results = _top_per_image(results_array(dataset, detections), max_detections)  # (D, 7)
    gt = ground_truth(dataset)
    if dataset.is_federated:
        results = results[_evaluated(results, gt, dataset)]
    coco_eval = run_cocoeval(gt, results, dataset, max_detections)
    if dataset.is_federated:
        _ignore_unmatched_not_exhaustive(coco_eval, dataset)
    metrics = summarize(coco_eval, dataset)
    per_class = metrics.pop("per_class")
    if dataset.frequencies is not None:
        metrics.update(_bucket_means(coco_eval, dataset))
    metrics["per_class"] = per_class
    return metrics


def _top_per_image(results: np.ndarray, max_detections: int) -> np.ndarray:
    """The rows of the ``max_detections`` highest scores of each image (rows ``image_id, x, y, w,
    h, score, category_id``), in their given order; ties keep the given order (as lvis-api's
    stable sort)."""
    by_score = np.argsort(-results[:, 5], kind="stable")  # (D,)
    by_image = by_score[np.argsort(results[by_score, 0], kind="stable")]  # image, then score descending
    image = results[by_image, 0]
    first = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])  # first row of each image's run
    rank = np.arange(len(image)) - np.repeat(first, np.diff(np.r_[first, len(image)]))  # within image
    return results[np.sort(by_image[rank < max_detections])]


def _evaluated(results: np.ndarray, gt: COCO, dataset) -> np.ndarray:
    """(D,) bool: rows whose class is annotated in their image or listed there as negative."""
    pairs = {(ann["image_id"], ann["category_id"]) for ann in gt.dataset["annotations"]}
    for image_id, negatives in zip(dataset.image_ids, dataset.neg_category_ids):  # loop over images
        pairs.update((image_id, cat_id) for cat_id in negatives)
    rows = zip(results[:, 0].astype(np.int64).tolist(), results[:, 6].astype(np.int64).tolist())
    return np.fromiter((pair in pairs for pair in rows), dtype=bool, count=len(results))


def _ignore_unmatched_not_exhaustive(coco_eval: COCOeval, dataset) -> None:
    """Marks the unmatched detections of an image's not-exhaustive classes as ignored in the
    per-image results of an evaluated ``COCOeval`` (before ``accumulate()``)."""
    not_exhaustive = {(image_id, cat_id) for image_id, cat_ids in zip(dataset.image_ids,
                                                                    dataset.not_exhaustive_category_ids)
                      for cat_id in cat_ids}
    for record in coco_eval.evalImgs:  # one per (class, area range, image); None when both are empty
        if record is not None and (record["image_id"], record["category_id"]) in not_exhaustive:
            # dtMatches, dtIgnore: (T, D); a match holds the ground truth's id, 0 when unmatched
            record["dtIgnore"] = np.logical_or(record["dtIgnore"], record["dtMatches"] == 0)


def _bucket_means(coco_eval: COCOeval, dataset) -> dict[str, float]:
    """APr, APc, APf: the mean AP@[.5:.95] over all areas of each bucket's classes with ground
    truth, as lvis-api averages them (over the precision entries that are not -1)."""
    frequency = dict(zip(dataset.category_ids, dataset.frequencies))
    bucket = np.array([frequency[cat_id] for cat_id in coco_eval.params.catIds])  # (K,)
    precision = coco_eval.eval["precision"][:, :, :, coco_eval.params.areaRngLbl.index("all"), -1]  # (T, R, K)
    means = {}
    for key, letter in FREQUENCY_BUCKETS.items():
        p = precision[:, :, bucket == letter]
        p = p[p > -1]
        means[key] = float(p.mean()) if p.size else math.nan
    return means
