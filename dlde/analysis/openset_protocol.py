"""Unknown objects: base models on images that also hold classes they never saw (:func:`open_set_evaluation`).

On the digits, the base models of the few-shot protocol (:mod:`dlde.analysis.fewshot`, trained
on 0-6) meet validation images that also hold 7-9; each detection is scored with the unknown
scores of :mod:`dlde.analysis.openset` and counted by its metrics. Over several base seeds
(:func:`open_set_over_seeds`) every number gets a t-interval over the seeds (:func:`pool_open_set`).
:func:`calibrate_unknown_flag` turns one score into the unknown flag of a trained run
(:class:`dlde.analysis.unknown_flag.UnknownFlag`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from dlde.data.coco import CocoDetection
from dlde.data.transforms import collate
from dlde.model.modes import evaluating
from dlde.train import TrainConfig, build_datasets

from .calibration import DEFAULT_IOU, match_detections
from .inspection import device_of
from .openset import (
    DEFAULT_KNN_K,
    DEFAULT_KNOWN_PRECISION,
    EMBEDDING_SCORES,
    SCORES,
    absolute_open_set_error,
    auroc,
    concentration_about,
    cosine_unknown_score,
    energy_unknown_score,
    exceeds,
    knn_unknown_score,
    known_recall_threshold,
    log_odds,
    probability_unknown_score,
    roc_curve,
    unknown_recall_at_known_precision,
    vmf_unknown_score,
    wilderness_impact,
)
from .retrieval import EmbeddingIndex, box_embeddings
from .stats import t_interval
from .unknown_flag import UnknownFlag

__all__ = ["POOLED_MODEL_METRICS", "POOLED_SCORE_METRICS", "SCORES", "WI_RECALL", "calibrate_unknown_flag",
           "open_set_evaluation", "open_set_over_seeds", "open_set_summary", "pool_open_set"]

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
    wanted = _check_scores(scores)
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
        kinds, scorers, statistics = _score_plan(model, wanted, train_set, known, batch_size,
                                                 kappa=(concentrations or {}).get(name), knn_k=knn_k,
                                                 gallery_images=gallery_images)
        per_image = _scored_detections(model, scorers, dataset, indices, known, threshold, batch_size,
                                       energy="energy" in kinds)
        kind_of = np.concatenate([_object_kind(d["boxes"], t, known, iou) for d, t in zip(per_image, targets)]) \
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


def _check_scores(scores: Sequence[str] | None) -> list[str]:
    """The score names asked for (the default pair for None); unknown or repeated names raise."""
    if scores is None:
        return ["probability", "cosine"]
    wanted = list(scores)
    bad = sorted(set(wanted) - set(SCORES))
    if bad or len(set(wanted)) != len(wanted) or not wanted:
        raise ValueError(f"scores must be distinct names among {', '.join(SCORES)}, got {wanted}")
    return wanted


def _score_plan(model: nn.Module, wanted: Sequence[str], train_set: CocoDetection | None, known: Tensor,
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
    embeddings, labels = _training_embeddings(model, train_set, known, batch_size, gallery_images) \
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


def _training_embeddings(model: nn.Module, train_set: CocoDetection, known: Tensor, batch_size: int,
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


def _scored_detections(model: nn.Module, scorers: Mapping[str, Callable[[Tensor], Tensor]] | None,
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


def _object_kind(boxes: Tensor, target: Tensor, known: Tensor, iou: float) -> np.ndarray:
    """``(N,)`` per detection: 0 matches a known object, 1 an unknown one, -1 nothing (IoU < ``iou``)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if len(target) == 0:
        return np.full(len(boxes), -1, np.int64)
    best, which = box_iou(boxes.float(), target[:, :4].float()).max(dim=1)  # (N,)
    is_known = torch.isin(target[which, 4].long(), known)
    return torch.where(best >= iou, (~is_known).long(), torch.full_like(which, -1)).numpy()


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
        models: base seed -> name -> base detector (e.g. :class:`dlde.pipeline.base_runs.BaseModels`).
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
    kinds, scorers, _ = _score_plan(model, _check_scores([score]), train_set, known, batch_size, kappa=kappa,
                                    knn_k=knn_k, gallery_images=max_images)
    if score not in kinds:
        raise ValueError(f"the {model.classification.name!r} head has no embedding space for the {score!r} score")
    indices = list(range(len(val_set) if max_images is None else min(max_images, len(val_set))))
    threshold = float(model.score_threshold if score_threshold is None else score_threshold)
    per_image = _scored_detections(model, scorers, val_set, indices, known, threshold, batch_size,
                                   energy=score == "energy")
    matched = [d[score][_object_kind(d["boxes"], val_set.targets(i), known, iou) == 0]
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
