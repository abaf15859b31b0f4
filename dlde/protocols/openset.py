"""Unknown objects: base models on images that also hold classes they never saw (:func:`open_set_evaluation`).

On the digits, the base models of the few-shot protocol (:mod:`dlde.protocols.fewshot`, trained
on 0-6) meet validation images that also hold 7-9; each detection is scored with the unknown
scores of :mod:`dlde.analysis.openset` (:mod:`dlde.inference.unknown_scores`) and counted by its
metrics. Over several base seeds (:func:`open_set_over_seeds`) every number gets a t-interval over
the seeds (:func:`pool_open_set`). The same scores flag unknown objects of a trained run at
inference (:mod:`dlde.inference.unknown_flag`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

__all__ = ["POOLED_MODEL_METRICS", "POOLED_SCORE_METRICS", "SCORES", "WI_RECALL", "open_set_evaluation",
           "open_set_over_seeds", "open_set_summary", "pool_open_set"]

#: Operating recall of ORE's wilderness impact.
WI_RECALL = 0.8


@torch.no_grad()
def open_set_evaluation(models: Mapping[str, nn.Module], dataset: CocoDetection, known_names: Sequence[str], *,
                        max_images: int | None = None, score_threshold: float | None = None, iou: float = DEFAULT_IOU,
                        precision: float = DEFAULT_KNOWN_PRECISION, batch_size: int = 32,
                        scores: Sequence[str] | None = None, train_set: CocoDetection | None = None,
                        concentrations: Mapping[str, Any] | None = None, knn_k: int = DEFAULT_KNN_K,
                        gallery_images: int | None = None) -> dict[str, Any]:
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
    (cosine when there is one) exceeds the threshold of ``precision``; with ``scores``, also per
    score after flagging by its own threshold (``wilderness_impact_flagged``, ``A-OSE_flagged``).

    Args:
        models: name -> base detector whose classes are ``known_names`` (label order).
        dataset: images with known and unknown objects (e.g. the ten-digit validation set).
        known_names: class names of the models, names of ``dataset`` classes.
        max_images: first images only (None: all).
        score_threshold: smallest detection score kept (None: each model's ``score_threshold``).
        iou: IoU of a match.
        precision: known precision of the unknown-recall operating point.
        batch_size: images per forward pass.
        scores: names of :data:`SCORES`, in this order; None: ``probability`` and ``cosine`` as in
            earlier versions (without per-score flagged metrics, ``skipped`` and statistics).
        train_set: images whose known-class boxes give the ``knn`` gallery and the estimated κ̂.
        concentrations: name -> (C,) κ̂ of the model's classes (e.g. the last row of a DLDENet
            run's ``kappa_history.npy``: the tracked means' statistics); NaN: a class left out.
        knn_k, gallery_images: the neighbour of ``knn``; the first images of ``train_set`` only, for its gallery and κ̂.

    Returns:
        ``{"models": name -> metrics, "scores": name -> {score: {"known", "unknown"} arrays},
        "known_objects", "unknown_objects", "images"}``.
    """
    wanted = check_scores(scores)
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    known = torch.as_tensor([dataset.class_names.index(n) for n in known_names], dtype=torch.long)
    unknown_labels = [c for c in range(len(dataset.class_names)) if c not in known.tolist()]
    targets = [dataset.targets(i) for i in indices]
    closed = np.array([not torch.isin(t[:, 4].long(), torch.as_tensor(unknown_labels)).any() for t in targets])
    out: dict[str, Any] = {"models": {}, "scores": {}, "images": len(indices), "closed_images": int(closed.sum()),
                           "known_objects": int(sum(torch.isin(t[:, 4].long(), known).sum() for t in targets)),
                           "unknown_objects": int(sum((~torch.isin(t[:, 4].long(), known)).sum() for t in targets))}
    for name, model in models.items():  # a few models
        threshold = float(model.score_threshold if score_threshold is None else score_threshold)
        kinds, scorers, statistics = score_plan(model, wanted, train_set, known, batch_size,
                                                 kappa=(concentrations or {}).get(name), knn_k=knn_k,
                                                 gallery_images=gallery_images)
        per_image = scored_detections(model, scorers, dataset, indices, known, threshold, batch_size,
                                       energy="energy" in kinds)
        kind_of = np.concatenate([object_kind(d["boxes"], t, known, iou) for d, t in zip(per_image, targets)]) \
            if per_image else np.zeros(0, np.int64)
        metrics, score_arrays = _score_metrics(per_image, kinds, kind_of, precision)
        metrics["primary_score"] = primary = "cosine" if "cosine" in kinds else "probability"
        metrics["wilderness_impact"] = _wilderness(per_image, targets, closed, known, iou)
        metrics["A-OSE"] = absolute_open_set_error(per_image, targets, unknown_labels, iou=iou)
        metrics["A-OSE_flagged"] = absolute_open_set_error(_flagged(per_image, primary, metrics[primary]["threshold"]),
                                                           targets, unknown_labels, iou=iou)
        if scores is not None:
            for kind in kinds:  # a few scores
                metrics[kind] |= _flagged_metrics(per_image, kind, metrics[kind]["threshold"], targets, closed, known,
                                                  unknown_labels, iou)
            metrics |= statistics | {"skipped": {k: "no embedding space" for k in wanted if k not in kinds}}
        metrics |= {"known_detections": int((kind_of == 0).sum()), "unknown_detections": int((kind_of == 1).sum())}
        out["models"][name], out["scores"][name] = metrics, score_arrays
    return out


def _score_metrics(per_image: Sequence[Mapping[str, Tensor]], kinds: Sequence[str], kind_of: np.ndarray,
                   precision: float) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Per score kind: AUROC, ROC curve and the operating point at ``precision`` known precision
    (NaN without both known and unknown detections), and the known and unknown score arrays."""
    metrics, scores = {}, {}
    for kind in kinds:
        values = torch.cat([d[kind] for d in per_image]).numpy() if per_image else np.zeros(0)
        k_scores, u_scores = values[kind_of == 0], values[kind_of == 1]
        scores[kind] = {"known": k_scores, "unknown": u_scores}
        if k_scores.size and u_scores.size:
            at = unknown_recall_at_known_precision(k_scores, u_scores, precision)
            metrics[kind] = {"auroc": auroc(k_scores, u_scores), "roc": roc_curve(k_scores, u_scores),
                             "unknown_recall": at["unknown_recall"], "known_recall": at["known_recall"],
                             "threshold": at["threshold"]}
        else:
            metrics[kind] = {"auroc": math.nan, "unknown_recall": math.nan, "known_recall": math.nan,
                             "threshold": math.nan}
    return metrics, scores


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
                     iou: float) -> dict[str, Any]:
    """WI and A-OSE of the detections that ``score`` keeps as known at ``threshold`` (the flagged ones
    leave): ``wilderness_impact_flagged``, ``A-OSE_flagged``."""
    kept = _flagged(per_image, score, threshold, drop=True)
    return {"wilderness_impact_flagged": _wilderness(kept, targets, closed, known, iou),
            "A-OSE_flagged": absolute_open_set_error(kept, targets, unknown_labels, iou=iou)}


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


def open_set_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`open_set_evaluation` without curves and score arrays (JSON-able)."""
    models = {name: {key: ({k: v for k, v in value.items() if k != "roc"} if isinstance(value, Mapping) else value)
                     for key, value in metrics.items()}
              for name, metrics in result["models"].items()}
    return {key: value for key, value in result.items() if key not in ("models", "scores")} | {"models": models}


# ---------------------------------------------------------------------------- over base seeds
#: The numbers :func:`pool_open_set` gives an interval of: per score, and per model (without a flag).
POOLED_SCORE_METRICS = ("auroc", "unknown_recall", "known_recall", "wilderness_impact_flagged", "A-OSE_flagged")
POOLED_MODEL_METRICS = ("wilderness_impact", "A-OSE", "known_detections", "unknown_detections")


def open_set_over_seeds(models: Mapping[int, Mapping[str, nn.Module]], dataset: CocoDetection,
                        known_names: Sequence[str], *, concentrations: Mapping[int, Mapping[str, Any]] | None = None,
                        **options: Any) -> dict[int, dict[str, Any]]:
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


def pool_open_set(results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and 95 % t-interval over base seeds (:func:`dlde.analysis.stats.t_interval`) of every number
    of :func:`open_set_over_seeds` (or of the :func:`open_set_summary` of each seed).

    Each base seed is one independent training of every head, so its AUROC, unknown recall, WI and
    A-OSE are one draw each: the interval has ``n = len(results)`` (no k-shot draws here).

    Returns:
        ``base_seeds``; ``images``, ``known_objects``, ``unknown_objects`` (those of the first seed:
        the same images for every seed); ``models``: name -> ``scores`` (score -> metric -> interval
        for :data:`POOLED_SCORE_METRICS`, the scores in :data:`SCORES` order) and an interval for
        each of :data:`POOLED_MODEL_METRICS` (WI and A-OSE without a flag); ``by_seed``: base seed ->
        its :func:`open_set_summary`.
    """
    if not results:
        raise ValueError("pool_open_set needs the results of at least one base seed")
    per_seed = list(results.values())
    first = per_seed[0]
    models: dict[str, Any] = {}
    for name in first["models"]:  # a few heads
        seen = [r["models"][name] for r in per_seed if name in r["models"]]
        kinds = [k for k in SCORES if any(isinstance(m.get(k), Mapping) for m in seen)]
        models[name] = {"scores": {kind: {metric: t_interval([m.get(kind, {}).get(metric) for m in seen])
                                          for metric in POOLED_SCORE_METRICS} for kind in kinds}}
        models[name] |= {metric: t_interval([m.get(metric) for m in seen]) for metric in POOLED_MODEL_METRICS}
    return {"base_seeds": [int(s) for s in results], "images": first["images"],
            "known_objects": first["known_objects"], "unknown_objects": first["unknown_objects"], "models": models,
            "by_seed": {int(s): open_set_summary(r) for s, r in results.items()}}
