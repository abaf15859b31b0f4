"""COCO box AP of a detector on a :class:`dlde.data.coco.CocoDetection` dataset (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dlde.data.transforms import collate
from dlde.model.modes import evaluating

__all__ = ["coco_metrics", "evaluate"]

# Metric name -> (IoU threshold or None for the mean over .50:.95, area range label).
#: How boxes become detections in :func:`evaluate`.
LABEL_MODES = ("all", "argmax")
DEFAULT_PAIR_THRESHOLD = 0.05

_METRICS = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "AP_small": (None, "small"),
    "AP_medium": (None, "medium"),
    "AP_large": (None, "large"),
}


def coco_metrics(dataset, detections: list[dict], *, max_detections: int = 100) -> dict:
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
        max_detections: Detections per image COCOeval keeps (highest scores first).

    Returns:
        ``AP`` (AP@[.5:.95]), ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large`` as
        floats, and ``per_class``: class name -> AP@[.5:.95] for classes with ground truth.
        With no detections the APs are 0.0. An area range without any ground truth box
        (e.g. no large objects) gives NaN instead of pycocotools' -1.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) not in (0, len(dataset)):
        raise ValueError(
            f"need one detection dict per dataset item ({len(dataset)}), got {len(detections)}"
        )
    gt = COCO()
    gt.dataset = _ground_truth(dataset.annotation_file)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()

    results = _results_array(dataset, detections)  # (D, 7)
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
    for k, cat_id in enumerate(coco_eval.params.catIds):  # loop over classes, once per eval
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            label = dataset.category_ids.index(cat_id)
            per_class[dataset.class_names[label]] = float(p.mean())
    metrics["per_class"] = per_class
    return metrics


def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_detections: int = 100,
    num_workers: int = 0,
    labels: str = "all",
    score_threshold: float | None = None,
) -> dict:
    """Runs ``model`` over ``dataset`` and returns its COCO metrics (see :func:`coco_metrics`).

    In eval mode the model must map images (B, 3, H, W) to a list of B pairs
    ``(boxes (N, 4) as x1, y1, x2, y2 in network-input pixels, classifications (N, C) class
    probabilities)``. With ``labels="all"`` (the default, the convention of torchvision's and
    detectron2's RetinaNet) every (box, class) pair whose probability exceeds the score threshold
    is a detection; with ``labels="argmax"`` each box is one detection with the argmax class and
    the max probability. The ``max_detections`` best per image are kept. Boxes are divided by
    ``dataset.meta(i)["scale"]`` and clipped to the original image.

    Args:
        model: The detector; put in eval mode for the run, its previous mode restored after.
        dataset: A :class:`dlde.data.coco.CocoDetection`, usually with a non-flipping transform.
        batch_size: Images per forward pass.
        device: Where to run; defaults to the device of the model's parameters (CPU if it
            has none).
        progress: Show a tqdm progress bar.
        max_detections: Detections kept per image.
        num_workers: DataLoader worker processes.
        labels: ``"all"`` (every (box, class) pair above ``score_threshold``) or ``"argmax"``.
        score_threshold: smallest pair probability kept with ``labels="all"`` (default: the
            model's ``score_threshold``, else 0.05).

    Returns:
        The dict of :func:`coco_metrics`.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    if score_threshold is None:
        score_threshold = float(getattr(model, "score_threshold", DEFAULT_PAIR_THRESHOLD))
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate", unit="batch")

    detections: list[dict] = []
    with evaluating(model), torch.no_grad():
        for images, _ in loader:
            outputs = model(images.to(device))
            if len(outputs) != images.shape[0]:
                raise ValueError(f"model returned {len(outputs)} outputs for a batch of {images.shape[0]}")
            for boxes, classifications in outputs:  # loop over images
                meta = dataset.meta(len(detections))
                detections.append(to_original(boxes, classifications, meta, max_detections,
                                               labels=labels, score_threshold=score_threshold))
    return coco_metrics(dataset, detections, max_detections=max_detections)


def to_original(
    boxes: torch.Tensor, classifications: torch.Tensor, meta: dict, max_detections: int, *,
    labels: str = "argmax", score_threshold: float = 0.0,
) -> dict:
    """One image's network output ``(boxes (N, 4), classifications (N, C))`` in network-input
    pixels as a detection dict ``{boxes, scores, labels}`` in original pixels (``meta`` is
    :meth:`dlde.CocoDetection.meta`), keeping the ``max_detections`` best; ``labels`` as in
    :func:`evaluate`."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or classifications.ndim != 2 or (
        classifications.shape[0] != boxes.shape[0]
    ):
        raise ValueError(
            "expected boxes (N, 4) and classifications (N, C), got "
            f"{tuple(boxes.shape)} and {tuple(classifications.shape)}"
        )
    boxes, classifications = boxes.detach().float().cpu(), classifications.detach().float().cpu()
    if classifications.shape[1] == 0:
        scores = classifications.new_zeros((0,))
        labels = torch.zeros((0,), dtype=torch.int64)
        boxes = boxes[:0]
    elif labels == "all":
        box_index, labels = (classifications > score_threshold).nonzero(as_tuple=True)  # (K,), (K,)
        scores, boxes = classifications[box_index, labels], boxes[box_index]
    else:
        scores, labels = classifications.max(dim=1)  # (N,), (N,)
    keep = scores.argsort(descending=True, stable=True)[:max_detections]
    h, w = meta["orig_size"]
    boxes = boxes[keep] / meta["scale"]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return {"boxes": boxes, "scores": scores[keep], "labels": labels[keep]}


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


def _results_array(dataset, detections: list[dict]) -> np.ndarray:
    """Packs detections as (D, 7) rows ``image_id, x, y, w, h, score, category_id``."""
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

