"""Looking inside a trained detector: the embeddings of the anchors matched to objects.

Detections on dataset items and on your own images are :mod:`dlde.inference.detect`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from dlde.data.transforms import collate
from dlde.model.modes import evaluating


def device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def matched_embeddings(model: nn.Module, dataset, *, max_images: int | None = 200, batch_size: int = 16,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of the anchors matched to ground-truth objects (the ones the means track).

    Args:
        model: a detector whose head has an embedding space (DLDENet, learned prototypes).
        dataset: a :class:`dlde.CocoDetection` (first ``max_images`` items are used).
        max_images: how many images to embed (None: all).
        batch_size: images per forward pass.
        progress: unused (kept for compatibility; the pass is short).

    Returns:
        ``(embeddings (N, d) float32, labels (N,) int64)``.
    """
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    device = device_of(model)
    collected, labels = [], []
    d = 0
    with evaluating(model):
        for images, annotations in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            anchors, embeddings = model.embeddings(images.to(device))  # TypeError for heads without embeddings
            assignment = model.assign(anchors, annotations.to(device))
            objects = assignment.objects_mask
            collected.append(embeddings[objects].cpu())
            labels.append(assignment.assigned_annotations[..., 4][objects].long().cpu())
            d = embeddings.shape[-1]
    embeddings = torch.cat(collected) if collected else torch.zeros(0, d)
    labels = torch.cat(labels) if labels else torch.zeros(0)
    return embeddings.numpy().astype(np.float32), labels.numpy().astype(np.int64)
