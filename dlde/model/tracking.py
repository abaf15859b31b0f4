"""Passes over data for tracked class means, without scoring or training: track a batch (the
initializing pass), or collect the embeddings of its matched anchors (re-imprinting)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .losses import check_annotations, drop_degenerate_boxes
from .modes import buffers_kept_only_on_success


@torch.no_grad()
def track_batch(model: nn.Module, images: Tensor, annotations: Tensor) -> None:
    """Track one batch into ``model.tracked_means`` (no gradient, no scoring), in the model's mode.

    What the seed's ``forward(images, annotations, initializing=True)`` did: the embeddings of the
    anchors matched to ``annotations`` (the model's own assignment) update the means; BatchNorm
    layers in training mode update their running statistics as in any training forward. The
    inputs are checked as by the model's forward (:meth:`dlde.RetinaNet.check_images`, degenerate
    boxes dropped with one warning), and a refused update (non-finite embeddings) leaves every
    buffer as it was.

    Args:
        model: a :class:`dlde.RetinaNet` whose head has tracked means.
        images: ``(B, 3, H, W)`` network input (``B >= 1``).
        annotations: ``(B, M, 5)`` x1, y1, x2, y2 in pixels and label, padded with label -1 rows.

    Raises:
        TypeError: the head keeps no tracked means.
        ValueError: an empty batch or bad annotations.
        FloatingPointError: non-finite or absurd pixels, or non-finite embeddings.
    """
    if model.tracked_means is None:
        raise TypeError(f"tracking needs class means; the {model.classification.name!r} head has none")
    with buffers_kept_only_on_success(model, enabled=model.training and model.check_inputs):
        embeddings, labels = matched_embeddings(model, images, annotations)
        model.tracked_means.update(embeddings, labels)


@torch.no_grad()
def matched_embeddings(model: nn.Module, images: Tensor, annotations: Tensor) -> tuple[Tensor, Tensor]:
    """The embeddings of the anchors matched to ``annotations (B, M, 5)``, as the head scores and
    tracks them (centered when it centers), with their labels: ``(N, d)`` and ``(N,)``.

    The one place anchors are matched to boxes for the means: tracking (:func:`track_batch`),
    re-imprinting (:mod:`dlde.train.reimprint`) and imprinting from boxes
    (:func:`dlde.model.growth.imprint`). Inputs are checked as by the model's forward (degenerate
    boxes dropped with one warning); the model's mode is used as it is (BatchNorm layers in
    training mode update their statistics).
    """
    images = model.check_images(images)
    if images.shape[0] == 0:
        raise ValueError("an empty batch (0 images) has no embeddings")
    annotations = check_annotations(annotations, model.classes, images.shape[0]).to(images.device)
    annotations = drop_degenerate_boxes(annotations, images.shape[-2:])
    anchors, embeddings = model.embeddings(images)  # (B, A, 4), (B, A, d)
    assignment = model.assign(anchors, annotations)
    objects = assignment.objects_mask  # (B, A)
    return embeddings[objects], assignment.assigned_annotations[..., 4][objects].long()
