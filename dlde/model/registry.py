"""Head names -> classification heads, and backbone names -> backbones: the registries of the model.

A leaf: it imports the heads and nothing that builds a detector (that is
:mod:`dlde.model.builders`). A new head is one file (a :class:`dlde.model.heads.ClassificationHead`
with its ``Options``) plus one line in :data:`HEADS`; the trainer, its CLI, the run folders, the
notebooks and the checkpoints then know it by name and can set every one of its options.

A new backbone is one file (a module following the protocol of :mod:`dlde.model.backbone`, with a
``name`` and ``options()``) plus one line in :data:`BACKBONES`; ``RetinaNet(...,
backbone=backbone_factory(name, **options))`` builds it and its checkpoints load back by name.
"""
from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import Any, Callable

from torch import nn

from .directional import DirectionalClassification
from .heads import ClassificationHead, SigmoidClassification
from .prototypes import CosinePrototypeClassification

#: head name -> classification head class.
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


def all_head_options() -> dict[str, Any]:
    """Every option of every registered head with its default (the first head's, where two heads
    share a name): what the trainer's config and CLI accept as head options."""
    options: dict[str, Any] = {}
    for head in HEADS.values():
        for option in fields(head.Options):
            options.setdefault(option.name, option.default)
    return options


def build_head(name: str, in_channels: int, anchors: int, features: int, classes: int, **settings: Any
               ) -> ClassificationHead:
    """The head registered as ``name`` for a detector's geometry (``settings``: the detector's head
    settings ``convs``, ``group_norm``, ``assignation_thresholds``, ``allow_low_quality_matches`` and
    the head's own options, validated against its ``Options``)."""
    return head_class(name).build(in_channels, anchors, features, classes, **settings)


def head_factory(name: str, **options: Any) -> Callable[..., ClassificationHead]:
    """A function building head ``name`` with ``options`` for a detector's geometry: pass it as
    ``RetinaNet(..., classification_head=head_factory("dlde", embedding_size=64))``. The options are
    validated now (a misspelt one fails here, before any weight is drawn)."""
    head_class(name).check_options(options)
    return partial(build_head, name, **options)


#: backbone name -> backbone class (or function) built as ``(levels, channels, **options)``. The
#: default backbone, :class:`dlde.model.backbone.ResNetFPN`, is built from the detector's own
#: ``resnet`` and ``pretrained`` arguments and needs no entry.
BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def backbone_class(name: str) -> Callable[..., nn.Module]:
    """The backbone registered as ``name`` (a clear error listing the names otherwise)."""
    try:
        return BACKBONES[name]
    except KeyError:
        registered = ", ".join(sorted(BACKBONES)) or "none"
        raise ValueError(f"unknown backbone {name!r}; registered: {registered} (register a backbone in "
                         "dlde.model.registry.BACKBONES)") from None


def build_backbone(name: str, levels: list[int], channels: int, **options: Any) -> nn.Module:
    """The backbone registered as ``name`` for a detector's pyramid ``levels`` of ``channels`` channels."""
    return backbone_class(name)(levels, channels, **options)


def backbone_factory(name: str, **options: Any) -> Callable[[list[int], int], nn.Module]:
    """A function building backbone ``name`` with ``options`` for a detector's pyramid: pass it as
    ``RetinaNet(..., backbone=backbone_factory("mine", width=32))``. The name is checked now."""
    backbone_class(name)
    return partial(build_backbone, name, **options)
