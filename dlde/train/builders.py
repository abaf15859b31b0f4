"""What a :class:`~dlde.train.config.TrainConfig` builds: datasets, the detector, the optimizer and
its learning-rate schedule."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dlde.data.coco import CocoDetection
from dlde.data.transforms import DetectionTransform
from dlde.model.builders import build_detector
from dlde.model.detector import RetinaNet

from .config import TrainConfig


def default_data_root(config: TrainConfig, base: str | Path = "data") -> Path | None:
    """The folder under ``base`` that :func:`build_datasets` generates the dataset of ``config`` in
    when ``data_root`` is None: ``<base>/<dataset>-<hash of its settings>`` (the dataset's
    ``default_root``); None for a dataset read where it lies ('coco')."""
    return config.dataset_settings().default_root(base)


def build_datasets(config: TrainConfig) -> tuple[CocoDetection, CocoDetection]:
    """Training and validation datasets of a config: the files of the dataset registered as
    ``config.dataset`` (:data:`dlde.data.registry.DATASETS`) with ``config.dataset_options``,
    generated under ``data_root`` (default: :func:`default_data_root`) if needed."""
    settings = config.dataset_settings()
    files = settings.build(config.data_root or settings.default_root("data"))
    divisor = 2 ** max(config.fpn_levels)
    train_tf = DetectionTransform(min_size=config.min_size, max_size=config.max_size,
                                  flip_prob=config.flip_prob, size_divisor=divisor)
    val_tf = DetectionTransform(min_size=config.min_size, max_size=config.max_size, size_divisor=divisor)
    train = CocoDetection(*files.split("train"), transform=train_tf)
    val = CocoDetection(*files.split("val"), transform=val_tf)
    if train.category_ids != val.category_ids:
        raise ValueError(f"train and val categories differ: {train.category_ids} vs {val.category_ids}")
    return train, val


def build_model(config: TrainConfig, classes: int, class_names: Sequence[str] | None = None) -> RetinaNet:
    """The detector of a config: the head registered as ``config.model`` (:data:`dlde.model.registry.HEADS`)
    with the options of ``config.head_options`` it declares, and the dataset's class names (kept in
    its checkpoints)."""
    anchors = {key: list(value) for key, value in (("sizes", config.anchor_sizes), ("scales", config.anchor_scales),
                                                   ("ratios", config.anchor_ratios)) if value is not None}
    return build_detector(
        config.model, classes, head_options=config.own_head_options(), resnet=config.resnet,
        pretrained=config.pretrained, fpn_levels=list(config.fpn_levels), anchors=anchors or None,
        features={"pyramid": config.pyramid_channels, "regression": config.head_channels,
                  "classification": config.head_channels},
        head_convs=config.head_convs, group_norm=config.group_norm, box_loss=config.box_loss,
        classification_loss=config.classification_loss, efl_scale=config.efl_scale,
        assignation_thresholds={"object": config.object_iou, "background": config.background_iou},
        class_names=class_names)


def build_optimizer(config: TrainConfig, parameters: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9, over ``parameters`` at ``config.lr``."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of :func:`lr_lambda` over ``total_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_lambda(step, total_steps, config))


def lr_lambda(step: int, total: int, config: TrainConfig) -> float:
    """Learning-rate factor at optimizer step ``step`` of ``total``: linear warm-up, then the schedule."""
    warmup = int(config.warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "step":
        return 0.1 ** sum(progress >= m for m in config.step_milestones)
    return 1.0
