"""Unknown objects: base models on images that also hold classes they never saw (:func:`open_set_evaluation`).

On the digits, the base models of the few-shot protocol (:mod:`dlde.protocols.fewshot`, trained
on 0-6) meet validation images that also hold 7-9; each detection is scored with the unknown
scores of :mod:`dlde.analysis.openset` (:mod:`dlde.inference.unknown_scores`) and counted by its
metrics. Over several base seeds (:func:`open_set_over_seeds`) every number gets a t-interval over
the seeds (:func:`pool_open_set`). The same scores flag unknown objects of a trained run at
inference (:mod:`dlde.inference.unknown_flag`).

Results are typed: :class:`OpenSetResult` (one base seed: per model a :class:`ModelOpenSet`, per
score a :class:`ScoreMetrics`) and :class:`PooledOpenSet` (over base seeds); ``to_dict`` gives their
JSON (keys such as ``A-OSE`` and ``A-OSE_flagged``) and ``from_dict`` reads it back.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dlde.analysis.calibration import DEFAULT_IOU, match_detections
from dlde.analysis.openset import (
    DEFAULT_KNN_K,
    DEFAULT_KNOWN_PRECISION,
    SCORES,
    absolute_open_set_error,
    auroc,
    exceeds,
    roc_curve,
    unknown_recall_at_known_precision,
    wilderness_impact,
)
from dlde.analysis.stats import t_interval
from dlde.data.coco import CocoDetection
from dlde.inference.unknown_scores import check_scores, object_kind, score_plan, scored_detections

__all__ = ["DEFAULT_SCORES", "POOLED_MODEL_METRICS", "POOLED_SCORE_METRICS", "SCORES", "WI_RECALL", "KnownUnknown",
           "ModelOpenSet", "OpenSetResult", "PooledModel", "PooledOpenSet", "PooledScore", "ScoreMetrics",
           "open_set_evaluation", "open_set_over_seeds", "pool_open_set"]

#: Operating recall of ORE's wilderness impact.
WI_RECALL = 0.8
#: The scores :func:`open_set_evaluation` computes unless asked for others: those that need no training images.
DEFAULT_SCORES = ("probability", "cosine")
#: The numbers :func:`pool_open_set` gives an interval of: per score, and per model (without a flag).
POOLED_SCORE_METRICS = ("auroc", "unknown_recall", "known_recall", "wilderness_impact_flagged", "A-OSE_flagged")
POOLED_MODEL_METRICS = ("wilderness_impact", "A-OSE", "known_detections", "unknown_detections")
#: JSON key -> attribute, where the two differ.
_ATTRIBUTE = {"A-OSE": "a_ose", "A-OSE_flagged": "a_ose_flagged"}

Interval = dict[str, float]  # a t-interval: mean, sd, low, high, n (dlde.analysis.stats.t_interval)


@dataclass(frozen=True)
class ScoreMetrics:
    """One unknown score of one model on one base seed's images.

    Attributes:
        auroc: AUROC of known vs unknown detections (NaN without both).
        unknown_recall: unknown recall at the operating point of the known precision asked for.
        known_recall: known recall there.
        threshold: the score at that point (flagged above it).
        wilderness_impact_flagged: WI once the detections flagged at ``threshold`` leave.
        a_ose_flagged: A-OSE (JSON ``A-OSE_flagged``) once they leave.
        roc: :func:`dlde.analysis.openset.roc_curve` (None without both kinds, and in JSON).
    """

    auroc: float
    unknown_recall: float
    known_recall: float
    threshold: float
    wilderness_impact_flagged: float
    a_ose_flagged: int
    roc: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self, curve: bool = False) -> dict[str, Any]:
        """The JSON keys, in order (``roc`` after ``auroc`` with ``curve``, when there is one)."""
        roc = {"roc": self.roc} if curve and self.roc is not None else {}
        return {"auroc": self.auroc, **roc, "unknown_recall": self.unknown_recall, "known_recall": self.known_recall,
                "threshold": self.threshold, "wilderness_impact_flagged": self.wilderness_impact_flagged,
                "A-OSE_flagged": self.a_ose_flagged}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreMetrics:
        return cls(data["auroc"], data["unknown_recall"], data["known_recall"], data["threshold"],
                   data["wilderness_impact_flagged"], data["A-OSE_flagged"], data.get("roc"))


@dataclass(frozen=True)
class KnownUnknown:
    """The unknown scores of the detections matched to known objects and to unknown ones."""

    known: np.ndarray
    unknown: np.ndarray


@dataclass(frozen=True)
class ModelOpenSet:
    """One model on one base seed's images.

    Attributes:
        scores: score name -> its metrics, in the order asked (those the head has).
        primary_score: ``cosine`` when the head has it, else ``probability``.
        wilderness_impact: ORE's WI before flagging.
        a_ose: A-OSE before flagging (JSON ``A-OSE``).
        a_ose_flagged: A-OSE after flagging by the primary score (JSON ``A-OSE_flagged``).
        statistics: what the embedding scores were computed with (``vmf_kappa``,
            ``vmf_kappa_source``, ``knn_k``, ``knn_gallery``), written beside the other keys.
        skipped: score asked for -> why the head has none.
        known_detections, unknown_detections: the detections matched to each kind of object.
    """

    scores: dict[str, ScoreMetrics]
    primary_score: str
    wilderness_impact: float
    a_ose: int
    a_ose_flagged: int
    statistics: dict[str, Any]
    skipped: dict[str, str]
    known_detections: int
    unknown_detections: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """The JSON keys: each score's, then the model's (with ``curves``, the ROC curves too)."""
        return {**{kind: s.to_dict(curves) for kind, s in self.scores.items()}, "primary_score": self.primary_score,
                "wilderness_impact": self.wilderness_impact, "A-OSE": self.a_ose, "A-OSE_flagged": self.a_ose_flagged,
                **self.statistics, "skipped": self.skipped, "known_detections": self.known_detections,
                "unknown_detections": self.unknown_detections}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelOpenSet:
        named = {"primary_score", "wilderness_impact", "A-OSE", "A-OSE_flagged", "skipped", "known_detections",
                 "unknown_detections"}
        return cls({k: ScoreMetrics.from_dict(v) for k, v in data.items() if k in SCORES}, data["primary_score"],
                   data["wilderness_impact"], data["A-OSE"], data["A-OSE_flagged"],
                   {k: v for k, v in data.items() if k not in SCORES and k not in named}, dict(data["skipped"]),
                   data["known_detections"], data["unknown_detections"])


@dataclass(frozen=True)
class OpenSetResult:
    """The base models of one base seed on images with known and unknown objects (:func:`open_set_evaluation`).

    Attributes:
        models: name -> its :class:`ModelOpenSet`.
        scores: name -> score -> the scores of its known and unknown detections (empty from JSON).
        images, closed_images: images evaluated, and those without an unknown object.
        known_objects, unknown_objects: ground-truth objects of each kind in those images.
    """

    models: dict[str, ModelOpenSet]
    scores: dict[str, dict[str, KnownUnknown]] = field(repr=False, compare=False)
    images: int
    closed_images: int
    known_objects: int
    unknown_objects: int

    def to_dict(self) -> dict[str, Any]:
        """The numbers, without score arrays and curves (JSON)."""
        return {"images": self.images, "closed_images": self.closed_images, "known_objects": self.known_objects,
                "unknown_objects": self.unknown_objects,
                "models": {name: m.to_dict() for name, m in self.models.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpenSetResult:
        return cls({name: ModelOpenSet.from_dict(m) for name, m in data["models"].items()}, {}, data["images"],
                   data["closed_images"], data["known_objects"], data["unknown_objects"])


@dataclass(frozen=True)
class PooledScore:
    """One unknown score of one model over base seeds: a t-interval of each of :data:`POOLED_SCORE_METRICS`."""

    auroc: Interval
    unknown_recall: Interval
    known_recall: Interval
    wilderness_impact_flagged: Interval
    a_ose_flagged: Interval

    def metric(self, name: str) -> Interval:
        """The interval of a metric by its name in :data:`POOLED_SCORE_METRICS` (``A-OSE_flagged``, ...)."""
        return getattr(self, _ATTRIBUTE.get(name, name))

    def to_dict(self) -> dict[str, Interval]:
        return {name: self.metric(name) for name in POOLED_SCORE_METRICS}


@dataclass(frozen=True)
class PooledModel:
    """One model over base seeds: per score a :class:`PooledScore` (in :data:`SCORES` order), and a
    t-interval of each of :data:`POOLED_MODEL_METRICS` (WI and A-OSE without a flag)."""

    scores: dict[str, PooledScore]
    wilderness_impact: Interval
    a_ose: Interval
    known_detections: Interval
    unknown_detections: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"scores": {kind: s.to_dict() for kind, s in self.scores.items()},
                **{name: getattr(self, _ATTRIBUTE.get(name, name)) for name in POOLED_MODEL_METRICS}}


@dataclass(frozen=True)
class PooledOpenSet:
    """:func:`pool_open_set`: every model's numbers over base seeds, with each seed's own result.

    Attributes:
        base_seeds: the seeds, in order.
        images, known_objects, unknown_objects: those of the first seed (the same images for every seed).
        models: name -> its :class:`PooledModel`.
        by_seed: base seed -> its :class:`OpenSetResult`.
    """

    base_seeds: list[int]
    images: int
    known_objects: int
    unknown_objects: int
    models: dict[str, PooledModel]
    by_seed: dict[int, OpenSetResult]

    def to_dict(self) -> dict[str, Any]:
        return {"base_seeds": self.base_seeds, "images": self.images, "known_objects": self.known_objects,
                "unknown_objects": self.unknown_objects,
                "models": {name: m.to_dict() for name, m in self.models.items()},
                "by_seed": {seed: r.to_dict() for seed, r in self.by_seed.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PooledOpenSet:
        """A pooled result back from :meth:`to_dict` (its JSON)."""
        models = {name: PooledModel({kind: PooledScore(*(s[n] for n in POOLED_SCORE_METRICS))
                                     for kind, s in m["scores"].items()}, *(m[n] for n in POOLED_MODEL_METRICS))
                  for name, m in data["models"].items()}
        return cls(list(data["base_seeds"]), data["images"], data["known_objects"], data["unknown_objects"], models,
                   {int(seed): OpenSetResult.from_dict(r) for seed, r in data["by_seed"].items()})


@torch.no_grad()
def open_set_evaluation(models: Mapping[str, nn.Module], dataset: CocoDetection, known_names: Sequence[str], *,
                        max_images: int | None = None, score_threshold: float | None = None, iou: float = DEFAULT_IOU,
                        precision: float = DEFAULT_KNOWN_PRECISION, batch_size: int = 32,
                        scores: Sequence[str] = DEFAULT_SCORES, train_set: CocoDetection | None = None,
                        concentrations: Mapping[str, Any] | None = None, knn_k: int = DEFAULT_KNN_K,
                        gallery_images: int | None = None) -> OpenSetResult:
    """Unknown-object detection by base models on images that also hold unknown classes.

    Every detection (``model.predict``: one label per box) is matched to the ground-truth object
    of any class with the highest IoU; at IoU >= ``iou`` it is *known* when that object's class is
    in ``known_names`` and *unknown* otherwise (unmatched detections are left out). Scores
    (:mod:`dlde.analysis.openset`): ``probability`` = 1 - max class probability (every head) and, for heads
    with an embedding space, ``cosine`` = 1 - the cosine of the box's embedding
    (:func:`dlde.analysis.retrieval.box_embeddings`) to the nearest class direction (DLDENet's tracked
    means, the learned prototypes). For those heads a detection whose box gets no anchor (a
    duplicate of another detected box under another class) is left out. Opt-in (``scores``):
    ``energy`` of the class logits of the detection's anchor (:func:`dlde.analysis.openset.log_odds`;
    every head); for heads with an embedding space ``vmf`` (mean: the class direction; κ̂:
    ``concentrations[name]``, else :func:`dlde.analysis.openset.concentration_about` the box
    embeddings of ``train_set``'s known-class boxes) and ``knn`` (gallery: those embeddings).

    Per model and score: AUROC, the ROC curve, unknown recall at ``precision`` known precision;
    per model: ORE's wilderness impact (precision of the known detections at recall 0.8 on the
    images without unknown objects vs on all images) and absolute open-set error (unknown objects
    detected as a known class), before and after flagging the detections whose primary score
    (cosine when there is one) exceeds the threshold of ``precision``; per score also after
    flagging by its own threshold (``wilderness_impact_flagged``, ``A-OSE_flagged``).

    Args:
        models: name -> base detector whose classes are ``known_names`` (label order).
        dataset: images with known and unknown objects (e.g. the ten-digit validation set).
        known_names: class names of the models, names of ``dataset`` classes.
        max_images: first images only (None: all).
        score_threshold: smallest detection score kept (None: each model's ``score_threshold``).
        iou: IoU of a match.
        precision: known precision of the unknown-recall operating point.
        batch_size: images per forward pass.
        scores: names of :data:`SCORES`, in this order (a head without an embedding space skips
            those that need one).
        train_set: images whose known-class boxes give the ``knn`` gallery and the estimated κ̂.
        concentrations: name -> (C,) κ̂ of the model's classes (e.g. the last row of a DLDENet
            run's ``kappa_history.npy``: the tracked means' statistics); NaN: a class left out.
        knn_k, gallery_images: the neighbour of ``knn``; the first images of ``train_set`` only, for its gallery and κ̂.

    Returns:
        Per model its metrics and its known and unknown scores, and the objects counted.
    """
    wanted = check_scores(scores)
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    known = torch.as_tensor([dataset.class_names.index(n) for n in known_names], dtype=torch.long)
    unknown_labels = [c for c in range(len(dataset.class_names)) if c not in known.tolist()]
    targets = [dataset.targets(i) for i in indices]
    closed = np.array([not torch.isin(t[:, 4].long(), torch.as_tensor(unknown_labels)).any() for t in targets])
    models_out, arrays = {}, {}
    for name, model in models.items():  # a few models
        threshold = float(model.score_threshold if score_threshold is None else score_threshold)
        kinds, scorers, statistics = score_plan(model, wanted, train_set, known, batch_size,
                                                kappa=(concentrations or {}).get(name), knn_k=knn_k,
                                                gallery_images=gallery_images)
        per_image = scored_detections(model, scorers, dataset, indices, known, threshold, batch_size,
                                      energy="energy" in kinds)
        kind_of = np.concatenate([object_kind(d["boxes"], t, known, iou) for d, t in zip(per_image, targets)]) \
            if per_image else np.zeros(0, np.int64)
        points, arrays[name] = _operating_points(per_image, kinds, kind_of, precision)
        flagged = {kind: _flagged_metrics(per_image, kind, points[kind]["threshold"], targets, closed, known,
                                          unknown_labels, iou) for kind in kinds}
        primary = "cosine" if "cosine" in kinds else "probability"
        models_out[name] = ModelOpenSet(
            {kind: ScoreMetrics(**points[kind], wilderness_impact_flagged=flagged[kind][0],
                                a_ose_flagged=flagged[kind][1]) for kind in kinds},
            primary, _wilderness(per_image, targets, closed, known, iou),
            absolute_open_set_error(per_image, targets, unknown_labels, iou=iou),
            absolute_open_set_error(_flagged(per_image, primary, points[primary]["threshold"]), targets,
                                    unknown_labels, iou=iou),
            statistics, {k: "no embedding space" for k in wanted if k not in kinds},
            int((kind_of == 0).sum()), int((kind_of == 1).sum()))
    return OpenSetResult(models_out, arrays, len(indices), int(closed.sum()),
                         int(sum(torch.isin(t[:, 4].long(), known).sum() for t in targets)),
                         int(sum((~torch.isin(t[:, 4].long(), known)).sum() for t in targets)))


def _operating_points(per_image: Sequence[Mapping[str, Tensor]], kinds: Sequence[str], kind_of: np.ndarray,
                      precision: float) -> tuple[dict[str, dict[str, Any]], dict[str, KnownUnknown]]:
    """Per score kind: AUROC, ROC curve (None without both known and unknown detections) and the
    operating point at ``precision`` known precision (NaN without both), and the known and unknown
    score arrays."""
    points, scores = {}, {}
    for kind in kinds:
        values = torch.cat([d[kind] for d in per_image]).numpy() if per_image else np.zeros(0)
        k_scores, u_scores = values[kind_of == 0], values[kind_of == 1]
        scores[kind] = KnownUnknown(k_scores, u_scores)
        if k_scores.size and u_scores.size:
            at = unknown_recall_at_known_precision(k_scores, u_scores, precision)
            points[kind] = {"auroc": auroc(k_scores, u_scores), "roc": roc_curve(k_scores, u_scores),
                            "unknown_recall": at["unknown_recall"], "known_recall": at["known_recall"],
                            "threshold": at["threshold"]}
        else:
            points[kind] = {"auroc": math.nan, "roc": None, "unknown_recall": math.nan, "known_recall": math.nan,
                            "threshold": math.nan}
    return points, scores


def _flagged(per_image: Sequence[Mapping[str, Tensor]], score: str, threshold: float, *,
             drop: bool = False) -> list[dict[str, Tensor]]:
    """The detections with label -1 where ``score`` exceeds ``threshold`` (:func:`dlde.analysis.openset.exceeds`:
    all at -inf, none at NaN); with ``drop``, only the others, with their ``scores``."""
    flagged = []
    for d in per_image:  # loop over images
        labels = d["labels"].clone()
        labels[exceeds(d[score], threshold)] = -1
        if drop:
            kept = labels >= 0
            flagged.append({"boxes": d["boxes"][kept], "scores": d["scores"][kept], "labels": labels[kept]})
        else:
            flagged.append({"boxes": d["boxes"], "labels": labels})
    return flagged


def _flagged_metrics(per_image: Sequence[Mapping[str, Tensor]], score: str, threshold: float,
                     targets: Sequence[Tensor], closed: np.ndarray, known: Tensor, unknown_labels: Sequence[int],
                     iou: float) -> tuple[float, int]:
    """WI and A-OSE of the detections that ``score`` keeps as known at ``threshold`` (the flagged ones
    leave): ``(wilderness impact, A-OSE)``."""
    kept = _flagged(per_image, score, threshold, drop=True)
    return (_wilderness(kept, targets, closed, known, iou),
            absolute_open_set_error(kept, targets, unknown_labels, iou=iou))


def _precision_at_recall(scores: np.ndarray, correct: np.ndarray, objects: int, recall: float) -> float:
    """Interpolated precision at ``recall`` (the best precision at any recall >= it); NaN if never reached."""
    if objects == 0 or scores.size == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, tp.size + 1)
    reached = tp / objects >= recall - 1e-12
    return float(precision[reached].max()) if reached.any() else math.nan


def _wilderness(per_image: Sequence[Mapping[str, Tensor]], targets: Sequence[Tensor], closed: np.ndarray,
                known: Tensor, iou: float) -> float:
    """ORE's WI at recall :data:`WI_RECALL`: known-class precision on the closed images vs all images."""
    precisions = []
    for subset in (closed, np.ones_like(closed)):
        scores, correct, objects = [], [], 0
        for d, t, use in zip(per_image, targets, subset):  # loop over images
            if not use:
                continue
            gt = t[torch.isin(t[:, 4].long(), known)]
            objects += len(gt)
            scores.append(d["scores"].numpy())
            correct.append(match_detections(d["boxes"], d["labels"], gt[:, :4], gt[:, 4].long(), iou,
                                            scores=d["scores"]))
        precisions.append(_precision_at_recall(np.concatenate(scores) if scores else np.zeros(0),
                                               np.concatenate(correct) if correct else np.zeros(0, bool),
                                               objects, WI_RECALL))
    if not all(math.isfinite(p) for p in precisions) or precisions[1] <= 0:
        return math.nan
    return wilderness_impact(precisions[0], precisions[1])



# ---------------------------------------------------------------------------- over base seeds
def open_set_over_seeds(models: Mapping[int, Mapping[str, nn.Module]], dataset: CocoDetection,
                        known_names: Sequence[str], *, concentrations: Mapping[int, Mapping[str, Any]] | None = None,
                        **options: Any) -> dict[int, OpenSetResult]:
    """:func:`open_set_evaluation` of the base models of each base seed.

    Args:
        models: base seed -> name -> base detector (e.g. :class:`dlde.protocols.base_runs.BaseModels`).
        dataset, known_names: as :func:`open_set_evaluation`.
        concentrations: base seed -> name -> (C,) κ̂ (see ``concentrations`` there).
        **options: further arguments of :func:`open_set_evaluation` (``scores``, ``train_set``, ...).

    Returns:
        base seed -> its result, in the order of ``models``.
    """
    return {seed: open_set_evaluation(per_head, dataset, known_names,
                                      concentrations=(concentrations or {}).get(seed), **options)
            for seed, per_head in models.items()}


def pool_open_set(results: Mapping[int, OpenSetResult]) -> PooledOpenSet:
    """Mean and 95 % t-interval over base seeds (:func:`dlde.analysis.stats.t_interval`) of every number
    of :func:`open_set_over_seeds`.

    Each base seed is one independent training of every head, so its AUROC, unknown recall, WI and
    A-OSE are one draw each: the interval has ``n = len(results)`` (no k-shot draws here).

    Returns:
        The seeds; the images and objects of the first seed (the same images for every seed); per
        model the intervals of :data:`POOLED_SCORE_METRICS` per score (in :data:`SCORES` order) and of
        :data:`POOLED_MODEL_METRICS`; each seed's own result.
    """
    if not results:
        raise ValueError("pool_open_set needs the results of at least one base seed")
    per_seed = list(results.values())
    first = per_seed[0]
    models: dict[str, PooledModel] = {}
    for name in first.models:  # a few heads
        seen = [r.models[name] for r in per_seed if name in r.models]
        kinds = [k for k in SCORES if any(k in m.scores for m in seen)]
        scores = {kind: PooledScore(*(t_interval([_metric(m.scores[kind], metric) if kind in m.scores else None
                                                  for m in seen]) for metric in POOLED_SCORE_METRICS))
                  for kind in kinds}
        models[name] = PooledModel(scores, *(t_interval([_metric(m, metric) for m in seen])
                                             for metric in POOLED_MODEL_METRICS))
    return PooledOpenSet([int(s) for s in results], first.images, first.known_objects, first.unknown_objects, models,
                         {int(s): r for s, r in results.items()})


def _metric(numbers: ScoreMetrics | ModelOpenSet, name: str) -> float:
    """A number of a score's or a model's metrics by its JSON name (``A-OSE``, ``auroc``, ...)."""
    return getattr(numbers, _ATTRIBUTE.get(name, name))
