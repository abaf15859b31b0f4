"""Retrieval by embedding: ground-truth boxes query each other (:func:`retrieval_evaluation`).

Each box of a dataset is embedded by a detector with an embedding space and searched with the
index and metrics of :mod:`dlde.analysis.retrieval`; on the digits the gallery is the
ten-digit validation set seen by the few-shot base models (:mod:`dlde.protocols.fewshot`). Over
several base seeds (:func:`retrieval_over_seeds`) each number gets a t-interval over the seeds
(:func:`pool_retrieval`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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

__all__ = ["pool_retrieval", "retrieval_evaluation", "retrieval_examples", "retrieval_over_seeds",
           "retrieval_summary"]


@torch.no_grad()
def retrieval_evaluation(model: nn.Module, dataset: CocoDetection, *, max_images: int | None = None,
                         ks: Sequence[int] = (1, 5), backend: str = "torch", batch_size: int = 32) -> dict[str, Any]:
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
        ``MAP@R``, ``Recall@k`` (per k), ``per_class`` (dataset class name -> MAP@R, Recall@1),
        ``seconds_per_query`` and, for :func:`retrieval_examples`, ``index`` (the
        :class:`~dlde.analysis.retrieval.EmbeddingIndex`) and ``items`` ``(N, 5)``: image index, box in
        original pixels.
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
    return {"MAP@R": float(np.nanmean(ap)), **{f"Recall@{k}": recall_at_k(result_labels, labels, k) for k in ks},
            "per_class": {names[c]: {"MAP@R": v, "Recall@1": per_class(hits, labels)[c]}
                          for c, v in per_class(ap, labels).items()},
            "gallery": len(index), "seconds_per_query": seconds, "index": index, "items": items}


def retrieval_examples(dataset: CocoDetection, retrieval: Mapping[str, Any], queries: Sequence[int], k: int = 5,
                       *, pad: int = 1) -> dict[str, Any]:
    """Crops of query boxes and of their k nearest gallery boxes, for
    :func:`dlde.plots.detection_plots.plot_retrieval_grid`.

    Args:
        dataset: the dataset of :func:`retrieval_evaluation`.
        retrieval: its result (``index`` and ``items``).
        queries: gallery positions to use as queries.
        k: results per query.
        pad: pixels around each crop.
    """
    index, items = retrieval["index"], retrieval["items"]
    queries = torch.as_tensor(list(queries), dtype=torch.long)
    scores, found = index.search(index.embeddings[queries], k, exclude=queries)

    def crop(position: int) -> np.ndarray:
        image = display_image(dataset.image_path(int(items[position, 0])))
        return crop_boxes(image, items[position, 1:][None], pad=pad)[0]

    return {"query_crops": [crop(int(q)) for q in queries],
            "result_crops": [[crop(int(j)) for j in row] for row in found],
            "query_labels": index.labels[queries], "result_labels": index.labels[found], "result_scores": scores}


def retrieval_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`retrieval_evaluation` (without the index), JSON-able."""
    return {key: value for key, value in result.items() if key not in ("index", "items")}


def retrieval_over_seeds(models: Mapping[int, Mapping[str, nn.Module]], dataset: CocoDetection,
                         **options: Any) -> dict[int, dict[str, dict[str, Any]]]:
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


def pool_retrieval(results: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean and 95 % t-interval over base seeds (:func:`dlde.analysis.stats.t_interval`, ``n`` = seeds)
    of MAP@R, every Recall@k, ``seconds_per_query`` and each class's MAP@R, per model.

    Args:
        results: base seed -> name -> :func:`retrieval_evaluation` result (or its summary).

    Returns:
        name -> ``base_seeds`` (how many), ``gallery`` (of the first seed), the intervals, and
        ``per_class``: class name -> ``{"MAP@R": interval}``.
    """
    pooled: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(name for per_head in results.values() for name in per_head))
    for name in names:  # a few models
        seen = [per_head[name] for per_head in results.values() if name in per_head]
        keys = ["MAP@R"] + [key for key in seen[0] if key.startswith("Recall@")] + ["seconds_per_query"]
        classes = list(dict.fromkeys(c for r in seen for c in r["per_class"]))
        pooled[name] = {"base_seeds": len(seen), "gallery": seen[0]["gallery"],
                        **{key: t_interval([r[key] for r in seen]) for key in keys},
                        "per_class": {c: {"MAP@R": t_interval([r["per_class"].get(c, {}).get("MAP@R") for r in seen])}
                                      for c in classes}}
    return pooled
