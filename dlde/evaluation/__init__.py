"""Evaluation: detections of a model on a dataset scored with the COCO protocol (pycocotools), or
with LVIS's (frequency buckets, federated rules) on top of it.

This layer sits below training (the trainer evaluates every few epochs) and above the model and
the data; it imports nothing from ``dlde.train``, ``dlde.analysis`` or ``dlde.pipeline``.
"""
from .coco_eval import coco_metrics
from .lvis_eval import lvis_metrics
from .runner import DEFAULT_PAIR_THRESHOLD, dataset_metrics, evaluate, max_detections_for, to_original, uses_lvis

__all__ = [
    "DEFAULT_PAIR_THRESHOLD", "coco_metrics", "dataset_metrics", "evaluate", "lvis_metrics", "max_detections_for",
    "to_original", "uses_lvis",
]
