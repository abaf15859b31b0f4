"""Detection losses: focal loss on class probabilities and box regression on positives."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .anchors import Assignment, assign_batch
from .boxes import BoxCoder

BOX_LOSSES = ("smooth_l1", "l1", "giou")


def check_annotations(annotations: Tensor, classes: int, batch: int | None = None) -> Tensor:
    """Validate a padded batch of annotations ``(B, M, 5)`` and return it as float.

    Rows with label -1 are padding. Real rows need finite coordinates with x2 >= x1, y2 >= y1
    and an integer label in ``[0, classes)``.
    """
    if not isinstance(annotations, Tensor):
        raise TypeError(f"annotations must be a tensor of shape (B, M, 5), got {type(annotations).__name__}")
    if annotations.dim() != 3 or annotations.shape[-1] != 5:
        raise ValueError(f"annotations must have shape (B, M, 5) as x1, y1, x2, y2, label; "
                         f"got {tuple(annotations.shape)}")
    if batch is not None and annotations.shape[0] != batch:
        raise ValueError(f"annotations are for {annotations.shape[0]} images but the batch has {batch}")
    annotations = annotations.float()
    labels = annotations[..., 4]
    real = labels != -1
    if not torch.isfinite(annotations[real]).all():
        raise ValueError("annotations contain NaN or infinite values")
    bad_label = real & ((labels < 0) | (labels >= classes) | (labels != labels.round()))
    if bad_label.any():
        raise ValueError(f"annotation labels must be integers in [0, {classes}) or -1 for padding; "
                         f"got {labels[bad_label].unique().tolist()}")
    boxes = annotations[..., :4][real]
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError("annotation boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
    return annotations


def focal_loss(probabilities: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-6) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017) of probabilities against 0/1 targets, same shape.

    Probabilities are squashed affinely into ``[eps, 1 - eps]`` rather than clamped: a clamp
    would give zero gradient to a background anchor scored exactly 1 (a DLDENet embedding lying
    on a class mean), and such anchors could then never be pushed away.
    """
    p = eps + (1 - 2 * eps) * probabilities.float()
    ce = -(targets * torch.log(p) + (1 - targets) * torch.log1p(-p))
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def detection_loss(anchors: Tensor, regressions: Tensor, classifications: Tensor, annotations: Tensor, *,
                   thresholds: Mapping[str, float] | None = None, box_coder: BoxCoder | None = None,
                   alpha: float = 0.25, gamma: float = 2.0, box_loss: str = "smooth_l1",
                   allow_low_quality_matches: bool = True, assignment: Assignment | None = None,
                   positives_reducer: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """RetinaNet losses for a batch.

    Args:
        anchors: ``(B, A, 4)`` or ``(A, 4)`` anchors, x1, y1, x2, y2 in pixels.
        regressions: ``(B, A, 4)`` predicted deltas (see :class:`dlde.model.boxes.BoxCoder`).
        classifications: ``(B, A, C)`` class probabilities.
        annotations: ``(B, M, 5)`` x1, y1, x2, y2, label, padded with label -1.
        thresholds: IoU thresholds ``{'object', 'background'}``; anchors in between are ignored.
        box_coder: the delta parameterisation (default weights 1, 1, 1, 1).
        alpha, gamma: focal-loss parameters.
        box_loss: ``'smooth_l1'`` (beta 1/9) or ``'l1'`` on deltas, or ``'giou'`` on decoded boxes.
        allow_low_quality_matches: each annotation's best anchor is a positive too.
        assignment: the batch's anchor assignment when already computed (the detector's forward
            computes it once per step); otherwise the anchors are matched here.
        positives_reducer: maps this process's number of positive anchors to the normalizer, e.g.
            its share of the global count in distributed training (detectron2's convention), so N
            processes of batch B give the gradient of one process of batch N * B.

    Returns:
        ``{'classification': focal loss over non-ignored anchors, 'bbox_regression': box loss over
        positives}``, both summed and divided by the number of positive anchors (at least 1), so an
        image without objects gives a zero box loss.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"unknown box_loss {box_loss!r}; options: {', '.join(BOX_LOSSES)}")
    box_coder = box_coder or BoxCoder()
    batch, num_anchors, classes = classifications.shape
    annotations = check_annotations(annotations, classes, batch)
    if anchors.dim() == 3:
        anchors = anchors[0]
    if assignment is None:
        with torch.no_grad():
            assignment = assign_batch(anchors, annotations.to(anchors.device), thresholds,
                                      allow_low_quality_matches=allow_low_quality_matches)
    objects = assignment.objects_mask  # (B, A)
    valid = objects | assignment.background_mask
    labels = assignment.assigned_annotations[..., 4][objects].long()  # (N,)
    positives = objects.sum().to(torch.float32)
    # The normalizer: at least 1 (an image without objects gives a zero box loss); a reducer
    # returns this process's share of the global count (dlde.train.distributed.loss_normalizer).
    positives = positives.clamp(min=1) if positives_reducer is None else positives_reducer(positives)
    # Every (anchor, class) is scored as a negative, then the N positive pairs are corrected:
    # a handful of passes over the (B, A, C) tensor instead of a dense one-hot target.
    eps = 1e-6
    p = eps + (1 - 2 * eps) * classifications.float()
    negative = (1 - alpha) * p.pow(gamma) * -torch.log1p(-p)  # (B, A, C)
    p_pos = p[objects, labels]  # (N,)
    correction = (alpha * (1 - p_pos).pow(gamma) * -torch.log(p_pos)
                  - (1 - alpha) * p_pos.pow(gamma) * -torch.log1p(-p_pos))
    cls = ((negative.sum(-1) * valid).sum() + correction.sum()) / positives

    deltas = regressions[objects].float()  # (N, 4)
    matched_anchors = anchors[None].expand(batch, -1, -1)[objects]
    matched_boxes = assignment.assigned_annotations[..., :4][objects]
    if box_loss == "giou":
        box = generalized_box_iou_loss(box_coder.decode(matched_anchors, deltas), matched_boxes, reduction="sum")
    else:
        target_deltas = box_coder.encode(matched_anchors, matched_boxes)
        if box_loss == "l1":
            box = F.l1_loss(deltas, target_deltas, reduction="sum")
        else:
            box = F.smooth_l1_loss(deltas, target_deltas, beta=1 / 9, reduction="sum")
    return {"classification": cls, "bbox_regression": box / positives}
