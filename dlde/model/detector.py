"""The one-stage detector: an injected backbone and pyramid, anchors, box regression, an injected
classification head, the loss and the post-processing.

The sigmoid RetinaNet, DLDENet (cosine to tracked means) and learned prototypes are one
:class:`RetinaNet` with another head (:mod:`dlde.model.registry`); its backbone is
:class:`dlde.model.backbone.ResNetFPN` or any module following the protocol of
:mod:`dlde.model.backbone`. What is done *to* a model lives beside it: class growth and imprinting
in :mod:`dlde.model.growth`, the initializing pass in :mod:`dlde.model.tracking`, checkpoint
layouts in :mod:`dlde.model.checkpoints`, builders by name in :mod:`dlde.model.builders`, the
seed's spellings in :mod:`dlde.model.compat`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import DEFAULT_RATIOS, DEFAULT_SCALES, DEFAULT_SIZES, Anchors, Assignment, assign_batch, check_thresholds
from .backbone import SUPPORTED_LEVELS, ResNetFPN, check_backbone, check_levels
from .boxes import BoxCoder
from .checkpoints import atomic_save, check_finite_state, read_model_record, state_mismatch
from .equalized_focal import EFL_SCALE, EqualizedFocal
from .heads import ClassificationHead, Regression, SigmoidClassification
from .inputs import all_finite, check_image_values, check_norm_sizes
from .losses import CLASSIFICATION_LOSSES, check_annotations, detection_loss, drop_degenerate_boxes
from .means import TrackedMeans
from .modes import buffers_kept_only_on_success, evaluating
from .registry import BACKBONES, backbone_factory, head_factory

DEFAULT_FEATURES = {"pyramid": 256, "regression": 256, "classification": 256}
#: Default smallest class probability a detection keeps (torchvision's RetinaNet value); the
#: evaluation falls back to it for a model without a ``score_threshold``.
SCORE_THRESHOLD = 0.05


def _check_features(features: Mapping[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_FEATURES)
    if features is not None:
        unknown = set(features) - set(DEFAULT_FEATURES)
        if unknown:
            raise ValueError(f"features has unknown keys {sorted(unknown)}; expected {sorted(DEFAULT_FEATURES)}")
        out.update({key: int(value) for key, value in features.items()})
    return out


def _check_anchors(anchors: Mapping[str, Sequence[float]] | None, levels: list[int]) -> dict[str, list[float]]:
    anchors = dict(anchors or {})
    unknown = set(anchors) - {"sizes", "scales", "ratios"}
    if unknown:
        raise ValueError(f"anchors has unknown keys {sorted(unknown)}; expected 'sizes', 'scales', 'ratios'")
    sizes = [float(s) for s in anchors.get("sizes", DEFAULT_SIZES)]
    if len(sizes) == len(SUPPORTED_LEVELS) and len(levels) != len(SUPPORTED_LEVELS):
        sizes = [sizes[level - SUPPORTED_LEVELS[0]] for level in levels]  # one size per level 3..7
    if len(sizes) != len(levels):
        raise ValueError(f"anchors['sizes'] needs one size per pyramid level {levels} (or five for "
                         f"levels 3-7), got {len(sizes)}")
    return {"sizes": sizes,
            "scales": [float(s) for s in anchors.get("scales", DEFAULT_SCALES)],
            "ratios": [float(r) for r in anchors.get("ratios", DEFAULT_RATIOS)]}


def _build_backbone(backbone: nn.Module | Callable[..., nn.Module] | None, resnet: int, levels: list[int],
                    channels: int, pretrained: bool) -> nn.Module:
    """The detector's backbone: :class:`ResNetFPN` for None, else the module given (or built from
    ``(levels, channels)``), checked against the pyramid (:func:`dlde.model.backbone.check_backbone`)."""
    if backbone is None:
        return ResNetFPN(resnet, levels, channels, pretrained=pretrained)
    if callable(backbone) and not isinstance(backbone, nn.Module):
        backbone = backbone(list(levels), channels)
    return check_backbone(backbone, levels, channels)


def _saved_backbone(saved: Mapping[str, Any] | None, source: str) -> Callable[..., nn.Module] | None:
    """What rebuilds the backbone a checkpoint records (None: the default :class:`ResNetFPN`).

    Raises:
        ValueError: the backbone is not registered under the name it was saved with.
    """
    if saved is None:
        return None
    name = saved.get("name")
    if name not in BACKBONES:
        raise ValueError(
            f"{source} was saved with a backbone passed as RetinaNet(backbone=...) ({name!r}), which dlde can "
            "rebuild only by its registered name: register it in dlde.model.registry.BACKBONES (a module with a "
            "class attribute `name` and an `options()` method) before loading, or build the detector again "
            "with the same backbone and load_state_dict(checkpoint['model'])")
    return backbone_factory(name, **dict(saved.get("options") or {}))


class TrainingOutput(tuple):
    """``(anchors (B, A, 4), regressions (B, A, 4), classifications (B, A, C))`` of a training-mode
    forward; unpacks like the plain tuple of the original, and carries the batch's
    :class:`dlde.model.anchors.Assignment` (``.assignment``) so the loss reuses it instead of matching again."""

    assignment: Assignment | None = None

    def __new__(cls, anchors: Tensor, regressions: Tensor, classifications: Tensor,
                assignment: Assignment | None = None):
        out = super().__new__(cls, (anchors, regressions, classifications))
        out.assignment = assignment
        return out


class RetinaNet(nn.Module):
    """RetinaNet with an ordinary sigmoid classification head (the baseline of DLDENet).

    Args:
        classes: number of object classes ``C`` (no background class; labels are 0..C-1).
        resnet: ResNet depth of the default backbone (18, 34, 50, 101, 152).
        features: channels ``{'pyramid', 'regression', 'classification'}`` (default 256 each).
        anchors: ``{'sizes', 'scales', 'ratios'}``; sizes per chosen level or for all of 3-7.
        fpn_levels: pyramid levels to use, any subset of 3-7 (default all).
        pretrained: ImageNet weights of the default backbone from the local torch cache (never
            downloaded).
        device: where to put the model (default: stay on the CPU).
        head_convs: hidden convolutions of each head tower.
        group_norm: GroupNorm in the head towers.
        assignation_thresholds: ``{'object': 0.5, 'background': 0.4}`` IoU thresholds.
        allow_low_quality_matches: each annotation's best anchor is a positive too.
        box_loss: ``'smooth_l1'``, ``'l1'`` or ``'giou'``.
        focal_alpha, focal_gamma: focal-loss parameters.
        classification_loss: ``'focal'``, or ``'efl'``: the equalized focal loss, whose per-class
            focusing factor grows from ``focal_gamma`` by up to ``efl_scale`` for classes whose
            negatives' gradients outweigh their positives' (:class:`dlde.model.equalized_focal.EqualizedFocal`,
            held as ``model.equalized_focal``, None with ``'focal'``); every head takes either.
        efl_scale: the scale ``s`` of the equalized focal loss.
        prior: initial class probability of the sigmoid head.
        score_threshold, nms_threshold, topk_candidates, max_detections: post-processing.
        class_names: one name per class (default ``"0"``, ``"1"``, ...); kept in checkpoints.
        classification_head: the classification head: a :class:`dlde.model.heads.ClassificationHead`
            built for these features, or a function that builds one from the detector's geometry
            ``(in_channels, anchors, features, classes, **settings)`` such as
            :func:`dlde.model.registry.head_factory` ``("dlde", embedding_size=64)`` (its weights are
            then drawn after the backbone's, as in every seeded run); None: the sigmoid head.
        backbone: the backbone and pyramid (held as ``model.fpn``): a module following the protocol
            of :mod:`dlde.model.backbone` (``(B, 3, H, W)`` in, one ``(B, features['pyramid'], H_l,
            W_l)`` map per level of ``fpn_levels`` at stride ``2**level`` out), or a function building
            one from ``(levels, channels)`` such as :func:`dlde.model.registry.backbone_factory`
            ``("name", **options)``; None: :class:`dlde.model.backbone.ResNetFPN` of depth ``resnet``
            (``resnet`` and ``pretrained`` concern only it). Checkpoints of a model with another
            backbone record its ``name`` and ``options()`` and load back when that name is registered
            in :data:`dlde.model.registry.BACKBONES`.
        check_inputs: check the values of every batch and of the training outputs (see below);
            False skips them for speed (also settable as ``model.check_inputs``; not saved).

    Input: ``images (B, 3, H, W)`` normalized floats, ``annotations (B, M, 5)`` as x1, y1, x2, y2
    in pixels and label, padded with label -1 rows.

    ``forward(images, annotations=None)`` returns, in training mode (or in eval mode with
    ``evaluate_loss = True``, detached) ``(anchors (B, A, 4), regressions (B, A, 4),
    classifications (B, A, C))``; in eval mode a list with one ``(boxes (N, 4), classifications
    (N, C))`` per image: boxes x1, y1, x2, y2 in input pixels clipped to the image, each with the
    class probabilities of its anchor (label = argmax, score = max). Pass the training output to
    :meth:`loss`.

    What the model refuses, before any state (BatchNorm statistics, tracked means, their κ
    statistics) changes, with one-line errors: images that are not ``(B, 3, H, W)`` floats, hold NaN
    or infinite values or values beyond ``±MAX_ABS_PIXEL`` (1e4, :mod:`dlde.model.inputs`; a
    ``FloatingPointError``), or are too small for a normalization layer (the message names the
    smallest size); malformed annotations. Boxes of zero width or height, or entirely outside the
    image, are dropped with one warning (as :class:`dlde.data.CocoDetection` drops them). In
    training, a forward whose box regressions are not finite puts every buffer back as it was and
    raises ``FloatingPointError``; so does any error inside the forward. With
    ``check_inputs=False`` the value checks and the buffer snapshot are skipped (shapes, sizes and
    annotations are still checked); they cost about 1 ms of a training step (0.2 % of a digits
    step of benchmarks/step_time.py, under 0.1 % of a coco-like one) and 0.2-0.5 ms of an
    inference step.
    """

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 pretrained: bool = True, device: str | torch.device | None = None, *,
                 head_convs: int = 4, group_norm: bool = False,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 allow_low_quality_matches: bool = True, box_loss: str = "smooth_l1",
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, classification_loss: str = "focal",
                 efl_scale: float = EFL_SCALE,
                 prior: float = SigmoidClassification.Options.prior,
                 score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = 0.5, topk_candidates: int = 1000,
                 max_detections: int = 300, class_names: Sequence[str] | None = None,
                 classification_head: ClassificationHead | Callable[..., ClassificationHead] | None = None,
                 backbone: nn.Module | Callable[..., nn.Module] | None = None, check_inputs: bool = True):
        super().__init__()
        if int(classes) < 1:
            raise ValueError(f"classes must be a positive integer, got {classes}")
        names = [str(c) for c in range(int(classes))] if class_names is None else [str(n) for n in class_names]
        if len(names) != int(classes):
            raise ValueError(f"class_names has {len(names)} names for {classes} classes")
        if classification_loss not in CLASSIFICATION_LOSSES:
            raise ValueError(f"unknown classification_loss {classification_loss!r}; options: "
                             f"{', '.join(CLASSIFICATION_LOSSES)}")
        levels = check_levels(fpn_levels)
        self.classes = int(classes)
        self.fpn_levels = levels
        self.features = _check_features(features)
        anchor_params = _check_anchors(anchors, levels)
        self.assignation_thresholds = check_thresholds(assignation_thresholds)
        self.head_convs = head_convs
        self.group_norm = group_norm
        self.allow_low_quality_matches = allow_low_quality_matches
        self.box_loss = box_loss
        self.focal_alpha, self.focal_gamma, self.prior = focal_alpha, focal_gamma, prior
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.topk_candidates, self.max_detections = topk_candidates, max_detections
        self.evaluate_loss = False
        self.check_inputs = bool(check_inputs)
        self.box_coder = BoxCoder()
        self.hyperparameters: dict[str, Any] = {
            "classes": self.classes, "resnet": int(resnet), "features": dict(self.features),
            "anchors": anchor_params, "fpn_levels": list(levels), "pretrained": bool(pretrained),
            "head_convs": head_convs, "group_norm": group_norm,
            "assignation_thresholds": dict(self.assignation_thresholds),
            "allow_low_quality_matches": allow_low_quality_matches, "box_loss": box_loss,
            "focal_alpha": focal_alpha, "focal_gamma": focal_gamma, "classification_loss": classification_loss,
            "efl_scale": efl_scale, "prior": prior,
            "score_threshold": score_threshold, "nms_threshold": nms_threshold,
            "topk_candidates": topk_candidates, "max_detections": max_detections, "class_names": names}

        self.fpn = _build_backbone(backbone, resnet, levels, self.features["pyramid"], pretrained)
        self._backbone_given = backbone is not None  # the default ResNetFPN is not recorded in checkpoints
        self.anchors = Anchors(anchor_params["sizes"], anchor_params["scales"], anchor_params["ratios"],
                               [2 ** level for level in levels])
        num_anchors = self.anchors.num_anchors
        self.regression = Regression(self.features["pyramid"], num_anchors, self.features["regression"],
                                     convs=head_convs, group_norm=group_norm)
        if classification_head is None:
            head = SigmoidClassification(self.features["pyramid"], num_anchors, self.features["classification"],
                                         self.classes, prior=prior, convs=head_convs, group_norm=group_norm)
        elif callable(classification_head) and not isinstance(classification_head, nn.Module):
            head = classification_head(
                self.features["pyramid"], num_anchors, self.features["classification"], self.classes,
                convs=head_convs, group_norm=group_norm, assignation_thresholds=self.assignation_thresholds,
                allow_low_quality_matches=allow_low_quality_matches)
        else:
            head = classification_head
        if not isinstance(head, ClassificationHead):
            raise TypeError("the classification head must be a dlde.model.heads.ClassificationHead (or a function "
                            f"building one), got {type(head).__name__}")
        self.classification = head
        # Per-class gradient statistics of the equalized focal loss; None keeps the focal loss's state keys.
        self.equalized_focal = (EqualizedFocal(self.classes, gamma=focal_gamma, scale=efl_scale)
                                if classification_loss == "efl" else None)
        if device is not None:
            self.to(device)

    # ----------------------------------------------------------------------------------- forward
    def check_images(self, images: Tensor) -> Tensor:
        """Validate a batch ``(B, 3, H, W)`` and return it in the dtype of the weights (a float64
        batch is cast; AMP's autocast still applies inside).

        Raises:
            ValueError: not a 4-d float tensor with 3 channels, or too small for a normalization
                layer (a batch of one image whose coarsest map is 1x1).
            FloatingPointError: NaN, infinite or absurd values (``|x| > MAX_ABS_PIXEL``), unless
                ``check_inputs`` is False.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalized), got {images.dtype}")
        if images.shape[-1] < 1 or images.shape[-2] < 1:
            raise ValueError(f"images must have a positive height and width, got {tuple(images.shape)}")
        if self.check_inputs:
            check_image_values(images)
        if images.shape[0] == 1:
            self._check_norm_sizes(images.shape[-2], images.shape[-1])
        parameter = next(self.parameters(), None)
        if parameter is not None and images.dtype != parameter.dtype:
            images = images.to(parameter.dtype)
        return images

    def _check_norm_sizes(self, height: int, width: int) -> None:
        """:func:`dlde.model.inputs.check_norm_sizes` for one image, with this model's norms."""
        batchnorms = [m for m in self.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm))]
        training = any(m.training for m in batchnorms)
        group_channels = [m.num_channels // m.num_groups for m in self.modules() if isinstance(m, nn.GroupNorm)]
        batchnorm_stride = getattr(self.fpn, "batchnorm_stride", 2 ** max(self.fpn_levels))
        check_norm_sizes(1, height, width, batchnorm_stride=batchnorm_stride if training else None,
                         groupnorm=(min(group_channels), 2 ** max(self.fpn_levels)) if group_channels else None)

    def forward(self, images: Tensor, annotations: Tensor | None = None):
        """See the class docstring. An empty batch ``(0, 3, H, W)`` gives ``[]`` in eval mode and a
        clear error in training."""
        images = self.check_images(images)
        if images.shape[0] == 0:
            if self.training or self.evaluate_loss:
                raise ValueError("an empty batch (0 images) cannot be trained on or scored for a loss")
            return []
        if annotations is not None:
            annotations = check_annotations(annotations, self.classes, images.shape[0]).to(images.device)
            annotations = drop_degenerate_boxes(annotations, images.shape[-2:])
        if self.training and self.tracked_means is not None and annotations is None:
            raise ValueError(f"the {self.classification.name!r} head needs the annotations in training mode "
                             "to track the class means")
        with buffers_kept_only_on_success(self, enabled=self.training and self.check_inputs):
            return self._forward(images, annotations)

    def _forward(self, images: Tensor, annotations: Tensor | None):
        feature_maps = self.fpn(images)
        anchors = self.anchors(images)
        assignment = None
        if annotations is not None and self.training:
            assignment = self.assign(anchors, annotations)  # once per step: tracking and the loss share it
        classifications = self.classification(feature_maps, assignment=assignment)
        return self._finish(images, feature_maps, anchors, classifications, assignment)

    def assign(self, anchors: Tensor, annotations: Tensor) -> Assignment:
        """Match ``anchors (B, A, 4)`` (or ``(A, 4)``) to ``annotations (B, M, 5)`` with this model's thresholds."""
        if anchors.dim() == 3:
            anchors = anchors[0]
        with torch.no_grad():
            return assign_batch(anchors, annotations.to(anchors.device), self.assignation_thresholds,
                                allow_low_quality_matches=self.allow_low_quality_matches)

    def _finish(self, images: Tensor, feature_maps: list[Tensor], anchors: Tensor, classifications: Tensor,
                assignment: Assignment | None = None):
        regressions = self.regression(feature_maps).float()
        if regressions.shape[1] != anchors.shape[1]:
            raise RuntimeError(f"heads produced {regressions.shape[1]} anchors but the generator made "
                               f"{anchors.shape[1]}: feature-map sizes do not match the strides")
        if self.training:
            # Every regression depends on the backbone, where the BatchNorm statistics live. The
            # (B, A, C) scores are not scanned (at 1,203 classes that pass alone costs ~2 % of a
            # step): non-finite embeddings are refused by the tracked means, anything else shows
            # in the loss, which a trainer refuses (dlde.model.modes.snapshot_buffers restores).
            if self.check_inputs and not all_finite(regressions):
                raise FloatingPointError(
                    "the forward produced non-finite box regressions from finite inputs (non-finite weights, "
                    "or an overflow in reduced precision); the BatchNorm statistics and tracked means were "
                    "restored to their values before this batch")
            return TrainingOutput(anchors, regressions, classifications, assignment)
        if self.evaluate_loss:
            return anchors.detach(), regressions.detach(), classifications.detach()
        return self.postprocess(images, anchors, regressions, classifications)

    def loss(self, anchors: Tensor, regressions: Tensor | None, classifications: Tensor, annotations: Tensor, *,
             assignment: Assignment | None = None, positives_reducer=None) -> dict[str, Tensor]:
        """Focal and box losses of a training-mode output (see :func:`dlde.model.losses.detection_loss`).

        Pass ``assignment=output.assignment`` of the forward's :class:`TrainingOutput` to reuse
        its anchor matching (the trainer does); without it the anchors are matched here, without
        the degenerate boxes the forward drops (the image size is that of the forward that made
        ``anchors``). With ``classification_loss='efl'`` the backward of the classification loss
        adds the step's per-class gradient magnitudes to ``model.equalized_focal``. Without
        ``regressions`` (None): the classification loss alone.
        """
        return detection_loss(anchors, regressions, classifications, annotations, assignment=assignment,
                              positives_reducer=positives_reducer, image_size=self.anchors.image_size(anchors),
                              thresholds=self.assignation_thresholds, box_coder=self.box_coder,
                              alpha=self.focal_alpha, gamma=self.focal_gamma, box_loss=self.box_loss,
                              allow_low_quality_matches=self.allow_low_quality_matches,
                              equalized=self.equalized_focal)

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def postprocess(self, images: Tensor, anchors: Tensor, regressions: Tensor,
                    classifications: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Decode, threshold, keep the top-k per level, class-aware NMS and cap per image.

        Returns one ``(boxes (N, 4), classifications (N, C))`` per image, sorted by score.
        """
        batch, _, height, width = images.shape
        scores, labels = classifications.max(dim=2)  # (B, A)
        candidates = []
        start = 0
        for count in self.anchors.level_counts(height, width):  # few levels: a short loop
            k = min(self.topk_candidates, count)
            candidates.append(scores[:, start:start + count].topk(k, dim=1).indices + start)
            start += count
        index = torch.cat(candidates, dim=1)  # (B, K)
        top_scores = scores.gather(1, index)
        keep = top_scores > self.score_threshold  # (B, K)
        image_index = torch.arange(batch, device=images.device)[:, None].expand_as(index)[keep]
        anchor_index = index[keep]
        boxes = self.box_coder.decode(anchors[image_index, anchor_index], regressions[image_index, anchor_index])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        kept_scores = top_scores[keep]
        kept_labels = labels[image_index, anchor_index]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        selected = nonempty.nonzero().squeeze(1)
        groups = image_index[selected] * self.classes + kept_labels[selected]
        selected = selected[batched_nms(boxes[selected], kept_scores[selected], groups, self.nms_threshold)]
        # `selected` is sorted by score; a stable sort by image keeps that order inside each image.
        selected = selected[torch.sort(image_index[selected], stable=True).indices]
        per_image = torch.bincount(image_index[selected], minlength=batch)
        first = torch.cumsum(per_image, 0) - per_image
        rank = torch.arange(selected.numel(), device=images.device) - first[image_index[selected]]
        selected = selected[rank < self.max_detections]
        counts = torch.bincount(image_index[selected], minlength=batch).tolist()
        probabilities = classifications[image_index[selected], anchor_index[selected]]
        return list(zip(boxes[selected].split(counts), probabilities.split(counts)))

    @torch.no_grad()
    def predict(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Eval-mode detections as torchvision-style dicts ``{'boxes', 'scores', 'labels'}`` per image."""
        with evaluating(self):
            outputs = self(images)
        results = []
        for boxes, probabilities in outputs:
            if len(boxes):
                scores, labels = probabilities.max(dim=1)
            else:
                scores, labels = boxes.new_zeros(0), boxes.new_zeros(0, dtype=torch.long)
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results

    # ------------------------------------------------------------------- the embedding space
    @property
    def tracked_means(self) -> TrackedMeans | None:
        """The head's tracked class means (what a trainer updates, reduces and records), or None."""
        return self.classification.tracked_means

    def class_directions(self) -> Tensor | None:
        """``(C, d)`` unit class directions of heads with an embedding space (means or prototypes)."""
        return self.classification.class_directions()

    def embeddings(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(anchors (B, A, 4), unit embeddings (B, A, d))`` without tracking, for analysis."""
        images = self.check_images(images)
        with torch.no_grad():
            return self.anchors(images), self.classification.embed(self.fpn(images))

    @property
    def class_names(self) -> list[str]:
        """One name per class (label order); saved in checkpoints."""
        return list(self.hyperparameters["class_names"])

    # ---------------------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write ``{'model': state_dict, 'hyperparameters': {'model': {...}}, **extra}`` atomically.

        ``extra`` must hold plain data (tensors, numbers, strings, lists, dicts) so the file loads
        with ``torch.load(..., weights_only=True)``; anything else is refused before writing
        (:func:`dlde.model.checkpoints.check_plain_data`), as are non-finite weights.
        """
        state = self.state_dict()
        check_finite_state(state, f"model to be saved to {path}")
        checkpoint = {"model": state, "hyperparameters": {"model": self.constructor_arguments()}}
        checkpoint.update(extra)
        return atomic_save(checkpoint, path)

    def constructor_arguments(self) -> dict[str, Any]:
        """Every constructor argument as plain Python values (``device`` is chosen at load time),
        with the head as ``{"name", "options"}``, and a backbone passed as ``backbone=`` the same way
        (``name`` None when it has none; the default backbone adds nothing)."""
        arguments = {**self.hyperparameters, "device": None,
                     "head": {"name": self.classification.name, "options": self.classification.options()}}
        if self._backbone_given:
            options = self.fpn.options() if hasattr(self.fpn, "options") else {}
            arguments["backbone"] = {"name": getattr(self.fpn, "name", None), "options": dict(options)}
        return arguments

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, Any],
                        device: str | torch.device | None = None):
        """Rebuild a model saved with :meth:`save` (a path or the loaded dict; older layouts too,
        see :func:`dlde.model.checkpoints.read_model_record`).

        Every hyperparameter and the full state (weights, class means) is restored. The backbone
        weights come from the checkpoint, so no pretrained cache is needed; a backbone other than
        the default is rebuilt by its registered name (:data:`dlde.model.registry.BACKBONES`).
        ``device`` defaults to the CPU. Called on a subclass that builds one head (``head_name``),
        the checkpoint must hold that head.
        """
        record = read_model_record(checkpoint)
        params = dict(record.params)
        pretrained = params.pop("pretrained", False)
        params["backbone"] = _saved_backbone(params.pop("backbone", None), record.source)
        head_name = cls.__dict__.get("head_name")
        if head_name is not None and record.head != head_name:
            raise ValueError(f"{record.source} holds a {record.head!r} model, not a {cls.__name__}; load it with "
                             "dlde.RetinaNet.from_checkpoint or dlde.model.builders.load_detector")
        if head_name is not None:
            model = cls(**params, **record.head_options, pretrained=False)
        else:
            model = cls(**params, pretrained=False, classification_head=head_factory(record.head,
                                                                                      **record.head_options))
        model.hyperparameters["pretrained"] = pretrained
        mismatch = state_mismatch(model.state_dict(), record.state)
        if mismatch is not None:
            raise ValueError(f"{record.source}: the weights do not fit the saved hyperparameters: {mismatch}")
        model.load_state_dict(record.state)
        return model.to(device) if device is not None else model
