"""Runs a detector over a dataset and scores its detections with the dataset's protocol: LVIS's
(:func:`dlde.evaluation.lvis_metrics`) for a dataset whose categories carry a ``frequency`` or whose
images carry LVIS's federated fields, COCO's (:func:`dlde.evaluation.coco_metrics`) otherwise."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from dlde.data.transforms import collate
from dlde.model.detector import SCORE_THRESHOLD
from dlde.model.modes import evaluating

from .coco_eval import COCO_MAX_DETECTIONS, coco_metrics
from .lvis_eval import LVIS_MAX_DETECTIONS, lvis_metrics

__all__ = ["dataset_metrics", "evaluate", "max_detections_for", "to_original", "uses_lvis"]

#: How boxes become detections in :func:`evaluate`.
LABEL_MODES = ("all", "argmax")
#: Pair threshold of a model without its own ``score_threshold`` (the detector's default).
DEFAULT_PAIR_THRESHOLD = SCORE_THRESHOLD


def uses_lvis(dataset) -> bool:
    """Whether ``dataset`` is scored with LVIS's conventions: its categories carry a frequency
    bucket, or its images LVIS's federated fields (:class:`dlde.data.coco.CocoDetection`'s
    ``frequencies`` and ``is_federated``)."""
    return getattr(dataset, "frequencies", None) is not None or getattr(dataset, "is_federated", False)


def max_detections_for(dataset) -> int:
    """Detections per image the dataset's protocol keeps: 300 for LVIS, 100 for COCO."""
    return LVIS_MAX_DETECTIONS if uses_lvis(dataset) else COCO_MAX_DETECTIONS


def dataset_metrics(dataset, detections: list[dict], *, max_detections: int | None = None) -> dict:
    """:func:`dlde.evaluation.lvis_metrics` or :func:`dlde.evaluation.coco_metrics` of the
    detections (one dict per dataset index, as both take them), as :func:`uses_lvis` chooses;
    ``max_detections`` defaults to :func:`max_detections_for`."""
    if max_detections is None:
        max_detections = max_detections_for(dataset)
    score = lvis_metrics if uses_lvis(dataset) else coco_metrics
    return score(dataset, detections, max_detections=max_detections)


def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_detections: int | None = None,
    num_workers: int = 0,
    labels: str = "all",
    score_threshold: float | None = None,
) -> dict:
    """Runs ``model`` over ``dataset`` and returns its metrics (see :func:`dataset_metrics`).

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
        max_detections: Detections kept per image (default: :func:`max_detections_for`, 100 for
            COCO, 300 for LVIS).
        num_workers: DataLoader worker processes.
        labels: ``"all"`` (every (box, class) pair above ``score_threshold``) or ``"argmax"``.
        score_threshold: smallest pair probability kept with ``labels="all"`` (default: the
            model's ``score_threshold``, else :data:`DEFAULT_PAIR_THRESHOLD`).

    Returns:
        The dict of :func:`dlde.evaluation.coco_metrics`, or of
        :func:`dlde.evaluation.lvis_metrics` for an LVIS-style dataset (:func:`uses_lvis`).
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    if max_detections is None:
        max_detections = max_detections_for(dataset)
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
    return dataset_metrics(dataset, detections, max_detections=max_detections)


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
