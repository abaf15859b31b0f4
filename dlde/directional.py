"""The directional classification head of DLDENet."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import assign_batch, check_thresholds
from .heads import SubModule
from .means import TrackedMeans


class DirectionalClassification(nn.Module):
    """Scores anchors by the cosine between a unit embedding and tracked class means.

    Each anchor of each pyramid level gets an embedding on the unit sphere (:meth:`encode`).
    Every class ``c`` keeps a mean direction ``mean_c`` (:class:`dlde.means.TrackedMeans`),
    moved towards the embeddings of the anchors matched to ``c`` (:meth:`track`), never by
    gradient. The probability of class ``c`` (:meth:`classify`) is the scaled sigmoid

        p_c = sigmoid(|w_c| (s_c + b_c)) / sigmoid(|w_c| (1 + b_c)),   s_c = cos(embedding, mean_c),

    which is 1 when the embedding points exactly along the mean. The weight acts through its
    magnitude so ``p_c`` stays in [0, 1] whatever sign training gives it; a class whose mean is
    still zero (never tracked) scores 0.

    Args:
        in_channels: channels of each pyramid level.
        embedding_size: dimension ``d`` of the embeddings.
        anchors: anchors per location.
        features: channels inside the encoder tower.
        classes: number of classes ``C``.
        assignation_thresholds: ``{'object': float, 'background': float}`` IoU thresholds used to
            pick the anchors whose embeddings are tracked (copied, never modified).
        means_update: ``'batch'`` (one update per batch) or ``'manual'`` (accumulate, then
            :meth:`update_means`).
        means_lr: step of the ``'batch'`` update.
        convs: hidden convolutions of the encoder tower.
        group_norm: GroupNorm in the encoder tower.
        allow_low_quality_matches: track each annotation's best anchor even below the threshold.
        init_weight: initial ``w`` (7 gives p(cos=0) ~ 0.03 with the initial bias).
        init_bias: initial ``b``.
        means_init: starting means, ``'zeros'`` (the original: a class has no mean until first
            tracked), ``'orthogonal'`` or ``'random'`` (see :meth:`dlde.means.TrackedMeans.initialize`).
    """

    def __init__(self, in_channels: int, embedding_size: int, anchors: int, features: int, classes: int,
                 assignation_thresholds: Mapping[str, float] | None = None, means_update: str = "batch",
                 means_lr: float = 0.1, *, convs: int = 4, group_norm: bool = False,
                 allow_low_quality_matches: bool = True, init_weight: float = 7.0, init_bias: float = -0.5,
                 means_init: str = "zeros"):
        super().__init__()
        self.embedding_size = embedding_size
        self.classes = classes
        self.assignation_thresholds = check_thresholds(assignation_thresholds)
        self.allow_low_quality_matches = allow_low_quality_matches
        self.tracker = TrackedMeans(classes, embedding_size, mode=means_update, lr=means_lr)
        self.tracker.initialize(means_init)
        self.weight = nn.Parameter(torch.full((classes,), float(init_weight)))
        self.bias = nn.Parameter(torch.full((classes,), float(init_bias)))
        self.encoder = SubModule(in_channels, embedding_size, anchors, features, convs=convs,
                                 group_norm=group_norm)

    # The tracked state, under the seed's names.
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

    def encode(self, feature_map: Tensor) -> Tensor:
        """Unit embeddings of one level.

        Args:
            feature_map: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, H * W * anchors, d)`` unit vectors (a zero vector stays zero instead of NaN).
        """
        return F.normalize(self.encoder(feature_map).float(), dim=-1, eps=1e-12)

    def embed(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Unit embeddings of all levels concatenated: ``(B, A, d)``."""
        return torch.cat([self.encode(x) for x in feature_maps], dim=1)

    def track(self, embeddings: Tensor, anchors: Tensor, annotations: Tensor) -> None:
        """Update the means with the embeddings of anchors matched to an object.

        Args:
            embeddings: ``(B, A, d)`` unit embeddings.
            anchors: ``(B, A, 4)`` or ``(A, 4)`` anchors, x1, y1, x2, y2 (the same for every image).
            annotations: ``(B, M, 5)`` x1, y1, x2, y2, label; rows with label -1 are padding.
        """
        with torch.no_grad():
            if anchors.dim() == 3:
                anchors = anchors[0]
            assignment = assign_batch(anchors, annotations, self.assignation_thresholds,
                                      allow_low_quality_matches=self.allow_low_quality_matches)
            objects = assignment.objects_mask  # (B, A)
            labels = assignment.assigned_annotations[..., 4][objects]  # (N,)
            self.tracker.update(embeddings[objects], labels)

    def classify(self, embeddings: Tensor) -> Tensor:
        """Class probabilities ``(..., C)`` of unit embeddings ``(..., d)``."""
        initialized = self.tracker.initialized  # (C,)
        weight = self.weight.abs()
        # z_c = |w_c| (cos_c + b_c) in one matrix product; classes without a mean get z = -1e4 (p = 0).
        scale = torch.where(initialized, weight, torch.zeros_like(weight))
        shift = torch.where(initialized, weight * self.bias, torch.full_like(weight, -1e4))
        directions = F.normalize(self.means, dim=1) * scale[:, None]  # (C, d)
        flat = embeddings.reshape(-1, embeddings.shape[-1]).to(directions.dtype)
        z = torch.addmm(shift, flat, directions.t()).reshape(*embeddings.shape[:-1], -1)  # (..., C)
        # p = sigmoid(z) / sigmoid(|w| (1 + b)) <= 1 because cos <= 1 and |w| >= 0; the clamp only
        # removes rounding above 1. Three passes over (..., C), which dominates this head's cost.
        return (torch.sigmoid(z) / torch.sigmoid(weight * (1 + self.bias))).clamp(max=1.0)

    def forward(self, feature_maps: Sequence[Tensor], anchors: Tensor | None = None,
                annotations: Tensor | None = None, classify: bool = True) -> Tensor | None:
        """Score the anchors, then (in training) track the batch.

        Scores use the means as they were before this batch: the labels of the batch never leak
        into its own scores.

        Args:
            feature_maps: one ``(B, in_channels, H_l, W_l)`` map per level.
            anchors: ``(B, A, 4)``; required in training.
            annotations: ``(B, M, 5)``; required in training.
            classify: return the probabilities; False only tracks (training) or does nothing.

        Returns:
            ``(B, A, C)`` probabilities, or None when ``classify`` is False.
        """
        embeddings = self.embed(feature_maps)
        probabilities = self.classify(embeddings) if classify else None
        if self.training:
            if anchors is None:
                raise ValueError("DirectionalClassification needs the anchors in training mode to track the means")
            if annotations is None:
                raise ValueError("DirectionalClassification needs the annotations in training mode to track the means")
            self.track(embeddings, anchors, annotations)
        return probabilities

    def update_means(self) -> None:
        """``'manual'`` mode: set the means to the normalized accumulated sums and reset the sums."""
        self.tracker.update_means()
