"""Flagging detections as unknown objects by one named unknown score (:class:`UnknownFlag`).

A flag is a score of :data:`dlde.analysis.openset.SCORES` and a threshold: a detection whose
unknown score exceeds the threshold is flagged (:func:`dlde.analysis.openset.exceeds`). The scores
of a box embedding (``cosine``, ``vmf``, ``knn``) carry what they compare with (class directions,
κ̂, the kNN gallery) bound into ``embedding_score``.
:func:`dlde.analysis.openset_protocol.calibrate_unknown_flag` builds the flag of a trained run
(threshold: the score that keeps a chosen fraction of the known objects); notebook
``04_inference`` passes it to :func:`dlde.analysis.inspection.detect_folder`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dlde.model.modes import evaluating

from .openset import EMBEDDING_SCORES, SCORES, energy_unknown_score, exceeds, log_odds, probability_unknown_score
from .retrieval import box_embeddings

__all__ = ["UnknownFlag"]


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
