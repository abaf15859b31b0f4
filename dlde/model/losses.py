"""Detection losses: focal loss on class probabilities and box regression on positives."""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import generalized_box_iou_loss

from .anchors import Assignment, assign_batch
from .boxes import BoxCoder
from .equalized_focal import EqualizedFocal

BOX_LOSSES = ("smooth_l1", "l1", "giou")
#: The classification loss: the focal loss, or the equalized focal loss (:class:`EqualizedFocal`).
CLASSIFICATION_LOSSES = ("focal", "efl")


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


def drop_degenerate_boxes(annotations: Tensor, image_size: Sequence[int] | None = None) -> Tensor:
    """Checked ``annotations (B, M, 5)`` with degenerate boxes turned into padding rows (all -1).

    Degenerate, as :class:`dlde.data.coco.CocoDetection` drops them: zero width or height and,
    given ``image_size (H, W)`` of the batch, lying entirely outside it. Such a box can match no
    anchor as an object (zero IoU) or only an anchor reaching past the image's edge. One warning
    gives the counts. Without any, ``annotations`` itself is returned (no copy); the caller's
    tensor is never modified.
    """
    x1, y1, x2, y2, labels = annotations.unbind(-1)  # (B, M) each
    real = labels != -1
    empty = real & ((x2 <= x1) | (y2 <= y1))
    outside = torch.zeros_like(empty)
    if image_size is not None:
        height, width = image_size
        outside = real & ~empty & ((x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height))
    dropped = empty | outside  # (B, M)
    if not dropped.any():
        return annotations
    counts = [f"{int(empty.sum())} of zero width or height"]
    if image_size is not None:
        counts.append(f"{int(outside.sum())} entirely outside the {height}x{width} image")
    warnings.warn(f"annotations: dropped {int(dropped.sum())} degenerate boxes ({', '.join(counts)}); they "
                  "count as padding rows, as dlde.data.CocoDetection drops them", stacklevel=2)
    return annotations.masked_fill(dropped[..., None], -1.0)


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


def focal_loss_sum(probabilities: Tensor, valid: Tensor, positives: Tensor, *, alpha: float = 0.25,
                   gamma: float | Tensor = 2.0, weight: Tensor | None = None, eps: float = 1e-6,
                   gradient_sums: Callable[[Tensor, Tensor], None] | None = None) -> Tensor:
    """Sum of :func:`focal_loss` over the valid rows of ``probabilities (N, C)`` whose targets are 0
    except at ``positives``.

    Equal to ``(focal_loss(probabilities, targets).sum(-1) * valid).sum()`` with ``targets`` the
    one-hot of ``positives``, computed by :class:`SparseFocalLoss` in a few passes over the
    ``(N, C)`` tensor and a hand-written backward. With a per-class ``gamma (C,)`` and ``weight
    (C,)`` the pairs of class ``j`` take focusing factor ``gamma[j]`` and are weighted by
    ``weight[j]`` (the equalized focal loss, :class:`dlde.model.equalized_focal.EqualizedFocal`).

    Args:
        probabilities: ``(N, C)`` in [0, 1] (float32 or float64).
        valid: ``(N,)`` bool or 0/1: the rows that count (ignored anchors are 0).
        positives: ``(P,)`` distinct indices into ``probabilities.view(-1)`` of the pairs whose
            target is 1 (``row * C + class``); each must lie in a valid row.
        gamma: the focusing factor, one for all classes or ``(C,)``.
        weight: ``(C,)`` non-negative weight of each class's pairs; None: 1.
        gradient_sums: called by the backward with ``(positive (C,), negative (C,))`` float64: per
            class, the sum over its positive and over its negative valid pairs of
            ``|dL/dp| p (1 - p)``, ``L`` the returned sum (the upstream gradient left out).
    """
    if probabilities.dim() != 2 or valid.shape != probabilities.shape[:1]:
        raise ValueError(f"focal_loss_sum needs probabilities (N, C) and valid (N,), got "
                         f"{tuple(probabilities.shape)} and {tuple(valid.shape)}")
    classes = probabilities.shape[1]
    if isinstance(gamma, Tensor) or weight is not None or gradient_sums is not None:
        gamma, weight = (torch.as_tensor(value, dtype=probabilities.dtype, device=probabilities.device)
                         .expand(classes).contiguous() for value in (gamma, 1.0 if weight is None else weight))
    else:
        gamma = float(gamma)
    return SparseFocalLoss.apply(probabilities.contiguous(), valid.to(probabilities.dtype), positives.long(),
                                 float(alpha), gamma, float(eps), weight, gradient_sums)


class SparseFocalLoss(torch.autograd.Function):
    """Autograd node of :func:`focal_loss_sum`.

    With ``q = eps + (1 - 2 eps) p`` the loss of a negative pair is ``(1 - alpha) q^gamma (-log(1 - q))``
    and of a positive pair ``alpha (1 - q)^gamma (-log q)``. The forward scores every valid pair as
    a negative, then corrects the positives; only ``p`` is kept, and the backward recomputes ``q``
    to form

        d/dq [q^gamma (-log(1 - q))] = q^(gamma - 1) (q / (1 - q) - gamma log(1 - q))

    in place, scaled by ``(1 - alpha) (1 - 2 eps)`` and the row's validity, plus the positives'
    correction added at their indices. Both passes work on row tiles (:func:`row_tiles`), so
    their scratch tensors stay small. The generic autograd graph of the same expression keeps
    about ten ``(N, C)`` tensors, each a fresh allocation.

    ``gamma`` is a float (``weight`` None), or a ``(C,)`` tensor with ``weight (C,)``: each column
    then has its own focusing factor and weight (``q^gamma_c`` as ``exp(gamma_c log q)``: two passes
    more than the scalar path's ``q * q``), and the backward can report the per-class gradient
    magnitudes (``gradient_sums``) with two more passes and one reduction over each tile.
    """

    @staticmethod
    def forward(ctx, probabilities, valid, positives, alpha, gamma, eps, weight=None, gradient_sums=None):
        slope = 1 - 2 * eps  # dq/dp
        per_class = weight is not None
        dense = probabilities.new_zeros(probabilities.shape[1] if per_class else ())  # (C,) per class
        for rows in row_tiles(*probabilities.shape):
            q = probabilities[rows].mul(slope).add_(eps)
            terms = q.neg().log1p_()  # log(1 - q)
            if per_class:  # q^gamma_c as exp(gamma_c log q): half the time of pow with a tensor exponent
                dense += valid[rows] @ terms.mul_(q.log_().mul_(gamma).exp_())  # (C,): sum of q^gamma_c log(1 - q)
            else:
                terms.mul_(q).mul_(q) if gamma == 2 else terms.mul_(q.pow_(gamma))  # q^gamma log(1 - q) <= 0
                dense += torch.dot(terms.sum(-1), valid[rows])
        q_pos = probabilities.view(-1)[positives] * slope + eps
        labels = positives % probabilities.shape[1] if per_class else None  # (P,)
        gamma_pos = gamma[labels] if per_class else gamma
        correction = (alpha * (1 - q_pos).pow(gamma_pos) * -torch.log(q_pos)
                      - (1 - alpha) * q_pos.pow(gamma_pos) * -torch.log1p(-q_pos))
        ctx.per_class = per_class
        ctx.constants = alpha, gamma, eps, gradient_sums
        if per_class:
            ctx.save_for_backward(probabilities, valid, positives, gamma, weight)
            return -(1 - alpha) * torch.dot(dense, weight) + torch.dot(correction, weight[labels])
        ctx.save_for_backward(probabilities, valid, positives)
        return -(1 - alpha) * dense + correction.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        alpha, gamma, eps, gradient_sums = ctx.constants
        if ctx.per_class:
            probabilities, valid, positives, gamma, weight = ctx.saved_tensors
            d_p = _per_class_backward(probabilities, valid, positives, grad, alpha, gamma, weight, eps, gradient_sums)
            return d_p, None, None, None, None, None, None, None
        probabilities, valid, positives = ctx.saved_tensors
        slope = 1 - 2 * eps
        scale = valid * (grad * (1 - alpha) * slope)  # (N,)
        d_p = torch.empty_like(probabilities)
        for rows in row_tiles(*probabilities.shape):
            p, out = probabilities[rows], d_p[rows]
            q = p.mul(slope).add_(eps)
            log_negative = q.neg().log1p_()  # log(1 - q)
            torch.mul(p, -slope, out=out).add_(1 - eps)  # 1 - q
            torch.div(q, out, out=out).sub_(log_negative, alpha=gamma)
            out.mul_(q if gamma == 2 else q.pow_(gamma - 1)).mul_(scale[rows, None])
        q_pos = probabilities.view(-1)[positives] * slope + eps
        # d/dq of the correction alpha (1 - q)^gamma (-log q) - (1 - alpha) q^gamma (-log(1 - q))
        d_positive = alpha * (gamma * (1 - q_pos).pow(gamma - 1) * torch.log(q_pos) - (1 - q_pos).pow(gamma) / q_pos)
        d_positive = d_positive - (1 - alpha) * q_pos.pow(gamma - 1) * (q_pos / (1 - q_pos)
                                                                        - gamma * torch.log1p(-q_pos))
        d_p.view(-1).index_add_(0, positives, d_positive * (grad * slope))
        return d_p, None, None, None, None, None, None, None


def _per_class_backward(probabilities: Tensor, valid: Tensor, positives: Tensor, grad: Tensor, alpha: float,
                        gamma: Tensor, weight: Tensor, eps: float,
                        gradient_sums: Callable[[Tensor, Tensor], None] | None) -> Tensor:
    """``dL/dp (N, C)`` of :class:`SparseFocalLoss` with ``gamma (C,)`` and ``weight (C,)``; passes the
    per-class gradient magnitudes to ``gradient_sums`` (see :func:`focal_loss_sum`)."""
    slope = 1 - 2 * eps
    classes = probabilities.shape[1]
    scale = valid * (grad * (1 - alpha) * slope)  # (N,)
    gamma_minus_one, log_weight = gamma - 1, weight.log()
    negative = torch.zeros(classes, dtype=torch.float64, device=probabilities.device)  # (C,)
    d_p = torch.empty_like(probabilities)
    for rows in row_tiles(*probabilities.shape):
        p, out = probabilities[rows], d_p[rows]
        q = p.mul(slope).add_(eps)
        log_negative = q.neg().log1p_()  # log(1 - q)
        torch.mul(p, -slope, out=out).add_(1 - eps)  # 1 - q
        torch.div(q, out, out=out).sub_(log_negative.mul_(gamma))
        # weight_c q^(gamma_c - 1) = exp((gamma_c - 1) log q + log weight_c), in one pass besides log and exp
        out.mul_(torch.addcmul(log_weight, q.log_(), gamma_minus_one, out=q).exp_())  # weight_c d/dq [...] >= 0
        if gradient_sums is not None:
            sensitivity = torch.addcmul(p, p, p, value=-1, out=log_negative)  # p (1 - p): dp/dlogit
            negative += (valid[rows] @ sensitivity.mul_(out)).double()  # (C,)
        out.mul_(scale[rows, None])
    labels = positives % classes  # (P,)
    gamma_pos, weight_pos = gamma[labels], weight[labels]
    p_pos = probabilities.view(-1)[positives]
    q_pos = p_pos * slope + eps
    # d/dq of the positive's loss alpha (1 - q)^gamma (-log q) (<= 0) and of the negative's it replaces
    positive_part = alpha * (gamma_pos * (1 - q_pos).pow(gamma_pos - 1) * torch.log(q_pos)
                             - (1 - q_pos).pow(gamma_pos) / q_pos)
    negative_part = (1 - alpha) * q_pos.pow(gamma_pos - 1) * (q_pos / (1 - q_pos) - gamma_pos * torch.log1p(-q_pos))
    d_positive = (positive_part - negative_part) * weight_pos
    d_p.view(-1).index_add_(0, positives, d_positive * (grad * slope))
    if gradient_sums is not None:
        magnitude = weight_pos * slope * p_pos * (1 - p_pos)  # (P,) |dL/dq| -> |dL/dp| p (1 - p)
        negative *= (1 - alpha) * slope
        negative.index_add_(0, labels, (negative_part * magnitude).double(), alpha=-1)  # positives are no negatives
        positive = torch.zeros_like(negative).index_add_(0, labels, (positive_part.abs() * magnitude).double())
        gradient_sums(positive, negative.clamp_(min=0))
    return d_p


#: Elements of one tile of :func:`row_tiles` (16 MB in float32).
TILE_ELEMENTS = 1 << 22


def row_tiles(rows: int, columns: int, elements: int | None = None) -> list[slice]:
    """Row blocks of a ``(rows, columns)`` tensor of at most ``elements`` (default
    :data:`TILE_ELEMENTS`) elements each, and at least one row each.

    The fused nodes (:class:`SparseFocalLoss`, :class:`dlde.model.directional.CosineSigmoidRatio`) make
    their scratch tensors one tile at a time. A ``(B, A, C)`` tensor of a COCO-sized batch is
    tens of MB: above glibc's 32 MB mmap threshold every such allocation is a fresh mapping whose
    pages fault on first touch (an element-wise op on 35 MB costs 18 ms allocated, 2 ms in place,
    on this 2-core CPU), while tiles of 16 MB are served from the heap and reused.
    """
    step = max(1, (elements or TILE_ELEMENTS) // max(columns, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def detection_loss(anchors: Tensor, regressions: Tensor | None, classifications: Tensor, annotations: Tensor, *,
                   thresholds: Mapping[str, float] | None = None, box_coder: BoxCoder | None = None,
                   alpha: float = 0.25, gamma: float = 2.0, box_loss: str = "smooth_l1",
                   allow_low_quality_matches: bool = True, assignment: Assignment | None = None,
                   positives_reducer: Callable[[Tensor], Tensor] | None = None,
                   image_size: Sequence[int] | None = None,
                   equalized: EqualizedFocal | None = None) -> dict[str, Tensor]:
    """RetinaNet losses for a batch.

    Args:
        anchors: ``(B, A, 4)`` or ``(A, 4)`` anchors, x1, y1, x2, y2 in pixels.
        regressions: ``(B, A, 4)`` predicted deltas (see :class:`dlde.model.boxes.BoxCoder`); None
            for the classification loss alone (what trains only the scores: the refit after
            re-imprinting).
        classifications: ``(B, A, C)`` class probabilities.
        annotations: ``(B, M, 5)`` x1, y1, x2, y2, label, padded with label -1.
        thresholds: IoU thresholds ``{'object', 'background'}``; anchors in between are ignored.
        box_coder: the delta parameterisation (default weights 1, 1, 1, 1).
        alpha, gamma: focal-loss parameters.
        box_loss: ``'smooth_l1'`` (beta 1/9) or ``'l1'`` on deltas, or ``'giou'`` on decoded boxes.
        allow_low_quality_matches: each annotation's best anchor is a positive too.
        assignment: the batch's anchor assignment when already computed (the detector's forward
            computes it once per step); otherwise the anchors are matched here, without the
            degenerate boxes (:func:`drop_degenerate_boxes`, with one warning).
        positives_reducer: maps this process's number of positive anchors to the normalizer, e.g.
            its share of the global count in distributed training (detectron2's convention), so N
            processes of batch B give the gradient of one process of batch N * B.
        image_size: ``(H, W)`` of the batch, so boxes entirely outside it are dropped too when the
            anchors are matched here.
        equalized: the equalized focal loss's state: the focal loss then takes each class's
            focusing factor and weight from it (``gamma`` is its base), and the backward adds the
            step's gradient magnitudes to it. None: the focal loss.

    Returns:
        ``{'classification': focal loss over non-ignored anchors, 'bbox_regression': box loss over
        positives}``, both summed and divided by the number of positive anchors (at least 1), so an
        image without objects gives a zero box loss; without ``regressions``, the first alone.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"unknown box_loss {box_loss!r}; options: {', '.join(BOX_LOSSES)}")
    box_coder = box_coder or BoxCoder()
    batch, num_anchors, classes = classifications.shape
    annotations = check_annotations(annotations, classes, batch)
    if anchors.dim() == 3:
        anchors = anchors[0]
    if assignment is None:
        annotations = drop_degenerate_boxes(annotations, image_size)
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
    # The focal loss of every valid (anchor, class) pair with the N positive pairs as sparse targets,
    # in one autograd node (no dense one-hot target, no saved intermediates of size (B, A, C)).
    flat_positives = objects.reshape(-1).nonzero().squeeze(1) * classes + labels  # (N,) into (B * A * C)
    focusing = {"gamma": gamma}
    if equalized is not None:  # gamma_j and weights from the steps before this one
        focusing["gamma"], focusing["weight"] = equalized.focusing()
        focusing["gradient_sums"] = equalized.accumulate
    cls = focal_loss_sum(classifications.float().reshape(batch * num_anchors, classes), valid.reshape(-1),
                         flat_positives, alpha=alpha, **focusing) / positives
    if regressions is None:
        return {"classification": cls}
    return {"classification": cls, "bbox_regression": _box_loss_sum(anchors, regressions, assignment, box_coder,
                                                                    box_loss) / positives}


def _box_loss_sum(anchors: Tensor, regressions: Tensor, assignment: Assignment, box_coder: BoxCoder,
                  box_loss: str) -> Tensor:
    """The box loss of :func:`detection_loss` summed over the positive anchors (``anchors`` ``(A, 4)``)."""
    objects = assignment.objects_mask
    deltas = regressions[objects].float()  # (N, 4)
    matched_anchors = anchors[None].expand(len(objects), -1, -1)[objects]
    matched_boxes = assignment.assigned_annotations[..., :4][objects]
    if box_loss == "giou":
        return generalized_box_iou_loss(box_coder.decode(matched_anchors, deltas), matched_boxes, reduction="sum")
    target_deltas = box_coder.encode(matched_anchors, matched_boxes)
    if box_loss == "l1":
        return F.l1_loss(deltas, target_deltas, reduction="sum")
    return F.smooth_l1_loss(deltas, target_deltas, beta=1 / 9, reduction="sum")
