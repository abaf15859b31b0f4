"""Flagging detections as unknown objects by one named unknown score (:class:`UnknownFlag`).

A flag is a score of :data:`dlde.analysis.openset.SCORES` and a threshold: a detection whose
unknown score exceeds the threshold is flagged (:func:`dlde.analysis.openset.exceeds`). The scores
of a box embedding (``cosine``, ``vmf``, ``knn``) carry what they compare with (class directions,
κ̂, the kNN gallery) bound into ``embedding_score``.
:func:`calibrate_unknown_flag` builds the flag of a trained run (threshold: the score that keeps a
chosen fraction of the known objects; :func:`run_unknown_flag` as notebook ``04_inference`` asks
for it), and :func:`dlde.inference.detect.detect_folder` flags the detections of new images by it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dlde.analysis.calibration import DEFAULT_IOU
from dlde.analysis.openset import (
    DEFAULT_KNN_K,
    DEFAULT_KNOWN_PRECISION,
    EMBEDDING_SCORES,
    SCORES,
    energy_unknown_score,
    exceeds,
    known_recall_threshold,
    log_odds,
    probability_unknown_score,
)
from dlde.analysis.retrieval import box_embeddings
from dlde.model.modes import evaluating
from dlde.train import TrainConfig, build_datasets

from .unknown_scores import check_scores, object_kind, score_plan, scored_detections

__all__ = ["NoMatchedDetections", "UnknownFlag", "calibrate_unknown_flag", "run_unknown_flag"]


@dataclass(frozen=True)
class UnknownFlag:
    """Flags a detection as unknown when its unknown score ``score`` exceeds ``threshold``.

    Attributes:
        score: a name of :data:`dlde.analysis.openset.SCORES`.
        threshold: flagged when the score is ``> threshold`` (-inf flags everything, NaN nothing).
        embedding_score: for ``cosine``, ``vmf`` and ``knn``, the score of unit box embeddings
            ``(N, d) -> (N,)`` (e.g. :func:`dlde.analysis.openset.vmf_unknown_score` with the class
            directions and κ̂ bound in); None for ``probability`` and ``energy``.
        known_recall: the fraction of known detections the threshold was chosen to keep (a record).
    """

    score: str
    threshold: float
    embedding_score: Callable[[Tensor], Tensor] | None = None
    known_recall: float | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; options: {', '.join(SCORES)}")
        if (self.score in EMBEDDING_SCORES) != (self.embedding_score is not None):
            raise ValueError(f"the {self.score!r} score {'needs' if self.score in EMBEDDING_SCORES else 'takes no'} "
                             "embedding_score")

    def scores(self, probabilities: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """``(N,)`` float64 unknown scores of N detections.

        Args:
            probabilities: ``(N, C)`` each detection's class probabilities.
            embeddings: ``(N, d)`` their unit box embeddings (the embedding scores only); a zero
                row (a box no anchor matches) gets the score NaN, which is never flagged.
        """
        if len(probabilities) == 0:
            return torch.zeros(0, dtype=torch.float64)
        if self.score == "probability":
            return probability_unknown_score(probabilities).double()
        if self.score == "energy":
            return energy_unknown_score(log_odds(probabilities))
        if embeddings is None:
            raise ValueError(f"the {self.score!r} score needs the detections' embeddings")
        embeddings = embeddings.cpu()
        usable = embeddings.norm(dim=1) > 0
        out = torch.full((len(embeddings),), float("nan"), dtype=torch.float64)
        if usable.any():
            out[usable] = self.embedding_score(embeddings[usable]).double()
        return out

    @torch.no_grad()
    def flag_predictions(self, model: nn.Module, images: Tensor, keep: Tensor) -> dict[str, np.ndarray]:
        """Score and flag the detections ``keep`` selects of ``model`` on one image.

        Args:
            model: the detector (any head for ``probability``/``energy``; one with an embedding
                space for the others).
            images: ``(1, 3, H, W)`` network input.
            keep: ``(N_all,)`` bool over the image's detections in ``model.predict`` order.

        Returns:
            ``unknown_score (N,)`` and ``unknown (N,)`` bool for the N kept detections.
        """
        with evaluating(model):
            boxes, probabilities = model(images)[0]  # the detections of model.predict, same order
        keep = keep.to(boxes.device)
        embeddings = box_embeddings(model, images, [boxes[keep]])[0] if self.embedding_score is not None else None
        scores = self.scores(probabilities[keep].cpu(), embeddings)
        return {"unknown_score": scores.numpy(), "unknown": exceeds(scores, self.threshold).numpy()}

    def summary(self) -> dict[str, Any]:
        """``score``, ``threshold`` and ``known_recall`` (JSON-able)."""
        return {"score": self.score, "threshold": self.threshold, "known_recall": self.known_recall}


# ---------------------------------------------------------------------- the flag of a trained run
class NoMatchedDetections(ValueError):
    """A run's validation detections match no object: an unknown flag has nothing to set its threshold on."""


def calibrate_unknown_flag(model: nn.Module, score: str, config: Mapping[str, Any] | TrainConfig, *,
                           known_recall: float = DEFAULT_KNOWN_PRECISION, kappa_history: Any | None = None,
                           max_images: int | None = 200, knn_k: int = DEFAULT_KNN_K, iou: float = DEFAULT_IOU,
                           score_threshold: float | None = None, batch_size: int = 32) -> UnknownFlag:
    """The unknown flag of a trained run by the score ``score``, its threshold set on known objects.

    The run's own classes are all known: the threshold is the score that keeps a fraction
    ``known_recall`` of the run's validation detections matched to an object (at IoU >= ``iou``)
    (:func:`dlde.analysis.openset.known_recall_threshold`, the out-of-distribution convention of
    95 % known recall); a new image's detection scoring above it is flagged. The kNN gallery and,
    without ``kappa_history``, the κ̂ of ``vmf`` come from the run's training images (unflipped).

    Args:
        model: the run's detector.
        score: a name of :data:`SCORES` (``cosine``, ``vmf``, ``knn`` need an embedding space).
        config: the run's TrainConfig (or its ``config.json`` dict): the datasets.
        known_recall: fraction of known detections kept, in (0, 1].
        kappa_history: the run's ``(epochs + 1, C)`` κ̂ (:class:`dlde.train.runs.Run`); its last
            row (the tracked means' statistics at the end of training) is the ``vmf`` κ̂.
        max_images: validation images for the threshold, and training images for the gallery and κ̂.
        knn_k: the neighbour of ``knn``.
        iou: IoU of a match.
        score_threshold: smallest detection score used (None: the model's ``score_threshold``).
        batch_size: images per forward pass.

    Raises:
        ValueError: the score needs an embedding space the head lacks.
        NoMatchedDetections: no detection matches an object (a run that detects nothing yet).
    """
    config = TrainConfig.from_dict(dict(config)) if isinstance(config, Mapping) else config
    train_set, val_set = build_datasets(dataclasses.replace(config, flip_prob=0.0))
    known = torch.arange(len(val_set.class_names))
    kappa = None if kappa_history is None or not len(kappa_history) else np.asarray(kappa_history)[-1]
    kinds, scorers, _ = score_plan(model, check_scores([score]), train_set, known, batch_size, kappa=kappa,
                                    knn_k=knn_k, gallery_images=max_images)
    if score not in kinds:
        raise ValueError(f"the {model.classification.name!r} head has no embedding space for the {score!r} score")
    indices = list(range(len(val_set) if max_images is None else min(max_images, len(val_set))))
    threshold = float(model.score_threshold if score_threshold is None else score_threshold)
    per_image = scored_detections(model, scorers, val_set, indices, known, threshold, batch_size,
                                   energy=score == "energy")
    matched = [d[score][object_kind(d["boxes"], val_set.targets(i), known, iou) == 0]
               for i, d in zip(indices, per_image)]
    values = torch.cat(matched).numpy() if matched else np.zeros(0)
    if not values.size:
        raise NoMatchedDetections(f"no detection of {len(indices)} validation images matches an object: nothing "
                                  "to set the threshold on")
    return UnknownFlag(score, known_recall_threshold(values, known_recall),
                       scorers.get(score) if scorers else None, known_recall=known_recall)


def run_unknown_flag(model: nn.Module, score: str, run: Any, **options: Any) -> tuple[UnknownFlag | None, str]:
    """The unknown flag of ``04_inference`` for a loaded run (:class:`dlde.train.runs.Run`), and what to
    print about it.

    No flag when ``score`` is ``""``, or when the run's validation detections match no object yet
    (a run too weak to set a threshold on: the notebook then draws its detections unflagged and
    says why, instead of failing). Any other problem raises, as :func:`calibrate_unknown_flag`.

    Args:
        model: the run's detector.
        score: a name of :data:`SCORES`, or ``""`` for no flag.
        run: the run (its ``config`` and ``kappa_history`` are used).
        **options: further arguments of :func:`calibrate_unknown_flag`.

    Returns:
        ``(flag or None, a line describing it)``.
    """
    if not score:
        return None, "no unknown flag"
    try:
        flag = calibrate_unknown_flag(model, score, run.config, kappa_history=run.kappa_history, **options)
    except NoMatchedDetections as error:
        return None, f"no unknown flag: {error}"
    return flag, str(flag.summary())
