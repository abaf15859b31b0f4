"""The seed's spellings, kept working, all in this module: ``DLDENetWithTrackedMeans(classes, resnet,
...)`` with its positional arguments, ``forward(images, annotations, initializing)`` and the
``means_*`` properties; its head's ``means``, ``embeddings_sums``, ``means_update``, ``means_lr``,
``update_means()`` and ``track(embeddings, anchors, annotations)`` (:class:`SeedHeadSpellings`);
and ``SubModule`` (the head tower). New code builds ``RetinaNet(...,
classification_head=head_factory("dlde", ...))`` or :func:`dlde.model.builders.build_detector`
``("dlde", ...)``, and reads the tracked state through ``model.tracked_means``
(:class:`dlde.model.means.TrackedMeans`).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .anchors import Assignment
from .detector import RetinaNet
from .directional import DirectionalClassification
from .heads import HeadTower
from .tracking import track_batch

#: The seed's name of the head tower.
SubModule = HeadTower


class SeedHeadSpellings:
    """The seed's names for the tracked state of a head that holds :class:`dlde.model.means.TrackedMeans`
    as ``self.tracker`` (mixed into :class:`SeedDirectionalClassification`)."""

    @property
    def means(self) -> Tensor:
        """``(C, d)`` buffer: the class mean directions (zero rows for classes never tracked)."""
        return self.tracker.means

    @means.setter
    def means(self, value: Tensor) -> None:
        with torch.no_grad():
            self.tracker.means.copy_(value)

    @property
    def embeddings_sums(self) -> Tensor:
        """``(C, d)`` buffer: per-class sums accumulated in ``'manual'`` mode."""
        return self.tracker.embeddings_sums

    @property
    def means_update(self) -> str:
        return self.tracker.mode

    @property
    def means_lr(self) -> float:
        return self.tracker.lr

    @means_lr.setter
    def means_lr(self, value: float) -> None:
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"means_lr must be in (0, 1], got {value}")
        self.tracker.lr = float(value)

    def update_means(self) -> None:
        """``'manual'`` mode: set the means to the normalized accumulated sums and reset the sums."""
        self.tracker.update_means()

    def track(self, embeddings: Tensor, anchors_or_assignment: Tensor | Assignment,
              annotations: Tensor | None = None, **keywords: Any) -> None:
        """The seed's ``track(embeddings, anchors, annotations)``: ``anchors (B, A, 4)`` or ``(A, 4)``
        are assigned to ``annotations (B, M, 5)`` (x1, y1, x2, y2, label; -1 rows are padding)
        here; an :class:`dlde.model.anchors.Assignment` is used as it is."""
        assignment = anchors_or_assignment
        if not isinstance(assignment, Assignment):
            if annotations is None:
                raise ValueError("track(embeddings, anchors, annotations) needs the annotations")
            with torch.no_grad():
                assignment = self.assign(anchors_or_assignment, annotations)
        super().track(embeddings, assignment, **keywords)


class SeedDirectionalClassification(SeedHeadSpellings, DirectionalClassification):
    """:class:`dlde.DirectionalClassification` with the seed's spellings (the head of
    :class:`DLDENetWithTrackedMeans`); the same weights, state, options and name (``"dlde"``)."""


class DLDENetWithTrackedMeans(RetinaNet):
    """Deep Local Directional Embeddings Net: RetinaNet whose classifier is
    :class:`dlde.DirectionalClassification` (cosine to tracked class means).

    The seed's entry point, with its positional arguments. The same weights and checkpoints as
    ``RetinaNet(classes, ..., classification_head=head_factory("dlde", ...))``; its head is a
    :class:`SeedDirectionalClassification` (the head with the seed's spellings).

    Args:
        classes, resnet, features, anchors, fpn_levels, pretrained, device: as :class:`RetinaNet`.
        embedding_size: dimension of the per-anchor unit embeddings.
        assignation_thresholds: IoU thresholds for the loss and for picking tracked anchors.
        means_update: ``'batch'`` (one update per training batch) or ``'manual'`` (accumulate,
            then call :meth:`update_means`, e.g. once per epoch).
        means_lr: step of the ``'batch'`` update (``model.means_lr = x`` changes it).
        means_init: starting class means: ``'orthogonal'``, ``'random'`` or ``'zeros'`` (the original).
        init_weight, init_bias: initial ``w`` and ``b`` of :meth:`DirectionalClassification.classify`.
        classifier_init, means_lr_schedule, center_momentum, means_warmup, weight_param, anchor_terms:
            see :class:`dlde.DirectionalClassification` (not in the original).
        **kwargs: the keyword-only options of :class:`RetinaNet`.

    Defaults differ from the original's (512, lr 0.1, 'zeros'): see
    :class:`dlde.DirectionalClassification.Options`.

    ``forward(images, annotations=None, initializing=False)``: as :class:`RetinaNet`; training
    needs ``annotations`` (the means are tracked after the batch is scored), and
    ``initializing=True`` only tracks the batch (train or eval mode, no gradients) and returns None.
    """

    #: The head this class builds (``from_checkpoint`` checks it).
    head_name = "dlde"
    _Options = DirectionalClassification.Options

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 embedding_size: int = _Options.embedding_size,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 means_update: str = _Options.means_update, means_lr: float = _Options.means_lr,
                 pretrained: bool = True, device: str | torch.device | None = None, *,
                 means_init: str = _Options.means_init, init_weight: float = _Options.init_weight,
                 init_bias: float = _Options.init_bias, classifier_init: str = _Options.classifier_init,
                 means_lr_schedule: str = _Options.means_lr_schedule,
                 center_momentum: float = _Options.center_momentum, means_warmup: int = _Options.means_warmup,
                 weight_param: str = _Options.weight_param, anchor_terms: bool = _Options.anchor_terms,
                 **kwargs: Any):
        if int(embedding_size) < 2:
            raise ValueError(f"embedding_size must be at least 2, got {embedding_size}")
        kwargs.pop("classification_head", None)
        options = {"embedding_size": int(embedding_size), "means_update": means_update,
                   "means_lr": float(means_lr), "means_init": means_init, "init_weight": init_weight,
                   "init_bias": init_bias, "classifier_init": classifier_init, "means_lr_schedule": means_lr_schedule,
                   "center_momentum": float(center_momentum), "means_warmup": int(means_warmup),
                   "weight_param": weight_param, "anchor_terms": bool(anchor_terms)}
        super().__init__(classes, resnet, features, anchors, fpn_levels, pretrained, device,
                         assignation_thresholds=assignation_thresholds,
                         classification_head=partial(SeedDirectionalClassification.build,
                                                     **SeedDirectionalClassification.check_options(options)),
                         **kwargs)

    def forward(self, images: Tensor, annotations: Tensor | None = None, initializing: bool = False):
        """:meth:`dlde.RetinaNet.forward`, plus the seed's ``initializing=True``: only track the batch
        (:func:`dlde.model.tracking.track_batch`) and return None."""
        if not initializing:
            return super().forward(images, annotations)
        if annotations is None:
            raise ValueError("initializing=True tracks the means and needs the annotations")
        track_batch(self, images, annotations)
        return None

    @property
    def embedding_size(self) -> int:
        return self.classification.embedding_size

    @property
    def means_update(self) -> str:
        return self.classification.means_update

    @property
    def means_lr(self) -> float:
        return self.classification.means_lr

    @means_lr.setter
    def means_lr(self, value: float) -> None:
        self.classification.means_lr = value

    @property
    def means_init(self) -> str:
        return self.classification.means_init
