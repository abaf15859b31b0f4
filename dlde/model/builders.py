"""Detectors by head name, and any dlde checkpoint back as a detector (above the detector and the
registry, which import neither this module nor each other's builders)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .detector import RetinaNet
from .registry import head_factory


def build_detector(name: str, classes: int, *, head_options: Mapping[str, Any] | None = None,
                   **detector_options: Any) -> RetinaNet:
    """A :class:`dlde.RetinaNet` with the head registered as ``name``.

    Args:
        name: a key of :data:`dlde.model.registry.HEADS`.
        classes: number of classes.
        head_options: the head's options (fields of its ``Options``).
        **detector_options: keyword arguments of :class:`dlde.RetinaNet` (``backbone=`` among them,
            e.g. :func:`dlde.model.registry.backbone_factory` ``("name", **options)``).
    """
    return RetinaNet(classes, classification_head=head_factory(name, **dict(head_options or {})),
                     **detector_options)


def load_detector(path: str | Path, device: str | torch.device | None = None) -> RetinaNet:
    """Any dlde checkpoint as a :class:`dlde.RetinaNet` with the head it was saved with, and its
    backbone: the default one, or one rebuilt by its name in :data:`dlde.model.registry.BACKBONES`
    (a clear error when that name is not registered)."""
    return RetinaNet.from_checkpoint(path, device=device)
