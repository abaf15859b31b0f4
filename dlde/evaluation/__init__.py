"""Evaluation: detections of a model on a dataset scored with the COCO protocol (pycocotools).

This layer sits below training (the trainer evaluates every few epochs) and above the model and
the data; it imports nothing from ``dlde.train``, ``dlde.analysis`` or ``dlde.pipeline``.
"""
from .coco_eval import DEFAULT_PAIR_THRESHOLD, coco_metrics, evaluate, to_original

__all__ = ["DEFAULT_PAIR_THRESHOLD", "coco_metrics", "evaluate", "to_original"]
