"""The unknown scores of a detector's detections, as the unknown flag of a run
(:mod:`dlde.inference.unknown_flag`) and the unknown-object protocol (:mod:`dlde.protocols.openset`)
both compute them.

:func:`score_plan` says which scores of :data:`dlde.analysis.openset.SCORES` apply to a model and
binds what the embedding scores compare with (class directions, κ̂, the kNN gallery of training
boxes); :func:`scored_detections` runs the model on dataset items and scores each kept detection;
:func:`object_kind` matches detections to known or unknown objects.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from dlde.analysis.inspection import device_of
from dlde.analysis.openset import (
    EMBEDDING_SCORES,
    SCORES,
    concentration_about,
    cosine_unknown_score,
    energy_unknown_score,
    knn_unknown_score,
    log_odds,
    probability_unknown_score,
    vmf_unknown_score,
)
from dlde.analysis.retrieval import EmbeddingIndex, box_embeddings
from dlde.data.coco import CocoDetection
from dlde.data.transforms import collate
from dlde.model.modes import evaluating

__all__ = ["check_scores", "object_kind", "score_plan", "scored_detections", "training_embeddings"]


def check_scores(scores: Sequence[str]) -> list[str]:
    """The score names asked for; unknown or repeated names (or none) raise."""
    wanted = list(scores)
    bad = sorted(set(wanted) - set(SCORES))
    if bad or len(set(wanted)) != len(wanted) or not wanted:
        raise ValueError(f"scores must be distinct names among {', '.join(SCORES)}, got {wanted}")
    return wanted


def score_plan(model: nn.Module, wanted: Sequence[str], train_set: CocoDetection | None, known: Tensor,
                batch_size: int, *, kappa: Any | None, knn_k: int, gallery_images: int | None = None
                ) -> tuple[list[str], dict[str, Callable[[Tensor], Tensor]] | None, dict[str, Any]]:
    """The scores of ``wanted`` that apply to ``model``; for a model with an embedding space, score
    name -> function of the boxes' unit embeddings ``(N, d)`` (else None); what those scores were
    computed with (``vmf_kappa``, ``vmf_kappa_source``, ``knn_k``, ``knn_gallery``)."""
    directions = model.class_directions()
    if directions is None:
        return [k for k in wanted if k not in EMBEDDING_SCORES], None, {}
    directions, kinds = directions.cpu(), list(wanted)
    scorers: dict[str, Callable[[Tensor], Tensor]] = {}
    statistics: dict[str, Any] = {}
    needs_train = "knn" in kinds or ("vmf" in kinds and kappa is None)
    if needs_train and train_set is None:
        raise ValueError("the 'knn' score, and 'vmf' without concentrations for the model, need train_set")
    embeddings, labels = training_embeddings(model, train_set, known, batch_size, gallery_images) \
        if needs_train else (None, None)
    for kind in kinds:  # a few scores
        if kind == "cosine":
            scorers[kind] = partial(cosine_unknown_score, means=directions)
        elif kind == "vmf":
            source = "given" if kappa is not None else "training boxes"
            kappa = concentration_about(embeddings, labels, directions) if kappa is None else np.asarray(kappa, float)
            if kappa.shape != (len(directions),):
                raise ValueError(f"concentrations: need one κ̂ per class ({len(directions)}), got shape {kappa.shape}")
            scorers[kind] = partial(vmf_unknown_score, means=directions, kappa=kappa)
            statistics |= {"vmf_kappa": [float(k) for k in kappa], "vmf_kappa_source": source}
        elif kind == "knn":
            scorers[kind] = partial(knn_unknown_score, gallery=EmbeddingIndex(embeddings), k=knn_k)
            statistics |= {"knn_k": int(knn_k), "knn_gallery": len(embeddings)}
    return kinds, scorers, statistics


def training_embeddings(model: nn.Module, train_set: CocoDetection, known: Tensor, batch_size: int,
                         max_images: int | None = None) -> tuple[Tensor, Tensor]:
    """``(embeddings (N, d), labels (N,))``: the unit box embeddings of the known-class ground-truth
    boxes of the first ``max_images`` images of ``train_set`` (None: all) and their labels in the
    model's order (boxes without an anchor left out)."""
    device = device_of(model)
    to_model = torch.full((len(train_set.class_names),), -1, dtype=torch.long)
    to_model[known] = torch.arange(len(known))
    embeddings, labels = [], []
    count = len(train_set) if max_images is None else min(max_images, len(train_set))
    with evaluating(model):
        for start in range(0, count, batch_size):
            images, annotations = collate([train_set[i] for i in range(start, min(start + batch_size, count))])
            rows = [a[(a[:, 4] >= 0) & torch.isin(a[:, 4].long(), known)] for a in annotations]
            for r, e in zip(rows, box_embeddings(model, images.to(device), [r[:, :4] for r in rows])):
                embeddings.append(e.cpu())
                labels.append(to_model[r[:, 4].long()])
    embeddings, labels = torch.cat(embeddings), torch.cat(labels)
    usable = embeddings.norm(dim=1) > 0
    if not usable.any():
        raise ValueError("train_set holds no known-class box with an embedding")
    return embeddings[usable], labels[usable]


def _predictions(model: nn.Module, images: Tensor, probabilities: bool) -> tuple[list[dict[str, Tensor]], list]:
    """``model.predict(images)`` and, with ``probabilities``, each detection's class probabilities
    ``(N_i, C)`` from the same forward pass (the predictions are then built as ``predict`` builds them)."""
    if not probabilities:
        return model.predict(images), [None] * len(images)
    with evaluating(model):
        outputs = model(images)
    predictions = [dict(zip(("boxes", "scores", "labels"), (b, *p.max(dim=1)))) for b, p in outputs]
    return predictions, [p for _, p in outputs]


def scored_detections(model: nn.Module, scorers: Mapping[str, Callable[[Tensor], Tensor]] | None,
                       dataset: CocoDetection, indices: Sequence[int], known: Tensor, threshold: float,
                       batch_size: int, *, energy: bool = False) -> list[dict[str, Tensor]]:
    """Per image the detections scoring at least ``threshold``, in original pixels and dataset
    labels, with their unknown scores: ``probability``, each of ``scorers`` (name -> function of the
    boxes' unit embeddings; None: the model has no embedding space) and ``energy`` when asked."""
    device = device_of(model)
    per_image = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        images, _ = collate([dataset[i] for i in chunk])
        images = images.to(device)
        predictions, class_probabilities = _predictions(model, images, energy)
        boxes = [p["boxes"][p["scores"] >= threshold] for p in predictions]
        embedded = box_embeddings(model, images, boxes) if scorers is not None else [None] * len(chunk)
        for i, p, b, e, q in zip(chunk, predictions, boxes, embedded, class_probabilities):  # loop over images
            keep = p["scores"] >= threshold
            if e is not None:  # a duplicate box (same box, other class) may get no anchor: left out
                usable = e.norm(dim=1) > 0
                keep[keep.clone()] = usable
                b, e = b[usable], e[usable]
            scale = dataset.meta(i)["scale"]
            det = {"boxes": (b / scale).cpu(), "scores": p["scores"][keep].cpu(),
                   "labels": known[p["labels"][keep].cpu()]}
            det["probability"] = probability_unknown_score(det["scores"][:, None]) if len(b) else torch.zeros(0)
            for kind, score in (scorers or {}).items():  # a few scores
                det[kind] = score(e.cpu()) if len(b) else torch.zeros(0)
            if q is not None:
                det["energy"] = energy_unknown_score(log_odds(q[keep])) if len(b) else torch.zeros(0)
            per_image.append(det)
    return per_image


def object_kind(boxes: Tensor, target: Tensor, known: Tensor, iou: float) -> np.ndarray:
    """``(N,)`` per detection: 0 matches a known object, 1 an unknown one, -1 nothing (IoU < ``iou``)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if len(target) == 0:
        return np.full(len(boxes), -1, np.int64)
    best, which = box_iou(boxes.float(), target[:, :4].float()).max(dim=1)  # (N,)
    is_known = torch.isin(target[which, 4].long(), known)
    return torch.where(best >= iou, (~is_known).long(), torch.full_like(which, -1)).numpy()
