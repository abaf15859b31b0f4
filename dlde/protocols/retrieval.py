"""Retrieval by embedding: ground-truth boxes query each other (:func:`retrieval_evaluation`).

Each box of a dataset is embedded by a detector with an embedding space and searched with the
index and metrics of :mod:`dlde.analysis.retrieval`; on the digits the gallery is the
ten-digit validation set seen by the few-shot base models (:mod:`dlde.protocols.fewshot`). Over
several base seeds (:func:`retrieval_over_seeds`) each number gets a t-interval over the seeds
(:func:`pool_retrieval`). Results are typed (:class:`RetrievalResult`, :class:`PooledRetrieval`);
``to_dict`` gives their JSON (the keys ``MAP@R``, ``Recall@k``, ...) and ``from_dict`` reads it back.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dlde.analysis.inspection import device_of
from dlde.analysis.retrieval import EmbeddingIndex, box_embeddings, crop_boxes, map_at_r, per_class, recall_at_k
from dlde.analysis.stats import t_interval
from dlde.data.coco import CocoDetection
from dlde.data.transforms import collate
from dlde.inference.detect import display_image
from dlde.model.modes import evaluating

__all__ = ["ClassRetrieval", "PooledRetrieval", "RetrievalResult", "pool_retrieval", "retrieval_evaluation",
           "retrieval_examples", "retrieval_over_seeds"]

Interval = dict[str, float]  # a t-interval: mean, sd, low, high, n (dlde.analysis.stats.t_interval)


@dataclass(frozen=True)
class ClassRetrieval:
    """One class's queries: MAP@R and Recall@1 (NaN: a class with a single box)."""

    map_at_r: float
    recall_at_1: float


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval by one model over the ground-truth boxes of a dataset (:func:`retrieval_evaluation`).

    Attributes:
        map_at_r: MAP@R over every query.
        recall: k -> Recall@k.
        per_class: dataset class name -> its :class:`ClassRetrieval`.
        gallery: boxes in the gallery (each queries all the others).
        seconds_per_query: search time per query on this machine.
        index: the gallery's :class:`~dlde.analysis.retrieval.EmbeddingIndex` (None once read from JSON).
        items: ``(N, 5)`` per gallery box its image index and box in original pixels (None from JSON).
    """

    map_at_r: float
    recall: dict[int, float]
    per_class: dict[str, ClassRetrieval]
    gallery: int
    seconds_per_query: float
    index: EmbeddingIndex | None = field(default=None, repr=False, compare=False)
    items: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as JSON keys (``MAP@R``, ``Recall@k``, ``per_class``, ``gallery``,
        ``seconds_per_query``), without the index."""
        return {"MAP@R": self.map_at_r, **{f"Recall@{k}": v for k, v in self.recall.items()},
                "per_class": {c: {"MAP@R": r.map_at_r, "Recall@1": r.recall_at_1} for c, r in self.per_class.items()},
                "gallery": self.gallery, "seconds_per_query": self.seconds_per_query}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrievalResult:
        """A result back from :meth:`to_dict` (its JSON)."""
        return cls(data["MAP@R"], {int(key.split("@")[1]): value for key, value in data.items()
                                   if key.startswith("Recall@")},
                   {c: ClassRetrieval(r["MAP@R"], r["Recall@1"]) for c, r in data["per_class"].items()},
                   data["gallery"], data["seconds_per_query"])


@dataclass(frozen=True)
class PooledRetrieval:
    """One model's retrieval over base seeds (:func:`pool_retrieval`): every number a t-interval over
    the seeds, the gallery of the first seed; per class the interval of its MAP@R."""

    base_seeds: int
    gallery: int
    map_at_r: Interval
    recall: dict[int, Interval]
    seconds_per_query: Interval
    per_class: dict[str, Interval]

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`RetrievalResult.to_dict`, every number an interval, and ``base_seeds`` first."""
        return {"base_seeds": self.base_seeds, "gallery": self.gallery, "MAP@R": self.map_at_r,
                **{f"Recall@{k}": v for k, v in self.recall.items()}, "seconds_per_query": self.seconds_per_query,
                "per_class": {c: {"MAP@R": v} for c, v in self.per_class.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PooledRetrieval:
        """A pooled result back from :meth:`to_dict` (its JSON)."""
        return cls(data["base_seeds"], data["gallery"], data["MAP@R"],
                   {int(key.split("@")[1]): value for key, value in data.items() if key.startswith("Recall@")},
                   data["seconds_per_query"], {c: v["MAP@R"] for c, v in data["per_class"].items()})


@torch.no_grad()
def retrieval_evaluation(model: nn.Module, dataset: CocoDetection, *, max_images: int | None = None,
                         ks: Sequence[int] = (1, 5), backend: str = "torch", batch_size: int = 32) -> RetrievalResult:
    """Retrieval by embedding over the ground-truth boxes of ``dataset`` (leave-one-out).

    Each box is embedded as the normalized sum of its matched anchors
    (:func:`dlde.analysis.retrieval.box_embeddings`); every box queries the gallery of all the others.

    Args:
        model: a detector with an embedding space.
        dataset: the gallery images (their ground-truth boxes and labels).
        max_images: first images only (None: all).
        ks: the k of Recall@k.
        backend: :class:`dlde.analysis.retrieval.EmbeddingIndex` backend.
        batch_size: images per forward pass.

    Returns:
        MAP@R, Recall@k per k, per class MAP@R and Recall@1, the gallery's size, the seconds per
        query and, for :func:`retrieval_examples`, the index and the gallery's boxes.
    """
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    device = device_of(model)
    embeddings, items, labels = [], [], []
    with evaluating(model):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images, annotations = collate([dataset[i] for i in chunk])
            boxes = [a[a[:, 4] >= 0, :4] for a in annotations]
            for i, a, e in zip(chunk, annotations, box_embeddings(model, images.to(device), boxes)):
                embeddings.append(e.cpu())
                labels.append(a[a[:, 4] >= 0, 4].long())
                original = dataset.targets(i)
                items.append(torch.cat([torch.full((len(original), 1), float(i)), original[:, :4]], dim=1))
    embeddings, labels, items = torch.cat(embeddings), torch.cat(labels), torch.cat(items)
    usable = embeddings.norm(dim=1) > 0
    embeddings, labels, items = embeddings[usable], labels[usable], items[usable]
    index = EmbeddingIndex(embeddings, labels, backend=backend)
    depth = min(len(index) - 1, int(torch.bincount(labels).max()))
    started = time.perf_counter()
    _, found = index.search(embeddings, max(depth, max(ks)), exclude=torch.arange(len(index)))
    seconds = (time.perf_counter() - started) / len(index)
    result_labels = labels[found]
    ap = map_at_r(result_labels, labels, labels, queries_in_gallery=True, average=False)
    hits = recall_at_k(result_labels, labels, 1, average=False)
    names = dataset.class_names
    return RetrievalResult(float(np.nanmean(ap)), {k: recall_at_k(result_labels, labels, k) for k in ks},
                           {names[c]: ClassRetrieval(v, per_class(hits, labels)[c])
                            for c, v in per_class(ap, labels).items()},
                           len(index), seconds, index, items)


def retrieval_examples(dataset: CocoDetection, retrieval: RetrievalResult, queries: Sequence[int], k: int = 5,
                       *, pad: int = 1) -> dict[str, Any]:
    """Crops of query boxes and of their k nearest gallery boxes, for
    :func:`dlde.plots.detection_plots.plot_retrieval_grid`.

    Args:
        dataset: the dataset of :func:`retrieval_evaluation`.
        retrieval: its result (its index and gallery boxes).
        queries: gallery positions to use as queries.
        k: results per query.
        pad: pixels around each crop.
    """
    index, items = retrieval.index, retrieval.items
    queries = torch.as_tensor(list(queries), dtype=torch.long)
    scores, found = index.search(index.embeddings[queries], k, exclude=queries)

    def crop(position: int) -> np.ndarray:
        image = display_image(dataset.image_path(int(items[position, 0])))
        return crop_boxes(image, items[position, 1:][None], pad=pad)[0]

    return {"query_crops": [crop(int(q)) for q in queries],
            "result_crops": [[crop(int(j)) for j in row] for row in found],
            "query_labels": index.labels[queries], "result_labels": index.labels[found], "result_scores": scores}


def retrieval_over_seeds(models: Mapping[int, Mapping[str, nn.Module]], dataset: CocoDetection,
                         **options: Any) -> dict[int, dict[str, RetrievalResult]]:
    """:func:`retrieval_evaluation` of every base model with an embedding space, per base seed.

    Args:
        models: base seed -> name -> detector (heads without class directions are left out).
        dataset: the gallery images.
        **options: further arguments of :func:`retrieval_evaluation` (``max_images``, ``ks``, ...).

    Returns:
        base seed -> name -> its result.
    """
    return {seed: {name: retrieval_evaluation(model, dataset, **options) for name, model in per_head.items()
                   if model.class_directions() is not None} for seed, per_head in models.items()}


def pool_retrieval(results: Mapping[int, Mapping[str, RetrievalResult]]) -> dict[str, PooledRetrieval]:
    """Mean and 95 % t-interval over base seeds (:func:`dlde.analysis.stats.t_interval`, ``n`` = seeds)
    of MAP@R, every Recall@k, the seconds per query and each class's MAP@R, per model.

    Args:
        results: base seed -> name -> :func:`retrieval_evaluation` result.

    Returns:
        name -> its :class:`PooledRetrieval` (the gallery of its first seed).
    """
    pooled: dict[str, PooledRetrieval] = {}
    names = list(dict.fromkeys(name for per_head in results.values() for name in per_head))
    for name in names:  # a few models
        seen = [per_head[name] for per_head in results.values() if name in per_head]
        classes = list(dict.fromkeys(c for r in seen for c in r.per_class))
        pooled[name] = PooledRetrieval(
            len(seen), seen[0].gallery, t_interval([r.map_at_r for r in seen]),
            {k: t_interval([r.recall[k] for r in seen]) for k in seen[0].recall},
            t_interval([r.seconds_per_query for r in seen]),
            {c: t_interval([r.per_class[c].map_at_r if c in r.per_class else None for r in seen]) for c in classes})
    return pooled
