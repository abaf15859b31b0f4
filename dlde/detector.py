"""One-stage detectors: the sigmoid RetinaNet baseline and DLDENet with tracked means.

Both share the backbone, pyramid, anchors, box regression, losses and post-processing; they
differ only in the classification head returned by :meth:`RetinaNet.get_classification_module`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .anchors import DEFAULT_RATIOS, DEFAULT_SCALES, DEFAULT_SIZES, Anchors, check_thresholds
from .backbone import SUPPORTED_LEVELS, ResNetFPN, check_levels
from .boxes import BoxCoder
from .directional import DirectionalClassification
from .heads import Regression, SigmoidClassification
from .losses import check_annotations, detection_loss

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

    Input: ``images (B, 3, H, W)`` normalized floats, ``annotations (B, M, 5)`` as x1, y1, x2, y2
    in pixels and label, padded with label -1 rows.

    ``forward(images, annotations=None)`` returns, in training mode (or in eval mode with
    ``evaluate_loss = True``, detached) ``(anchors (B, A, 4), regressions (B, A, 4),
    classifications (B, A, C))``; in eval mode a list with one ``(boxes (N, 4), classifications
    (N, C))`` per image: boxes x1, y1, x2, y2 in input pixels clipped to the image, each with the
    class probabilities of its anchor (label = argmax, score = max). Pass the training output to
    :meth:`loss`.
    """

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 pretrained: bool = True, device: str | torch.device | None = None, *,
                 head_convs: int = 4, group_norm: bool = False,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 allow_low_quality_matches: bool = True, box_loss: str = "smooth_l1",
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, prior: float = 0.01,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, topk_candidates: int = 1000,
                 max_detections: int = 300):
        super().__init__()
        if int(classes) < 1:
            raise ValueError(f"classes must be a positive integer, got {classes}")
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
            "topk_candidates": topk_candidates, "max_detections": max_detections}

        self.fpn = ResNetFPN(resnet, levels, self.features["pyramid"], pretrained=pretrained)
        self.anchors = Anchors(anchor_params["sizes"], anchor_params["scales"], anchor_params["ratios"],
                               [2 ** level for level in levels])
        num_anchors = self.anchors.num_anchors
        self.regression = Regression(self.features["pyramid"], num_anchors, self.features["regression"],
                                     convs=head_convs, group_norm=group_norm)
        self.classification = self.get_classification_module(self.features["pyramid"], self.classes, num_anchors,
                                                             self.features["classification"])
        if device is not None:
            self.to(device)

    def get_classification_module(self, in_channels: int, classes: int, anchors: int, features: int) -> nn.Module:
        """The classification head; subclasses return their own."""
        return SigmoidClassification(in_channels, anchors, features, classes, prior=self.prior,
                                     convs=self.head_convs, group_norm=self.group_norm)

    # ----------------------------------------------------------------------------------- forward
    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalized), got {images.dtype}")

    def forward(self, images: Tensor, annotations: Tensor | None = None):
        self._check_images(images)
        feature_maps = self.fpn(images)
        anchors = self.anchors(images)
        classifications = self.classification(feature_maps, anchors, annotations)
        return self._finish(images, feature_maps, anchors, classifications)

    def _finish(self, images: Tensor, feature_maps: list[Tensor], anchors: Tensor, classifications: Tensor):
        regressions = self.regression(feature_maps).float()
        if regressions.shape[1] != anchors.shape[1]:
            raise RuntimeError(f"heads produced {regressions.shape[1]} anchors but the generator made "
                               f"{anchors.shape[1]}: feature-map sizes do not match the strides")
        if self.training:
            return anchors, regressions, classifications
        if self.evaluate_loss:
            return anchors.detach(), regressions.detach(), classifications.detach()
        return self.postprocess(images, anchors, regressions, classifications)

    def loss(self, anchors: Tensor, regressions: Tensor, classifications: Tensor,
             annotations: Tensor) -> dict[str, Tensor]:
        """Focal and box losses of a training-mode output (see :func:`dlde.losses.detection_loss`)."""
        return detection_loss(anchors, regressions, classifications, annotations,
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
        was_training, was_evaluate_loss = self.training, self.evaluate_loss
        self.eval()
        self.evaluate_loss = False
        try:
            outputs = self(images)
        finally:
            self.train(was_training)
            self.evaluate_loss = was_evaluate_loss
        results = []
        for boxes, probabilities in outputs:
            scores, labels = probabilities.max(dim=1) if len(boxes) else (boxes.new_zeros(0), boxes.new_zeros(0, dtype=torch.long))
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results

    # ---------------------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write ``{'model': state_dict, 'hyperparameters': {'model': {...}}, **extra}`` atomically.

        ``extra`` must hold plain data (tensors, numbers, strings, lists, dicts) so the file loads
        with ``torch.load(..., weights_only=True)``.
        """
        checkpoint = {"model": self.state_dict(), "hyperparameters": {"model": self.constructor_arguments()}}
        checkpoint.update(extra)
        return atomic_save(checkpoint, path)

    def constructor_arguments(self) -> dict[str, Any]:
        """Every constructor argument as plain Python values (``device`` is chosen at load time)."""
        return {**self.hyperparameters, "device": None}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | Mapping[str, Any],
                        device: str | torch.device | None = None):
        """Rebuild a model saved with :meth:`save` (a path or the loaded dict).

        Every hyperparameter and the full state (weights, class means) is restored. The backbone
        weights come from the checkpoint, so no pretrained cache is needed. ``device`` defaults
        to the CPU.
        """
        if not isinstance(checkpoint, Mapping):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        try:
            params = dict(checkpoint["hyperparameters"]["model"])
            state = checkpoint["model"]
        except (KeyError, TypeError) as error:
            raise ValueError("not a dlde checkpoint: expected keys 'model' and "
                             "'hyperparameters' -> 'model'") from error
        params.pop("device", None)
        pretrained = params.pop("pretrained", False)
        model = cls(**params, pretrained=False)
        model.hyperparameters["pretrained"] = pretrained
        model.load_state_dict(state)
        return model.to(device) if device is not None else model


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class DLDENetWithTrackedMeans(RetinaNet):
    """Deep Local Directional Embeddings Net: RetinaNet whose classifier is
    :class:`dlde.DirectionalClassification` (cosine to tracked class means).

    Args:
        classes, resnet, features, anchors, fpn_levels, pretrained, device: as :class:`RetinaNet`.
        embedding_size: dimension of the per-anchor unit embeddings.
        assignation_thresholds: IoU thresholds for the loss and for picking tracked anchors.
        means_update: ``'batch'`` (one update per training batch) or ``'manual'`` (accumulate,
            then call :meth:`update_means`, e.g. once per epoch).
        means_lr: step of the ``'batch'`` update.
        means_init: starting class means: ``'zeros'`` (the original), ``'orthogonal'`` or ``'random'``.
        **kwargs: the keyword-only options of :class:`RetinaNet`.

    ``forward(images, annotations=None, initializing=False)``: as :class:`RetinaNet`, except
    that training needs ``annotations`` (the means are tracked after the batch is scored), and
    ``initializing=True`` only tracks the batch (train or eval mode, no gradients) and returns None.
    """

    def __init__(self, classes: int, resnet: int = 18, features: Mapping[str, int] | None = None,
                 anchors: Mapping[str, Sequence[float]] | None = None, fpn_levels: Sequence[int] | None = None,
                 embedding_size: int = 512, assignation_thresholds: Mapping[str, float] | None = None,
                 means_update: str = "batch", means_lr: float = 0.1, pretrained: bool = True,
                 device: str | torch.device | None = None, *, means_init: str = "zeros", **kwargs: Any):
        if int(embedding_size) < 2:
            raise ValueError(f"embedding_size must be at least 2, got {embedding_size}")
        self.embedding_size = int(embedding_size)
        self.means_update = means_update
        self.means_lr = float(means_lr)
        self.means_init = means_init
        super().__init__(classes, resnet, features, anchors, fpn_levels, pretrained, device,
                         assignation_thresholds=assignation_thresholds, **kwargs)
        self.hyperparameters.update(embedding_size=self.embedding_size, means_update=means_update,
                                    means_lr=self.means_lr, means_init=means_init)

    def get_classification_module(self, in_channels: int, classes: int, anchors: int,
                                  features: int) -> DirectionalClassification:
        return DirectionalClassification(in_channels, self.embedding_size, anchors, features, classes,
                                         self.assignation_thresholds, self.means_update, self.means_lr,
                                         convs=self.head_convs, group_norm=self.group_norm,
                                         allow_low_quality_matches=self.allow_low_quality_matches,
                                         means_init=self.means_init)

    def forward(self, images: Tensor, annotations: Tensor | None = None, initializing: bool = False):
        self._check_images(images)
        if annotations is not None:
            annotations = check_annotations(annotations, self.classes, images.shape[0]).to(images.device)
        if initializing:
            if annotations is None:
                raise ValueError("initializing=True tracks the means and needs the annotations")
            with torch.no_grad():
                embeddings = self.classification.embed(self.fpn(images))
                self.classification.track(embeddings, self.anchors(images), annotations)
            return None
        if self.training and annotations is None:
            raise ValueError("DLDENet needs the annotations in training mode to track the class means")
        feature_maps = self.fpn(images)
        anchors = self.anchors(images)
        classifications = self.classification(feature_maps, anchors, annotations)
        return self._finish(images, feature_maps, anchors, classifications)

    def update_means(self) -> None:
        """``'manual'`` mode: move the class means to the normalized accumulated sums."""
        self.classification.update_means()

    def embeddings(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(anchors (B, A, 4), unit embeddings (B, A, d))`` without tracking, for analysis."""
        with torch.no_grad():
            return self.anchors(images), self.classification.embed(self.fpn(images))
