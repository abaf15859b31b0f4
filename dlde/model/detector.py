"""One-stage detectors: the sigmoid RetinaNet baseline and DLDENet with tracked means.

Both share the backbone, pyramid, anchors, box regression, losses and post-processing; they
differ only in the classification head returned by :meth:`RetinaNet.get_classification_module`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import DEFAULT_RATIOS, DEFAULT_SCALES, DEFAULT_SIZES, Anchors, Assignment, assign_batch, check_thresholds
from .backbone import SUPPORTED_LEVELS, ResNetFPN, check_levels
from .boxes import BoxCoder
from .checkpoints import atomic_save, check_finite_state, load_checkpoint
from .directional import DirectionalClassification
from .heads import ClassificationHead, Regression, SigmoidClassification
from .losses import check_annotations, detection_loss
from .modes import evaluating

DEFAULT_FEATURES = {"pyramid": 256, "regression": 256, "classification": 256}


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


class TrainingOutput(tuple):
    """``(anchors (B, A, 4), regressions (B, A, 4), classifications (B, A, C))`` of a training-mode
    forward; unpacks like the plain tuple of the original, and carries the batch's
    :class:`dlde.Assignment` (``.assignment``) so the loss reuses it instead of matching again."""

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
        resnet: ResNet depth of the backbone (18, 34, 50, 101, 152).
        features: channels ``{'pyramid', 'regression', 'classification'}`` (default 256 each).
        anchors: ``{'sizes', 'scales', 'ratios'}``; sizes per chosen level or for all of 3-7.
        fpn_levels: pyramid levels to use, any subset of 3-7 (default all).
        pretrained: ImageNet backbone weights from the local torch cache (never downloaded).
        device: where to put the model (default: stay on the CPU).
        head_convs: hidden convolutions of each head tower.
        group_norm: GroupNorm in the head towers.
        assignation_thresholds: ``{'object': 0.5, 'background': 0.4}`` IoU thresholds.
        allow_low_quality_matches: each annotation's best anchor is a positive too.
        box_loss: ``'smooth_l1'``, ``'l1'`` or ``'giou'``.
        focal_alpha, focal_gamma: focal-loss parameters.
        prior: initial class probability of the sigmoid head.
        score_threshold, nms_threshold, topk_candidates, max_detections: post-processing.
        class_names: one name per class (default ``"0"``, ``"1"``, ...); kept in checkpoints.
        classification_head: the classification head: None (the sigmoid head, or what
            :meth:`get_classification_module` of a subclass returns), a model name with its
            options ``("dlde", {"embedding_size": 64})`` (see :data:`dlde.model.registry.HEADS`), or a
            :class:`dlde.model.heads.ClassificationHead` built for these features.

    Input: ``images (B, 3, H, W)`` normalized floats, ``annotations (B, M, 5)`` as x1, y1, x2, y2
    in pixels and label, padded with label -1 rows.

    ``forward(images, annotations=None)`` returns, in training mode (or in eval mode with
    ``evaluate_loss = True``, detached) ``(anchors (B, A, 4), regressions (B, A, 4),
    classifications (B, A, C))``; in eval mode a list with one ``(boxes (N, 4), classifications
    (N, C))`` per image: boxes x1, y1, x2, y2 in input pixels clipped to the image, each with the
    class probabilities of its anchor (label = argmax, score = max). Pass the training output to
    :meth:`loss`.
    """

    #: The head name this class builds (``from_checkpoint`` of a subclass checks it).
    head_name = "retinanet"

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 pretrained: bool = True, device: str | torch.device | None = None, *,
                 head_convs: int = 4, group_norm: bool = False,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 allow_low_quality_matches: bool = True, box_loss: str = "smooth_l1",
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 prior: float = SigmoidClassification.Options.prior,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, topk_candidates: int = 1000,
                 max_detections: int = 300, class_names: Sequence[str] | None = None,
                 classification_head: ClassificationHead | tuple[str, Mapping[str, Any]] | None = None):
        super().__init__()
        if int(classes) < 1:
            raise ValueError(f"classes must be a positive integer, got {classes}")
        names = [str(c) for c in range(int(classes))] if class_names is None else [str(n) for n in class_names]
        if len(names) != int(classes):
            raise ValueError(f"class_names has {len(names)} names for {classes} classes")
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
        self.box_coder = BoxCoder()
        self.hyperparameters: dict[str, Any] = {
            "classes": self.classes, "resnet": int(resnet), "features": dict(self.features),
            "anchors": anchor_params, "fpn_levels": list(levels), "pretrained": bool(pretrained),
            "head_convs": head_convs, "group_norm": group_norm,
            "assignation_thresholds": dict(self.assignation_thresholds),
            "allow_low_quality_matches": allow_low_quality_matches, "box_loss": box_loss,
            "focal_alpha": focal_alpha, "focal_gamma": focal_gamma, "prior": prior,
            "score_threshold": score_threshold, "nms_threshold": nms_threshold,
            "topk_candidates": topk_candidates, "max_detections": max_detections, "class_names": names}

        self.fpn = ResNetFPN(resnet, levels, self.features["pyramid"], pretrained=pretrained)
        self.anchors = Anchors(anchor_params["sizes"], anchor_params["scales"], anchor_params["ratios"],
                               [2 ** level for level in levels])
        num_anchors = self.anchors.num_anchors
        self.regression = Regression(self.features["pyramid"], num_anchors, self.features["regression"],
                                     convs=head_convs, group_norm=group_norm)
        if classification_head is None:
            head = self.get_classification_module(self.features["pyramid"], self.classes, num_anchors,
                                                  self.features["classification"])
        elif isinstance(classification_head, ClassificationHead):
            head = classification_head
        else:
            from .registry import head_class

            name, options = classification_head
            head = head_class(name).build(
                self.features["pyramid"], num_anchors, self.features["classification"], self.classes,
                convs=head_convs, group_norm=group_norm, assignation_thresholds=self.assignation_thresholds,
                allow_low_quality_matches=allow_low_quality_matches, **options)
        if not isinstance(head, ClassificationHead):
            raise TypeError("the classification head must be a dlde.model.heads.ClassificationHead, "
                            f"got {type(head).__name__}")
        self.classification = head
        if device is not None:
            self.to(device)

    def get_classification_module(self, in_channels: int, classes: int, anchors: int, features: int) -> nn.Module:
        """The classification head; subclasses return their own."""
        return SigmoidClassification(in_channels, anchors, features, classes, prior=self.prior,
                                     convs=self.head_convs, group_norm=self.group_norm)

    # ----------------------------------------------------------------------------------- forward
    def _check_images(self, images: Tensor) -> Tensor:
        """Validate a batch ``(B, 3, H, W)`` and return it in the dtype of the weights (a float64
        batch is cast; AMP's autocast still applies inside)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalized), got {images.dtype}")
        if images.shape[-1] < 1 or images.shape[-2] < 1:
            raise ValueError(f"images must have a positive height and width, got {tuple(images.shape)}")
        parameter = next(self.parameters(), None)
        if parameter is not None and images.dtype != parameter.dtype:
            images = images.to(parameter.dtype)
        return images

    def forward(self, images: Tensor, annotations: Tensor | None = None, initializing: bool = False):
        """See the class docstring. ``initializing=True`` only tracks the batch (heads with tracked
        means; no gradient) and returns None. An empty batch ``(0, 3, H, W)`` gives ``[]`` in eval
        mode and a clear error in training."""
        images = self._check_images(images)
        if images.shape[0] == 0:
            if self.training or self.evaluate_loss or initializing:
                raise ValueError("an empty batch (0 images) cannot be trained on, tracked or scored for a loss")
            return []
        assignment = None
        if annotations is not None:
            annotations = check_annotations(annotations, self.classes, images.shape[0]).to(images.device)
        if initializing:
            if not self.classification.has_tracked_means:
                raise TypeError(f"initializing=True tracks class means; the {self.classification.name!r} head has none")
            if annotations is None:
                raise ValueError("initializing=True tracks the means and needs the annotations")
            with torch.no_grad():
                embeddings = self.classification.embed(self.fpn(images))
                self.classification.track(embeddings, self.assign(self.anchors(images), annotations))
            return None
        one_by_one = math.ceil(images.shape[-2] / 32) * math.ceil(images.shape[-1] / 32) == 1  # stride-32 map
        if self.training and images.shape[0] == 1 and one_by_one:
            raise ValueError(f"a batch of one {images.shape[-2]}x{images.shape[-1]} image is too small to train: the "
                             "backbone's BatchNorm sees a 1x1 map at stride 32; use images larger than 32 px or "
                             "batches of two or more")
        if self.training and self.classification.has_tracked_means and annotations is None:
            raise ValueError(f"the {self.classification.name!r} head needs the annotations in training mode "
                             "to track the class means")
        feature_maps = self.fpn(images)
        anchors = self.anchors(images)
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
            return TrainingOutput(anchors, regressions, classifications, assignment)
        if self.evaluate_loss:
            return anchors.detach(), regressions.detach(), classifications.detach()
        return self.postprocess(images, anchors, regressions, classifications)

    def loss(self, anchors: Tensor, regressions: Tensor, classifications: Tensor, annotations: Tensor, *,
             assignment: Assignment | None = None, positives_reducer=None) -> dict[str, Tensor]:
        """Focal and box losses of a training-mode output (see :func:`dlde.model.losses.detection_loss`).

        Pass ``assignment=output.assignment`` of the forward's :class:`TrainingOutput` to reuse
        its anchor matching (the trainer does); without it the anchors are matched here.
        """
        return detection_loss(anchors, regressions, classifications, annotations, assignment=assignment,
                              positives_reducer=positives_reducer,
                              thresholds=self.assignation_thresholds, box_coder=self.box_coder,
                              alpha=self.focal_alpha, gamma=self.focal_gamma, box_loss=self.box_loss,
                              allow_low_quality_matches=self.allow_low_quality_matches)

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

    # ------------------------------------------------------------------------ head protocol
    @property
    def has_tracked_means(self) -> bool:
        """Whether the classification head keeps tracked class means."""
        return self.classification.has_tracked_means

    def update_means(self) -> None:
        """Apply accumulated mean updates (``'manual'`` means); a no-op for other heads."""
        self.classification.update_means()

    def reset_statistics(self) -> None:
        """Clear the head's per-epoch statistics (κ̂ of the tracked embeddings)."""
        self.classification.reset_statistics()

    def means_snapshot(self) -> tuple[Tensor, Tensor] | None:
        """``(means (C, d), κ̂ (C,))`` on the CPU for heads with tracked means, else None."""
        return self.classification.means_snapshot()

    def class_directions(self) -> Tensor | None:
        """``(C, d)`` unit class directions of heads with an embedding space (means or prototypes)."""
        return self.classification.class_directions()

    def embeddings(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(anchors (B, A, 4), unit embeddings (B, A, d))`` without tracking, for analysis."""
        images = self._check_images(images)
        with torch.no_grad():
            return self.anchors(images), self.classification.embed(self.fpn(images))

    # ----------------------------------------------------------------- new classes (few-shot)
    @property
    def class_names(self) -> list[str]:
        """One name per class (label order); saved in checkpoints."""
        return list(self.hyperparameters["class_names"])

    def add_classes(self, k: int, names: Sequence[str] | None = None) -> list[int]:
        """Grow the classifier by ``k`` classes (labels ``C .. C + k - 1``) without touching any
        existing parameter or class mean (the head's ``grow``: see
        :meth:`dlde.DirectionalClassification.grow`, :meth:`dlde.SigmoidClassification.grow`,
        :meth:`dlde.CosinePrototypeClassification.grow` for how new classes start).

        Updates ``classes``, ``class_names`` and the saved hyperparameters, so :meth:`save` and
        :meth:`from_checkpoint` round-trip. Parameters of the head may be replaced: build the
        optimizer after this call.

        Args:
            k: number of classes to add (>= 1).
            names: their names (default: their labels as strings).

        Returns:
            The new labels.
        """
        from .heads import _check_growth

        k = _check_growth(k)
        new = list(range(self.classes, self.classes + k))
        names = [str(label) for label in new] if names is None else [str(n) for n in names]
        if len(names) != k:
            raise ValueError(f"add_classes({k}) got {len(names)} names")
        clash = sorted(set(names) & set(self.class_names))
        if clash:
            raise ValueError(f"add_classes: class names {clash} already exist")
        self.classification.grow(k)
        self.classes += k
        self.hyperparameters["classes"] = self.classes
        self.hyperparameters["class_names"] = self.class_names + names
        return new

    def label_of(self, label: int | str) -> int:
        """A class given by label or by name, as its label."""
        if isinstance(label, str):
            if label not in self.class_names:
                raise ValueError(f"no class named {label!r}; classes: {self.class_names}")
            return self.class_names.index(label)
        if isinstance(label, bool) or int(label) != label or not 0 <= int(label) < self.classes:
            raise ValueError(f"label {label!r} is not a class of this model (0..{self.classes - 1})")
        return int(label)

    @torch.no_grad()
    def matched_embeddings(self, images: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """Unit embeddings ``(N, d)`` of the anchors matched to ``boxes``, as they would be tracked.

        Anchors are matched with this model's assignment (:meth:`assign`: its IoU thresholds and
        low-quality matches), the boxes of one image competing for anchors as in training. The
        images are embedded in eval mode (the previous mode is restored).

        Args:
            images: ``(B, 3, H, W)`` network input.
            boxes: B tensors ``(N_i, 4)`` as x1, y1, x2, y2 in network-input pixels.
        """
        if len(boxes) != len(images):
            raise ValueError(f"got {len(boxes)} box tensors for {len(images)} images")
        boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        most = max([len(b) for b in boxes] + [1])
        annotations = torch.full((len(images), most, 5), -1.0)  # (B, M, 5), label 0 marks a box
        for i, b in enumerate(boxes):  # loop over images
            annotations[i, :len(b), :4] = b
            annotations[i, :len(b), 4] = 0.0
        with evaluating(self):  # BatchNorm uses (and keeps) its running statistics
            anchors, embeddings = self.embeddings(images)  # (B, A, 4), (B, A, d)
        assignment = self.assign(anchors, annotations.to(anchors.device))
        return embeddings[assignment.objects_mask]  # (N, d)

    @torch.no_grad()
    def imprint(self, label: int | str, images: Tensor, boxes: Sequence[Tensor]) -> int:
        """Set class ``label`` from boxes of it, with no gradient step (weight imprinting).

        The class's mean (DLDENet) or prototype (learned prototypes) becomes the normalized sum
        of the embeddings of the anchors matched to the boxes (:meth:`matched_embeddings`), the
        way a tracked mean is formed; its ``w``/``b`` follow the head's rule (the mean over the
        other classes). The sigmoid head has no embedding space and raises NotImplementedError.
        The images are embedded in eval mode, so BatchNorm statistics do not move: nothing else changes.

        Args:
            label: the class (label or name), e.g. one made by :meth:`add_classes`.
            images: ``(B, 3, H, W)`` network input.
            boxes: B tensors ``(N_i, 4)`` of objects of this class, x1, y1, x2, y2 in
                network-input pixels (empty for images without one).

        Returns:
            The number of anchors the class was imprinted from.
        """
        label = self.label_of(label)
        if type(self.classification).imprint is ClassificationHead.imprint:
            self.classification.imprint(label, None)  # raises the head's own error
        embeddings = self.matched_embeddings(images, boxes)
        if len(embeddings) == 0:
            raise ValueError(f"imprint: no anchor matches the boxes given for class {label}")
        self.classification.imprint(label, embeddings)
        return len(embeddings)

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The classifier layer's parameters (what TFA-style few-shot fine-tuning trains)."""
        return self.classification.classifier_parameters()

    # ---------------------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write ``{'model': state_dict, 'hyperparameters': {'model': {...}}, **extra}`` atomically.

        ``extra`` must hold plain data (tensors, numbers, strings, lists, dicts) so the file loads
        with ``torch.load(..., weights_only=True)``.
        """
        state = self.state_dict()
        check_finite_state(state, f"model to be saved to {path}")
        checkpoint = {"model": state, "hyperparameters": {"model": self.constructor_arguments()}}
        checkpoint.update(extra)
        return atomic_save(checkpoint, path)

    def constructor_arguments(self) -> dict[str, Any]:
        """Every constructor argument as plain Python values (``device`` is chosen at load time),
        with the head as ``{"name", "options"}``."""
        return {**self.hyperparameters, "device": None,
                "head": {"name": self.classification.name, "options": self.classification.options()}}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, Any],
                        device: str | torch.device | None = None):
        """Rebuild a model saved with :meth:`save` (a path or the loaded dict).

        Every hyperparameter and the full state (weights, class means) is restored. The backbone
        weights come from the checkpoint, so no pretrained cache is needed. ``device`` defaults
        to the CPU.
        """
        source = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
        if not isinstance(checkpoint, Mapping):
            checkpoint = load_checkpoint(checkpoint)
        try:
            params = dict(checkpoint["hyperparameters"]["model"])
            state = checkpoint["model"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: not a dlde checkpoint: expected keys 'model' and "
                             "'hyperparameters' -> 'model'") from error
        check_finite_state(state, source)
        params.pop("device", None)
        pretrained = params.pop("pretrained", False)
        name, options = _head_of(params)
        if cls is not RetinaNet and name != cls.head_name:
            raise ValueError(f"{source} holds a {name!r} model, not a {cls.__name__}; load it with "
                             "dlde.RetinaNet.from_checkpoint or dlde.model.registry.load_detector")
        if cls is RetinaNet:
            model = RetinaNet(**params, pretrained=False, classification_head=(name, options))
        else:
            model = cls(**params, **options, pretrained=False)
        model.hyperparameters["pretrained"] = pretrained
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{source}: the weights do not fit the saved hyperparameters: "
                             f"{str(error).splitlines()[0]}") from None
        return model.to(device) if device is not None else model


#: Head options stored flat in checkpoints written before heads were injectable.
_LEGACY_DLDE_KEYS = ("embedding_size", "means_update", "means_lr", "means_init")


def _head_of(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Pop the head ``(name, options)`` out of saved constructor arguments (old layouts too)."""
    head = params.pop("head", None)
    if head is not None:
        return head["name"], dict(head["options"])
    if "embedding_size" in params:  # an old DLDENet checkpoint
        return "dlde", {key: params.pop(key) for key in _LEGACY_DLDE_KEYS if key in params}
    return "retinanet", {}


class DLDENetWithTrackedMeans(RetinaNet):
    """Deep Local Directional Embeddings Net: RetinaNet whose classifier is
    :class:`dlde.DirectionalClassification` (cosine to tracked class means).

    The seed's entry point, with its positional arguments. Equivalent to
    ``RetinaNet(classes, ..., classification_head=("dlde", {...}))``.

    Args:
        classes, resnet, features, anchors, fpn_levels, pretrained, device: as :class:`RetinaNet`.
        embedding_size: dimension of the per-anchor unit embeddings.
        assignation_thresholds: IoU thresholds for the loss and for picking tracked anchors.
        means_update: ``'batch'`` (one update per training batch) or ``'manual'`` (accumulate,
            then call :meth:`update_means`, e.g. once per epoch).
        means_lr: step of the ``'batch'`` update (``model.means_lr = x`` changes it).
        means_init: starting class means: ``'orthogonal'``, ``'random'`` or ``'zeros'`` (the original).
        init_weight, init_bias: initial ``w`` and ``b`` of :meth:`DirectionalClassification.classify`.
        **kwargs: the keyword-only options of :class:`RetinaNet`.

    Defaults differ from the original's (512, lr 0.1, 'zeros'): see
    :class:`dlde.DirectionalClassification.Options`.

    ``forward(images, annotations=None, initializing=False)``: as :class:`RetinaNet`; training
    needs ``annotations`` (the means are tracked after the batch is scored), and
    ``initializing=True`` only tracks the batch (train or eval mode, no gradients) and returns None.
    """

    head_name = "dlde"
    _Options = DirectionalClassification.Options

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 embedding_size: int = _Options.embedding_size,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 means_update: str = _Options.means_update, means_lr: float = _Options.means_lr,
                 pretrained: bool = True, device: str | torch.device | None = None, *,
                 means_init: str = _Options.means_init, init_weight: float = _Options.init_weight,
                 init_bias: float = _Options.init_bias, **kwargs: Any):
        if int(embedding_size) < 2:
            raise ValueError(f"embedding_size must be at least 2, got {embedding_size}")
        kwargs.pop("classification_head", None)
        options = {"embedding_size": int(embedding_size), "means_update": means_update,
                   "means_lr": float(means_lr), "means_init": means_init, "init_weight": init_weight,
                   "init_bias": init_bias}
        super().__init__(classes, resnet, features, anchors, fpn_levels, pretrained, device,
                         assignation_thresholds=assignation_thresholds, classification_head=("dlde", options),
                         **kwargs)

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
