"""Validation during training: the loss and the COCO (or, for an LVIS-style set, LVIS) metrics of the
validation set, computed in one process or sharded over the processes of a torchrun with the one-process
numbers."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from dlde.evaluation import DEFAULT_PAIR_THRESHOLD, dataset_metrics, evaluate, max_detections_for, to_original
from dlde.model.modes import evaluating

from . import distributed
from .batches import make_loader, sharded_eval_batches
from .config import TrainConfig

_EVALUATE = inspect.signature(evaluate).parameters


@torch.no_grad()
def validation_loss(model: nn.Module, dataset, config: TrainConfig, device,
                    context: distributed.DistributedContext | None = None) -> float:
    """Mean total loss over ``dataset`` in eval mode (no tracking, no gradient).

    With several processes each computes its shard of every global batch of
    ``config.eval_batch_size`` images with the mean number of positives over processes as the
    normalizer, so the mean over processes is the one-process value.
    """
    if context is not None and context.distributed:
        return _sharded_validation_loss(model, dataset, config, device, context)
    total, batches = 0.0, 0
    with evaluating(model, evaluate_loss=True):
        for images, annotations in make_loader(dataset, config, shuffle=False, batch_size=config.eval_batch_size):
            images, annotations = images.to(device), annotations.to(device)
            losses = model.loss(*model(images), annotations)
            total += float(sum(losses.values()))
            batches += 1
    return total / max(1, batches)


def _sharded_validation_loss(model: nn.Module, dataset, config: TrainConfig, device,
                             context: distributed.DistributedContext) -> float:
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    with evaluating(model, evaluate_loss=True):
        for _, images, annotations in sharded_eval_batches(dataset, config, context):
            batches += 1
            if images is None:  # an empty shard still joins the normalizer's all-reduce
                distributed.loss_normalizer(torch.zeros((), device=device))
                continue
            images, annotations = images.to(device), annotations.to(device)
            losses = model.loss(*model(images), annotations, positives_reducer=distributed.loss_normalizer)
            total += sum(losses.values()).double()
    return float(distributed.mean_over_processes(total)) / max(1, batches)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, config: TrainConfig, device,
                   context: distributed.DistributedContext | None = None) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset``, LVIS's for an LVIS-style one (:func:`dlde.evaluation.evaluate`).

    With several processes each predicts its shard of the images, rank 0 gathers the detections
    and runs COCOeval once, and every process receives the metrics: the same numbers as one
    process (images of one size; with mixed sizes the padding of a batch can differ).
    """
    if context is None or not context.distributed:
        return evaluate(model, dataset, batch_size=config.eval_batch_size, device=device, progress=False)
    max_detections = max_detections_for(dataset)
    labels = _EVALUATE["labels"].default
    threshold = float(getattr(model, "score_threshold", DEFAULT_PAIR_THRESHOLD))
    local = []
    with evaluating(model):
        for indices, images, _ in sharded_eval_batches(dataset, config, context):
            if images is None:
                continue
            outputs = model(images.to(device))
            for index, (boxes, classifications) in zip(indices, outputs):  # loop over images
                local.append((index, to_original(boxes, classifications, dataset.meta(index), max_detections,
                                                  labels=labels, score_threshold=threshold)))
    gathered = distributed.gather_to_main(local)
    metrics = None
    if context.is_main:
        by_index = dict(item for part in gathered for item in part)
        metrics = dataset_metrics(dataset, [by_index[i] for i in range(len(dataset))], max_detections=max_detections)
    return distributed.broadcast_from_main(metrics)
