"""What a notebook's run shows, in a sentence or two under each figure, built from the numbers the
notebook has just computed (so the sentences stay true when the notebook is rerun on another run).

One function per figure of notebooks ``01_train`` to ``06_open_set``; each takes what the notebook
already holds (metrics, arrays, protocol results) and returns plain text, which the notebook prints.
Nothing here draws or trains; numbers come from :mod:`dlde.analysis` (the angle between two means is
:func:`~dlde.analysis.sweep_stats.min_angle_deg`, the measure of the ablations' collapse).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dlde.analysis.embeddings import angle_to_final, angular_steps, cosine_margins, cosine_matrix
from dlde.analysis.sweep_stats import min_angle_deg
from dlde.model.anchors import pairwise_iou
from dlde.tables import interval_cell

__all__ = ["COLLAPSED_DEG", "calibration_finding", "concentration_finding", "detections_finding", "drift_finding",
           "embedding_angles_finding", "forgetting_finding", "imprinted_means_finding", "inference_finding",
           "margins_finding", "mean_angles_finding", "means_path_finding", "nearest_mean_finding",
           "novel_ap_finding", "novel_detections_finding", "open_set_finding", "per_class_finding",
           "retrieval_finding", "score_histograms_finding", "training_finding"]

#: Two class means closer than this many degrees have collapsed onto each other: the collapsed arms of
#: the ``means_lr`` ablation (``means_lr`` >= 0.03) end at 1-2°, the default 0.003 near 50°.
COLLAPSED_DEG = 5.0


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(float(value)) else "n/a"


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


# ------------------------------------------------------------------------------------ 01_train
def training_finding(metrics: Sequence[Mapping[str, Any]]) -> str:
    """The training curves: validation AP after the first and the last epoch (and the best one when
    it is not the last), and how the training and validation losses moved.

    Args:
        metrics: one dict per epoch, as in ``metrics.jsonl`` (``epoch``, ``AP``, ``train_loss``, ``val_loss``).
    """
    if not metrics:
        return "No epoch finished: nothing to show."
    first, last = metrics[0], metrics[-1]
    text = (f"Over {len(metrics)} epochs the validation AP went from {_number(first.get('AP'))} after epoch "
            f"{first['epoch']} to {_number(last.get('AP'))} after epoch {last['epoch']}")
    scored = [row for row in metrics if _finite(row.get("AP"))]
    if scored:
        best = max(scored, key=lambda row: row["AP"])
        if best is not last and best["AP"] > (last.get("AP") or -1.0):
            text += f" (best {_number(best['AP'])} after epoch {best['epoch']})"
    text += (f"; the training loss fell from {_number(first['train_loss'])} to {_number(last['train_loss'])} and the "
             f"validation loss from {_number(first['val_loss'])} to {_number(last['val_loss'])}.")
    if len(metrics) > 1 and _finite(last["val_loss"]) and last["val_loss"] > min(r["val_loss"] for r in metrics):
        low = min(metrics, key=lambda row: row["val_loss"])
        text += f" The validation loss was lowest after epoch {low['epoch']} ({_number(low['val_loss'])})."
    return text


def per_class_finding(per_class_ap: Mapping[str, float]) -> str:
    """AP per class: the weakest and the strongest class, and the classes a detector missed entirely."""
    values = {name: float(ap) for name, ap in per_class_ap.items() if _finite(ap)}
    if not values:
        return "No class has an AP yet (no detection matched an object)."
    ranked = sorted(values, key=values.get)
    low, high = ranked[0], ranked[-1]
    text = (f"Per-class AP after the last epoch ranges from {values[low]:.3f} (class '{low}') to {values[high]:.3f} "
            f"(class '{high}'), mean {np.mean(list(values.values())):.3f} over {len(values)} classes")
    zero = [name for name in ranked if values[name] == 0.0]
    return text + (f"; {len(zero)} of them at AP 0." if zero else ".")


def calibration_finding(calibration: Mapping[str, Any]) -> str:
    """The reliability diagram: whether the scores promise more (over-confident) or less than the
    fraction of detections that are right, and the detections scoring at least 0.5.

    Args:
        calibration: :func:`dlde.analysis.calibration.detection_calibration`'s result.
    """
    scores = np.asarray(calibration["scores"], dtype=np.float64)
    correct = np.asarray(calibration["correct"], dtype=bool)
    if not len(scores):
        return "No detection on the validation set: nothing to calibrate."
    gap = float(scores.mean() - correct.mean())
    kind = "over-confident" if gap > 0 else "under-confident"
    confident = scores >= 0.5
    text = (f"{len(scores)} detections, {correct.mean():.1%} of them right at IoU ≥ 0.5, with a mean score of "
            f"{scores.mean():.3f}: the scores are {kind} by {abs(gap):.3f} on average (ECE "
            f"{_number(calibration['ece'])}).")
    if confident.any():
        text += (f" Of the {int(confident.sum())} scoring at least 0.5, {correct[confident].mean():.1%} are right "
                 f"(mean score {scores[confident].mean():.3f}).")
    return text


def _covered(boxes: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> int:
    """Ground-truth boxes ``gt (M, 4)`` overlapped by some box of ``boxes (N, 4)`` at ``iou`` or more."""
    if not len(boxes) or not len(gt):
        return 0
    boxes, gt = (torch.as_tensor(np.asarray(b, dtype=np.float64)) for b in (boxes, gt))
    return int((pairwise_iou(boxes, gt[None])[0] >= iou).any(dim=0).sum())  # (N, M) overlaps


def detections_finding(samples: Sequence[Mapping[str, Any]], score_threshold: float) -> str:
    """The detections drawn on validation images: boxes drawn, and the objects a box covers.

    Args:
        samples: :func:`dlde.inference.detect.detection_samples` (``boxes``, ``gt_boxes`` per image).
        score_threshold: the smallest score drawn.
    """
    drawn = sum(len(s["boxes"]) for s in samples)
    objects = sum(len(s["gt_boxes"]) for s in samples)
    found = sum(_covered(s["boxes"], s["gt_boxes"]) for s in samples)
    return (f"{_count(len(samples), 'image')} with {_count(objects, 'object')}: "
            f"{_count(drawn, 'box', 'boxes')} scoring at least {score_threshold:g}, and {found} of the {objects} "
            "objects overlapped by one at IoU ≥ 0.5.")


# -------------------------------------------------------------------------------- 02_mean_drift
def drift_finding(means_history: np.ndarray, class_names: Sequence[str]) -> str:
    """The angular drift: how far the means turned in the first and the last epoch, and which mean
    travelled furthest.

    Args:
        means_history: ``(E + 1, C, d)`` class means before training and after every epoch.
        class_names: C names.
    """
    steps = angular_steps(means_history)  # (E, C)
    if not len(steps) or not np.isfinite(steps).any():
        return "The means have no history of steps (no epoch tracked them)."
    total = np.nansum(steps, axis=0)
    furthest = int(np.nanargmax(total))
    start = angle_to_final(means_history)[0]
    return (f"The means turned {np.nanmean(steps[0]):.1f}° on average in epoch 1 and {np.nanmean(steps[-1]):.2f}° "
            f"in epoch {len(steps)}, the last; class '{class_names[furthest]}' travelled furthest "
            f"({total[furthest]:.1f}° in all), and the final means lie {np.nanmean(start):.1f}° on average from "
            "where they started.")


def mean_angles_finding(means_history: np.ndarray, class_names: Sequence[str]) -> str:
    """The cosines between the means: the smallest angle between two class means before training, at
    its lowest and after the last epoch, with the pair of classes, and whether two means collapsed
    (closer than :data:`COLLAPSED_DEG`).

    Args:
        means_history: ``(E + 1, C, d)`` class means before training and after every epoch.
        class_names: C names.
    """
    history = np.asarray(means_history, dtype=np.float64)
    angles = np.array([min_angle_deg(means) for means in history])  # (E + 1,) smallest angle per epoch
    if not np.isfinite(angles).any():
        return "Fewer than two class means have a direction: no angle between them."
    last = cosine_matrix(history[-1])
    np.fill_diagonal(last, np.nan)
    i, j = np.unravel_index(np.nanargmax(last), last.shape)
    epochs = len(history) - 1
    lowest = int(np.nanargmin(angles))
    text = (f"The smallest angle between two class means went from {angles[0]:.1f}° before training to "
            f"{angles[-1]:.1f}° after epoch {epochs} (classes '{class_names[i]}' and '{class_names[j]}')")
    if 0 < lowest < epochs and angles[lowest] < min(angles[0], angles[-1]):
        text += f"; its lowest was {angles[lowest]:.1f}° after epoch {lowest}"
    if angles[-1] < COLLAPSED_DEG:
        return text + (f". Two means are closer than {COLLAPSED_DEG:g}°: they have collapsed onto each other, the "
                       "failure the `means_lr` ablation found at large steps.")
    if angles[lowest] < COLLAPSED_DEG:
        return text + (f". Two means collapsed onto each other (closer than {COLLAPSED_DEG:g}°) after epoch {lowest} "
                       "and came apart again by the end.")
    return text + (". No two means collapsed: means that collapse onto each other (the failure the `means_lr` "
                   "ablation found at large steps) would show here as angles near 0°.")


def concentration_finding(kappa_history: np.ndarray, class_names: Sequence[str]) -> str:
    """The concentration κ̂ per epoch: how it changed from the first to the last epoch, and the
    loosest and tightest class at the end.

    Args:
        kappa_history: ``(E + 1, C)`` κ̂ per epoch (row 0 before training; NaN where not tracked).
        class_names: C names.
    """
    kappa = np.asarray(kappa_history, dtype=np.float64)
    rows = [e for e in range(len(kappa)) if np.isfinite(kappa[e]).any()]
    if not rows:
        return "No epoch tracked embeddings: no concentration."
    first, last = rows[0], rows[-1]
    final = kappa[last]
    loose, tight = int(np.nanargmin(final)), int(np.nanargmax(final))
    return (f"The mean κ̂ over classes went from {np.nanmean(kappa[first]):.1f} (epoch {first}) to "
            f"{np.nanmean(final):.1f} (epoch {last}); at the end class '{class_names[loose]}' is the loosest "
            f"({final[loose]:.1f}) and class '{class_names[tight]}' the tightest ({final[tight]:.1f}).")


# -------------------------------------------------------------------------------- 03_embeddings
def nearest_mean_finding(embeddings: np.ndarray, labels: np.ndarray, means: np.ndarray,
                         class_names: Sequence[str]) -> str:
    """What the projections should show as clusters around their stars: the share of embeddings
    whose nearest mean (by cosine, in the embedding space itself) is their own class's, and the
    class most often nearer another class's mean.

    Args:
        embeddings: ``(N, d)`` matched anchor embeddings.
        labels: ``(N,)`` their classes.
        means: ``(C, d)`` the class means.
        class_names: C names.
    """
    own, other = cosine_margins(embeddings, labels, means)
    usable = np.isfinite(own) & np.isfinite(other)
    if not usable.any():
        return "No embedding has both an own and another class mean to compare."
    labels = np.asarray(labels)[usable]
    right = own[usable] > other[usable]
    text = (f"{right.mean():.1%} of the {int(usable.sum())} embeddings are nearer (by cosine, in their "
            f"{np.asarray(embeddings).shape[1]}-dimensional space, not in the projection) to their own class mean "
            "than to any other")
    wrong = {c: float(np.mean(~right[labels == c])) for c in np.unique(labels)}
    worst = max(wrong, key=wrong.get)
    if wrong[worst] > 0:
        text += f"; class '{class_names[worst]}' strays most ({wrong[worst]:.1%} nearer another mean)"
    return text + "."


def embedding_angles_finding(embeddings: np.ndarray, labels: np.ndarray, means: np.ndarray) -> str:
    """What the sphere shows as tight or loose clusters: the median angle of an embedding to its own
    mean and to the nearest other one, against the smallest angle between two means."""
    own, other = cosine_margins(embeddings, labels, means)
    degrees = lambda c: float(np.degrees(np.arccos(np.nanmedian(np.clip(c, -1.0, 1.0)))))  # noqa: E731
    if not np.isfinite(own).any() or not np.isfinite(other).any():
        return "No embedding has both an own and another class mean to compare."
    return (f"The median embedding lies {degrees(own):.1f}° from its own class mean and {degrees(other):.1f}° from "
            f"the nearest other one; the two closest means are {min_angle_deg(means):.1f}° apart.")


def means_path_finding(means_history: np.ndarray) -> str:
    """The means through training: how far they ended from their start and how much of their path
    the first half of the epochs covered."""
    steps = angular_steps(means_history)  # (E, C)
    if not len(steps) or not np.isfinite(steps).any():
        return "The means have no history of steps."
    path = np.nansum(steps, axis=1)  # (E,) summed over classes
    half = (len(steps) + 1) // 2
    start = angle_to_final(means_history)[0]
    return (f"Over {len(steps)} epochs each mean travelled {np.nansum(steps) / steps.shape[1]:.1f}° on average "
            f"and ended {np.nanmean(start):.1f}° from its start; the first {_count(half, 'epoch')} covered "
            f"{path[:half].sum() / path.sum():.0%} of the way.")


def margins_finding(own: np.ndarray, nearest_other: np.ndarray) -> str:
    """The cosine margins: the mean cosines to the own and the nearest other mean, and how many
    embeddings sit near the boundary (margin below 0.1)."""
    own, other = np.asarray(own, dtype=np.float64), np.asarray(nearest_other, dtype=np.float64)
    both = np.isfinite(own) & np.isfinite(other)
    if not both.any():
        return "No embedding has both an own and another class mean to compare."
    margin = own[both] - other[both]
    return (f"Mean cosine {own[both].mean():.3f} to the own class mean against {other[both].mean():.3f} to the "
            f"nearest other one; the median margin is {np.median(margin):.3f}, {np.mean(margin < 0):.1%} of the "
            f"embeddings are on the wrong side (margin < 0) and {np.mean((margin >= 0) & (margin < 0.1)):.1%} "
            "within 0.1 of the boundary.")


# -------------------------------------------------------------------------------- 04_inference
def inference_finding(numbers: Mapping[str, Any], unknown_flag: Any = None, *, demo: bool) -> str:
    """The detections of a folder: per image, the most frequent class, and what the unknown flag did.

    Args:
        numbers: :func:`dlde.pipeline.notebook.inference_results` of the detections.
        unknown_flag: the :class:`dlde.inference.unknown_flag.UnknownFlag` used, or None.
        demo: the images are the demo canvases, which hold only the run's own classes.
    """
    per_class = {name: count for name, count in numbers["detections_per_class"].items() if count}
    text = (f"{numbers['detections']} detections in {numbers['images']} images "
            f"({numbers['mean_detections_per_image']:.1f} per image)")
    if per_class:
        top = max(per_class, key=per_class.get)
        text += f"; the most frequent class is '{top}' ({per_class[top]})"
    if unknown_flag is None:
        return text + "; no unknown flag."
    flag = unknown_flag.summary()
    text += f"; {numbers['unknown_detections']} flagged unknown by the '{flag['score']}' score (above " \
            f"{_number(flag['threshold'])}"
    if flag.get("known_recall") is not None:
        text += f", set to keep {flag['known_recall']:.0%} of the run's validation detections of known objects"
    text += ")"
    if demo:
        text += ". The demo canvases hold only the run's own classes, so every flag here is a false alarm"
        if flag.get("known_recall") is not None:
            text += f" (about {1 - flag['known_recall']:.0%} of the detections by construction)"
    return text + "."


# -------------------------------------------------------------------------------- 05_few_shot
def _row(summary: Sequence[Any], method: str, k: int):
    return next(s for s in summary if s.method == method and s.k == k)


def _overlaps(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    if not all(_finite(x) for x in (a.get("low"), a.get("high"), b.get("low"), b.get("high"))):
        return True  # no interval: nothing told apart
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def novel_ap_finding(summary: Sequence[Any], metric: str = "novel_AP") -> str:
    """Shots against novel AP: at the smallest and the largest k, the best method with its interval,
    the runner-up, and whether their intervals overlap (then the two are not told apart).

    Args:
        summary: :func:`dlde.protocols.fewshot.summarize` rows.
        metric: ``novel_AP`` or ``novel_AP50``.
    """
    shots = sorted({s.k for s in summary})
    if not shots:
        return "No k was run."
    parts = []
    for k in dict.fromkeys((shots[0], shots[-1])):
        rows = sorted((s for s in summary if s.k == k and _finite(s.metric(metric)["mean"])),
                      key=lambda s: -s.metric(metric)["mean"])
        if not rows:
            continue
        best = rows[0]
        part = f"at k = {k} {best.method} leads with {interval_cell(best.metric(metric))}"
        if len(rows) > 1:
            second = rows[1]
            part += (f", {'overlapping' if _overlaps(best.metric(metric), second.metric(metric)) else 'above'} "
                     f"{second.method}'s {interval_cell(second.metric(metric))}")
        parts.append(part)
    return f"{metric} (mean [95 % interval]): " + "; ".join(parts) + "."


def forgetting_finding(summary: Sequence[Any]) -> str:
    """Forgetting: at the largest k, the method whose base AP dropped most and the one it dropped least."""
    if not summary:
        return "No k was run."
    k = max(s.k for s in summary)
    rows = [s for s in summary if s.k == k and _finite(s.base_AP_drop)]
    if not rows:
        return f"No base AP after adding the novel classes at k = {k}."
    most, least = max(rows, key=lambda s: s.base_AP_drop), min(rows, key=lambda s: s.base_AP_drop)
    moved = lambda s: (f"{'fell' if s.base_AP_drop > 0 else 'rose'} from {s.base_AP_before:.3f} to "  # noqa: E731
                       f"{interval_cell(s.base_AP)}")
    if most is least:
        return f"At k = {k} the base AP of {most.method} {moved(most)}."
    return (f"At k = {k} {most.method} forgot most: its base AP {moved(most)}; {least.method} forgot least: its "
            f"base AP {moved(least)}.")


def novel_detections_finding(samples: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                             novel_names: Sequence[str], score_threshold: float) -> str:
    """The detections of a model with imprinted classes: how many boxes went to each novel class and
    how many to the base classes."""
    labels = np.concatenate([np.asarray(s["labels"], dtype=np.int64) for s in samples]) if samples else \
        np.zeros(0, np.int64)
    names = [class_names[int(label)] for label in labels if 0 <= label < len(class_names)]
    novel = {name: names.count(name) for name in novel_names}
    objects = sum(len(s["gt_boxes"]) for s in samples)
    return (f"{_count(len(samples), 'image')} with {_count(objects, 'object')}: {sum(novel.values())} of the boxes "
            f"scoring at least {score_threshold:g} went to the imprinted classes ("
            + ", ".join(f"{name}: {count}" for name, count in novel.items())
            + f") and {len(names) - sum(novel.values())} to the base classes.")


def imprinted_means_finding(model: Any, novel_names: Sequence[str]) -> str:
    """The imprinted means among the tracked ones: each novel mean's cosine to its nearest other mean.

    Args:
        model: a detector with ``class_directions()`` ``(C, d)`` and ``class_names``.
        novel_names: the imprinted classes.
    """
    class_names = list(model.class_names)
    cosines = cosine_matrix(model.class_directions().detach().cpu().double().numpy())
    np.fill_diagonal(cosines, np.nan)
    parts = []
    for name in novel_names:
        row = cosines[class_names.index(name)]
        if np.isfinite(row).any():
            nearest = int(np.nanargmax(row))
            parts.append(f"{name}: {row[nearest]:.2f} (to '{class_names[nearest]}')")
    if not parts:
        return "The imprinted classes have no mean."
    return "Cosine of each imprinted mean to its nearest other mean: " + ", ".join(parts) + "."


# -------------------------------------------------------------------------------- 06_open_set
def score_histograms_finding(result: Any, shown_scores: Sequence[str], seed: int) -> str:
    """The score histograms of one base seed: per head and shown score, the median unknown score of
    known and of unknown objects' detections, and the AUROC that separates them.

    Args:
        result: the :class:`dlde.protocols.openset.OpenSetResult` of base seed ``seed``.
        shown_scores: the scores drawn.
        seed: its base seed (named in the text).
    """
    lines = [f"Base seed {seed}: {result.known_objects} known and {result.unknown_objects} unknown objects."]
    for head, per_score in result.scores.items():
        for kind in [k for k in shown_scores if k in per_score]:
            scores = per_score[kind]
            if not len(scores.known) and not len(scores.unknown):
                lines.append(f"{head} ({kind}): no detection matched an object.")
                continue
            median = lambda x: _number(np.nanmedian(x) if len(x) else float("nan"))  # noqa: E731
            lines.append(f"{head} ({kind}): median {median(scores.unknown)} for unknown objects against "
                         f"{median(scores.known)} for known ones, AUROC "
                         f"{_number(result.models[head].scores[kind].auroc)}.")
    return "\n".join(lines)


def open_set_finding(pooled: Any) -> str:
    """Unknown scores over base seeds: each head's best score by mean AUROC, with its interval, and
    whether DLDENet's best is told apart from the other heads' best."""
    best = {}
    for head, model in pooled.models.items():
        finite = {kind: s for kind, s in model.scores.items() if _finite(s.auroc["mean"])}
        if finite:
            kind = max(finite, key=lambda name: finite[name].auroc["mean"])
            best[head] = (kind, finite[kind].auroc)
    if not best:
        return "No score separated known from unknown objects (no AUROC)."
    lines = [f"Best unknown score per head, AUROC mean [95 % interval] over {len(pooled.base_seeds)} base seeds: "
             + "; ".join(f"{head} {kind} {interval_cell(auroc)}" for head, (kind, auroc) in best.items()) + "."]
    if "dlde" in best and len(best) > 1:
        others = {head: value for head, value in best.items() if head != "dlde"}
        top = max(others, key=lambda head: others[head][1]["mean"])
        ours, theirs = best["dlde"][1], others[top][1]
        relation = ("overlap: not told apart" if _overlaps(ours, theirs)
                    else "do not overlap: DLDENet " + ("ahead" if ours["mean"] > theirs["mean"] else "behind"))
        lines.append(f"DLDENet's best and {top}'s best {relation}.")
    return " ".join(lines)


def retrieval_finding(pooled: Mapping[str, Any], examples: Mapping[str, Any] | None = None) -> str:
    """Retrieval: MAP@R per head with an embedding space, and in the example grid the share of results
    that are of the query's class.

    Args:
        pooled: head -> :class:`dlde.protocols.retrieval.PooledRetrieval`.
        examples: :func:`dlde.protocols.retrieval.retrieval_examples` of the grid drawn.
    """
    if not pooled:
        return "No head has an embedding space to retrieve by."
    text = "MAP@R, mean [95 % interval] over base seeds: " + "; ".join(
        f"{head} {interval_cell(result.map_at_r)}" for head, result in pooled.items()) + "."
    if examples is not None and len(examples["query_labels"]):
        queries = np.asarray(examples["query_labels"])[:, None]
        same = np.asarray(examples["result_labels"]) == queries
        text += f" In the grid, {int(same.sum())} of the {same.size} results share their query's class."
    return text
