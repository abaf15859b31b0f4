"""Model names -> classification heads: the one registry of dlde.

A new head is one file (a :class:`dlde.model.heads.ClassificationHead` with its ``Options``) plus one
line here; the trainer, the run folders, the notebooks and the checkpoints then know it by name.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from .directional import DirectionalClassification
from .heads import ClassificationHead, SigmoidClassification
from .prototypes import CosinePrototypeClassification

#: model name -> classification head.
HEADS: dict[str, type[ClassificationHead]] = {
    "dlde": DirectionalClassification,
    "retinanet": SigmoidClassification,
    "prototypes": CosinePrototypeClassification,
}


def head_class(name: str) -> type[ClassificationHead]:
    """The head registered as ``name`` (a clear error listing the names otherwise)."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; options: {', '.join(sorted(HEADS))}") from None


def head_option_names(name: str) -> list[str]:
    """The option names of head ``name`` (its ``Options`` fields)."""
    return [f.name for f in fields(head_class(name).Options)]


def build_detector(name: str, classes: int, *, head_options: Mapping[str, Any] | None = None, **detector_options):
    """A :class:`dlde.RetinaNet` with the head registered as ``name``.

    Args:
        name: a key of :data:`HEADS`.
        classes: number of classes.
        head_options: the head's options (fields of its ``Options``).
        **detector_options: keyword arguments of :class:`dlde.RetinaNet`.
    """
    from .detector import RetinaNet

    return RetinaNet(classes, classification_head=(name, dict(head_options or {})), **detector_options)


def load_detector(path: str | Path, device: str | torch.device | None = None):
    """Any dlde checkpoint as a :class:`dlde.RetinaNet` with the head it was saved with."""
    from .detector import RetinaNet

    return RetinaNet.from_checkpoint(path, device=device)
