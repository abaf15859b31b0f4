"""Training: one entry point for notebooks (:func:`train`) and the shell (``python -m dlde.train``).

A run folder holds everything a run produces, written as it goes so nothing is lost on a crash:

* ``config.json``: the :class:`TrainConfig` and the dataset's class names and category ids;
* ``metrics.jsonl``: one JSON object per epoch (losses, learning rate, COCO AP, time);
* ``means_history.npy``: ``(epochs + 1, C, d)`` class means, epoch 0 = before training (DLDENet);
* ``kappa_history.npy``: ``(epochs + 1, C)`` vMF concentration of the tracked embeddings (DLDENet);
* ``checkpoint.pt``: model, optimizer, schedule and RNG state after the last finished epoch,
  written atomically; loads with ``torch.load(..., weights_only=True)`` and with
  ``DLDENetWithTrackedMeans.from_checkpoint`` / ``RetinaNet.from_checkpoint``.

Under ``torchrun --nproc_per_node=N -m dlde.train ...`` the same entry point trains with
``DistributedDataParallel`` (see :mod:`dlde.train.distributed`): ``batch_size`` is the batch of one
process (the global batch is N times larger), global batch k holds the images of batch k of a
one-process run with that global batch, the tracked means and the loss normalizer are reduced over
processes, evaluation is sharded, and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dlde.data.coco import CocoDetection
from dlde.data.digits import default_digits_root, make_digits_dataset
from dlde.data.transforms import DetectionTransform, collate
from dlde.evaluation import DEFAULT_PAIR_THRESHOLD, coco_metrics, evaluate, to_original
from dlde.model.anchors import DEFAULT_THRESHOLDS
from dlde.model.checkpoints import atomic_save, check_finite_state, load_checkpoint
from dlde.model.detector import DEFAULT_FEATURES, RetinaNet
from dlde.model.directional import DirectionalClassification
from dlde.model.losses import BOX_LOSSES
from dlde.model.means import MEANS_INITS, MEANS_UPDATES
from dlde.model.modes import evaluating
from dlde.model.prototypes import CosinePrototypeClassification
from dlde.model.registry import HEADS, build_detector, head_option_names

from . import distributed

SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("adamw", "sgd")
DATASETS = ("digits", "coco")
NONFINITE = ("raise", "skip")
#: Mixed precision: ``'bf16'`` (CPU or GPU) or ``'fp16'`` (CUDA, with a gradient scaler).
AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Fields whose allowed values are listed by ``--help`` and checked by the config.
CHOICES = {"model": tuple(sorted(HEADS)), "dataset": DATASETS, "schedule": SCHEDULES, "optimizer": OPTIMIZERS,
           "means_update": MEANS_UPDATES, "means_init": MEANS_INITS, "box_loss": BOX_LOSSES,
           "nonfinite": NONFINITE, "amp": tuple(AMP_MODES)}
#: Fields that change how a run is shown or stored, never its numbers: free to differ on resume.
BOOKKEEPING = ("run_dir", "resume", "overwrite", "progress", "allow_changed", "device", "num_workers",
               "eval_batch_size", "dist_timeout_s")
_DETECTOR = inspect.signature(RetinaNet.__init__).parameters
_DIRECTIONAL = DirectionalClassification.Options
_PROTOTYPES = CosinePrototypeClassification.Options
_EVALUATE = inspect.signature(evaluate).parameters


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Unknown keys fail loudly (:meth:`from_dict`).

    Data: ``dataset='digits'`` generates the embedded digits dataset under ``data_root`` (see
    :func:`dlde.make_digits_dataset`, parameters ``digits_*``); ``dataset='coco'`` reads
    ``train_images``/``train_annotations`` and ``val_images``/``val_annotations``.
    """

    run_dir: str = "runs/default"
    # data
    dataset: str = "digits"
    data_root: str | None = None  # digits: None derives data/digits-<hash of the digits_* settings>
    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    digits_seed: int = 0
    digits_canvas_size: int = 128
    digits_size: tuple[int, int] = (20, 40)
    digits_per_image: tuple[int, int] = (1, 3)
    digits_train_images: int = 2000
    digits_val_images: int = 400
    digits_classes: tuple[int, ...] | None = None
    min_size: int = 128
    max_size: int = 128
    flip_prob: float = 0.0
    # model: defaults come from the components (written once there)
    model: str = "dlde"
    resnet: int = _DETECTOR["resnet"].default
    pretrained: bool = False  # the detector's default loads ImageNet weights; the trainer starts from scratch
    fpn_levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    pyramid_channels: int = DEFAULT_FEATURES["pyramid"]
    head_channels: int = DEFAULT_FEATURES["classification"]
    head_convs: int = _DETECTOR["head_convs"].default
    group_norm: bool = _DETECTOR["group_norm"].default
    anchor_sizes: tuple[float, ...] | None = None
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    embedding_size: int = _DIRECTIONAL.embedding_size
    means_update: str = _DIRECTIONAL.means_update
    means_lr: float = _DIRECTIONAL.means_lr
    means_init: str = _DIRECTIONAL.means_init
    cosine_scale: float = _PROTOTYPES.cosine_scale
    learn_scale: bool = _PROTOTYPES.learn_scale
    init_means: bool = False
    init_batches: int | None = 25
    object_iou: float = DEFAULT_THRESHOLDS["object"]
    background_iou: float = DEFAULT_THRESHOLDS["background"]
    box_loss: str = _DETECTOR["box_loss"].default
    # optimisation
    epochs: int = 8
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    schedule: str = "cosine"
    step_milestones: tuple[float, ...] = (0.67, 0.89)
    grad_clip: float | None = 10.0
    amp: str = "off"  # mixed precision: "bf16" (CPU/GPU) or "fp16" (CUDA); cosine and means stay float32
    channels_last: bool = False  # model and images in channels-last memory format (faster convolutions on GPUs)
    sync_batchnorm: bool = False  # BatchNorm over the global batch under torchrun; a no-op in one process
    nonfinite: str = "raise"  # a NaN/Inf input or loss: "raise" (stop, state intact) or "skip" the step (counted)
    # bookkeeping
    seed: int = 0
    threads: int | None = None  # intra-op CPU threads; None: torch's default on this machine (recorded)
    device: str | None = None
    num_workers: int = 0
    dist_timeout_s: float = distributed.DEFAULT_TIMEOUT_S  # torchrun: how long a collective waits for a lost rank
    eval_every: int = 1
    eval_batch_size: int = 32
    resume: bool = False
    overwrite: bool = False  # start afresh in a run folder that holds another run (its run files are replaced)
    allow_changed: tuple[str, ...] = ()  # with resume: config fields allowed to differ from the saved run
    progress: bool = True
    max_train_batches: int | None = None

    def __post_init__(self):
        if isinstance(self.amp, bool):  # records written when amp was a bool (True meant CUDA float16)
            object.__setattr__(self, "amp", "fp16" if self.amp else "off")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {getattr(self, name)!r}")
        if self.dataset == "coco" and not all((self.train_images, self.train_annotations,
                                               self.val_images, self.val_annotations)):
            raise ValueError("dataset='coco' needs train_images, train_annotations, val_images and val_annotations")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 < self.means_lr <= 1:
            raise ValueError(f"means_lr must be in (0, 1], got {self.means_lr}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
        unknown = sorted(set(self.allow_changed) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"allow_changed names unknown fields {unknown}")

    def head_options(self) -> dict[str, Any]:
        """The options of this config's head (:data:`dlde.model.registry.HEADS`) that the config sets."""
        return {name: getattr(self, name) for name in head_option_names(self.model) if hasattr(self, name)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, preset: str | None = None) -> "TrainConfig":
        """A config from a preset (default: the dataclass defaults) overridden by ``values``."""
        base = PRESETS[preset] if preset is not None else cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        return dataclasses.replace(base, **values)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


#: Named presets. ``digits`` is the default of the paper figures: tuned to reach a high AP on
#: the embedded digits within minutes on a 2-core CPU (see benchmarks/digits_quality.py).
PRESETS: dict[str, TrainConfig] = {
    "digits": TrainConfig(
        run_dir="runs/digits", digits_canvas_size=64, digits_size=(12, 24),
        digits_per_image=(1, 3), digits_train_images=2000, digits_val_images=400, min_size=64, max_size=64,
        fpn_levels=(3, 4), pyramid_channels=64, head_channels=64, head_convs=2, group_norm=True,
        anchor_sizes=(12.0, 24.0), anchor_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), anchor_ratios=(1.0,),
        embedding_size=32, means_init="orthogonal", means_lr=0.003, epochs=16, batch_size=16, lr=2e-3,
        weight_decay=1e-4, box_loss="giou", eval_every=4),
    "tiny": TrainConfig(
        run_dir="runs/tiny", digits_canvas_size=64, digits_size=(16, 24), digits_per_image=(1, 2),
        digits_train_images=32, digits_val_images=16, min_size=64, max_size=64, fpn_levels=(3, 4),
        digits_classes=(0, 1, 2), pyramid_channels=16, head_channels=16, head_convs=1, group_norm=True,
        anchor_sizes=(16.0, 32.0),
        anchor_scales=(1.0,), anchor_ratios=(1.0,), embedding_size=8, epochs=2, batch_size=8, lr=2e-3,
        progress=False),
}


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the per-epoch metrics and the trained model."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    model: nn.Module
    class_names: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- builders
def build_datasets(config: TrainConfig) -> tuple[CocoDetection, CocoDetection]:
    """Training and validation datasets of a config (generating the digits if needed)."""
    if config.dataset == "digits":
        params = dict(seed=config.digits_seed, canvas_size=config.digits_canvas_size,
                      digit_size=config.digits_size, digits_per_image=config.digits_per_image,
                      train_images=config.digits_train_images, val_images=config.digits_val_images,
                      classes=config.digits_classes)
        paths = make_digits_dataset(config.data_root or default_digits_root("data", **params), **params)
        train_images, train_annotations = paths.train_images_dir, paths.train_annotations
        val_images, val_annotations = paths.val_images_dir, paths.val_annotations
    else:
        train_images, train_annotations = config.train_images, config.train_annotations
        val_images, val_annotations = config.val_images, config.val_annotations
    divisor = 2 ** max(config.fpn_levels)
    train_tf = DetectionTransform(min_size=config.min_size, max_size=config.max_size,
                                  flip_prob=config.flip_prob, size_divisor=divisor)
    val_tf = DetectionTransform(min_size=config.min_size, max_size=config.max_size, size_divisor=divisor)
    train = CocoDetection(train_images, train_annotations, transform=train_tf)
    val = CocoDetection(val_images, val_annotations, transform=val_tf)
    if train.category_ids != val.category_ids:
        raise ValueError(f"train and val categories differ: {train.category_ids} vs {val.category_ids}")
    return train, val


def build_model(config: TrainConfig, classes: int, class_names: Sequence[str] | None = None) -> RetinaNet:
    """The detector of a config: the head registered as ``config.model`` (:data:`dlde.model.registry.HEADS`),
    with the dataset's class names (kept in its checkpoints)."""
    anchors = {key: list(value) for key, value in (("sizes", config.anchor_sizes), ("scales", config.anchor_scales),
                                                   ("ratios", config.anchor_ratios)) if value is not None}
    return build_detector(
        config.model, classes, head_options=config.head_options(), resnet=config.resnet,
        pretrained=config.pretrained, fpn_levels=list(config.fpn_levels), anchors=anchors or None,
        features={"pyramid": config.pyramid_channels, "regression": config.head_channels,
                  "classification": config.head_channels},
        head_convs=config.head_convs, group_norm=config.group_norm, box_loss=config.box_loss,
        assignation_thresholds={"object": config.object_iou, "background": config.background_iou},
        class_names=class_names)


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


def environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """What besides the config decides a run's numbers: recorded in ``config.json``.

    On the CPU the intra-op thread count changes how reductions are split, hence the last bits
    of a loss; the trainer sets it (``TrainConfig.threads``) and records the value used.
    ``world_size`` is the number of processes (the global batch is ``world_size * batch_size``).
    """
    import platform

    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "device": str(device), "world_size": world_size,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader(dataset, config: TrainConfig, *, shuffle: bool, epoch: int = 0, batch_size: int | None = None,
            context: distributed.DistributedContext | None = None, pin_memory: bool = False):
    """Batches of ``dataset``: one process reads whole batches of ``batch_size`` (default
    ``config.batch_size``); with several processes ``batch_size`` is the global batch and each
    process reads its shard of every global batch (:func:`dlde.train.distributed.shard_batches`)."""
    batch_size = batch_size or config.batch_size
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)  # order depends on epoch only
    if context is None or not context.distributed:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=config.num_workers, generator=generator,
                          persistent_workers=False, pin_memory=pin_memory)
    shards = distributed.shard_batches(_global_batches(len(dataset), batch_size, shuffle, generator),
                                       context.rank, context.world_size)
    # Worker seeds come from a generator of this rank and epoch, never from the global RNG.
    workers = torch.Generator().manual_seed((config.seed * 1000 + epoch) * 1009 + context.rank)
    return DataLoader(dataset, batch_sampler=shards, collate_fn=collate, num_workers=config.num_workers,
                      generator=workers, persistent_workers=False, pin_memory=pin_memory)


def _global_batches(size: int, batch_size: int, shuffle: bool, generator: torch.Generator) -> list[list[int]]:
    """The dataset indices of every batch of a one-process run, in its order.

    Drawn by a DataLoader over the indices with the one-process loader's settings and seeded
    generator, so the order is the one that loader would produce whatever torch does inside.
    """
    return list(DataLoader(range(size), batch_size=batch_size, shuffle=shuffle, generator=generator,
                           collate_fn=list))


def _steps_per_epoch(size: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch: ``ceil(size / (world_size * batch_size))``, less a last global
    batch too small to give every process an image (:func:`dlde.train.distributed.shard_batches`)."""
    global_batch = world_size * batch_size
    full, rest = divmod(size, global_batch)
    return full + (1 if rest >= world_size else 0)


def _sharded_eval_batches(dataset, config: TrainConfig, context: distributed.DistributedContext,
                          pin_memory: bool = False):
    """``(indices, images, annotations)`` of this process's shard of every global evaluation batch
    (``config.eval_batch_size`` images, as in one process); ``(indices, None, None)`` where the
    shard is empty, so every process steps through the same number of global batches."""
    batches = _global_batches(len(dataset), config.eval_batch_size, False, torch.Generator())
    shards = [batch[context.rank::context.world_size] for batch in batches]
    loader = iter(DataLoader(dataset, batch_sampler=[shard for shard in shards if shard], collate_fn=collate,
                             num_workers=config.num_workers, pin_memory=pin_memory))
    for shard in shards:
        if shard:
            yield (shard, *next(loader))
        else:
            yield shard, None, None


class _Progress:
    """A progress bar over a count of steps (never over a loader: a bar that iterates a loader
    calls ``iter(loader)`` itself, draws from its seeded generator and changes the shuffle).

    Does nothing when ``enabled`` is False, so progress on or off gives the same result.
    """

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False)

    def step(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------- training
def initialize_means(model: RetinaNet, dataset, config: TrainConfig, device,
                     context: distributed.DistributedContext | None = None) -> None:
    """A pass over ``dataset`` (``config.init_batches`` shuffled batches, or all) in eval mode that
    tracks the means without training, so no class starts without a mean.

    In ``'manual'`` mode the accumulated sums then become the means. With several processes
    (``context``) each tracks its shard of the global batches; the means' reducer merges them.
    """
    context = context or distributed.DistributedContext()
    loader = _loader(dataset, config, shuffle=True, epoch=0, batch_size=config.batch_size * context.world_size,
                     context=context)
    total = len(loader) if config.init_batches is None else min(len(loader), config.init_batches)
    progress = _Progress(config.progress and context.is_main, total, "init means")
    with evaluating(model):
        for index, (images, annotations) in enumerate(loader):
            if index >= total:
                break
            model(images.to(device), annotations.to(device), initializing=True)
            progress.step()
    progress.close()
    model.update_means()


@torch.no_grad()
def validation_loss(model: nn.Module, dataset, config: TrainConfig, device,
                    context: distributed.DistributedContext | None = None) -> float:
    """Mean total loss over ``dataset`` in eval mode (no tracking, no gradient).

    With several processes each computes its shard of every global batch of
    ``config.eval_batch_size`` images with the mean number of positives over processes as the
    normalizer, so the mean over processes is the one-process value.
    """
    if context is not None and context.distributed:
        return _sharded_validation_loss(model, dataset, config, device, context)
    total, batches = 0.0, 0
    with evaluating(model, evaluate_loss=True):
        for images, annotations in _loader(dataset, config, shuffle=False, batch_size=config.eval_batch_size):
            images, annotations = images.to(device), annotations.to(device)
            losses = model.loss(*model(images), annotations)
            total += float(sum(losses.values()))
            batches += 1
    return total / max(1, batches)


def _sharded_validation_loss(model: nn.Module, dataset, config: TrainConfig, device,
                             context: distributed.DistributedContext) -> float:
    total = torch.zeros((), dtype=torch.float64, device=device)
    batches = 0
    with evaluating(model, evaluate_loss=True):
        for _, images, annotations in _sharded_eval_batches(dataset, config, context):
            batches += 1
            if images is None:  # an empty shard still joins the normalizer's all-reduce
                distributed.loss_normalizer(torch.zeros((), device=device))
                continue
            images, annotations = images.to(device), annotations.to(device)
            losses = model.loss(*model(images), annotations, positives_reducer=distributed.loss_normalizer)
            total += sum(losses.values()).double()
    return float(distributed.mean_over_processes(total)) / max(1, batches)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, config: TrainConfig, device,
                   context: distributed.DistributedContext | None = None) -> dict[str, Any]:
    """COCO metrics of ``model`` on ``dataset`` (:func:`dlde.evaluation.evaluate`).

    With several processes each predicts its shard of the images, rank 0 gathers the detections
    and runs COCOeval once, and every process receives the metrics: the same numbers as one
    process (images of one size; with mixed sizes the padding of a batch can differ).
    """
    if context is None or not context.distributed:
        return evaluate(model, dataset, batch_size=config.eval_batch_size, device=device, progress=False)
    max_detections = _EVALUATE["max_detections"].default
    labels = _EVALUATE["labels"].default
    threshold = float(getattr(model, "score_threshold", DEFAULT_PAIR_THRESHOLD))
    local = []
    with evaluating(model):
        for indices, images, _ in _sharded_eval_batches(dataset, config, context):
            if images is None:
                continue
            outputs = model(images.to(device))
            for index, (boxes, classifications) in zip(indices, outputs):  # loop over images
                local.append((index, to_original(boxes, classifications, dataset.meta(index), max_detections,
                                                  labels=labels, score_threshold=threshold)))
    gathered = distributed.gather_to_main(local)
    metrics = None
    if context.is_main:
        by_index = dict(item for part in gathered for item in part)
        metrics = coco_metrics(dataset, [by_index[i] for i in range(len(dataset))], max_detections=max_detections)
    return distributed.broadcast_from_main(metrics)


def _means_snapshot(model: RetinaNet) -> tuple[np.ndarray, np.ndarray] | None:
    snapshot = model.means_snapshot()
    if snapshot is None:
        return None
    means, kappa = snapshot
    return means.numpy(), np.asarray(kappa, dtype=np.float64)


#: The files a run writes into its folder; their presence means the folder holds a run.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "means_history.npy", "kappa_history.npy")


def _claim_run_dir(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """Make sure ``run_dir`` belongs to this run; return the saved record when resuming.

    A folder holding another run's files is refused unless ``resume`` (same config; fields in
    ``allow_changed`` may differ and are recorded) or ``overwrite`` (its run files are removed;
    other files are left alone).
    """
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return None
    if config.overwrite:
        for name in present:
            (run_dir / name).unlink()
        return None
    if not config.resume:
        raise FileExistsError(f"run folder {run_dir} already holds a run ({', '.join(present)}): pass "
                              "resume=True (--resume true) to continue it, overwrite=True (--overwrite true) "
                              "to replace it, or choose another run_dir")
    record_file = run_dir / "config.json"
    if not record_file.exists():
        raise FileExistsError(f"cannot resume {run_dir}: it has no config.json, so its run is unknown; "
                              "pass overwrite=True to start afresh")
    try:
        record = json.loads(record_file.read_text())
        saved = record["config"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{record_file}: not a dlde run record ({error})") from None
    if isinstance(saved.get("amp"), bool):  # recorded when amp was a bool
        saved = {**saved, "amp": "fp16" if saved["amp"] else "off"}
    current = config.to_dict()
    changed = {key: (saved.get(key), current[key]) for key in current
               if key not in BOOKKEEPING and saved.get(key, current[key]) != current[key]}
    refused = sorted(set(changed) - set(config.allow_changed))
    if refused:
        shown = ", ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused)
        raise ValueError(f"cannot resume {run_dir} with a different config ({shown}); resume with the saved "
                         f"values, or allow the change explicitly with allow_changed={refused}")
    if changed:
        record.setdefault("resumed_with_changes", []).append(
            {"changed": {key: {"from": old, "to": new} for key, (old, new) in changed.items()},
             "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        record["config"] = current
        _write_json(record_file, record)
    return record


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)


def train(config: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Train a detector as described by ``config`` (plus keyword overrides) and return the result.

    With ``resume=True`` the run continues after the last epoch saved in ``run_dir``; on the
    CPU with a fixed seed it reproduces the losses of an uninterrupted run. Started by torchrun
    (``WORLD_SIZE`` > 1 in the environment), every process calls this and trains its shard with
    DDP; every process returns the same metrics and model.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides) if overrides else (config or TrainConfig())
    context = distributed.context_from_environment()
    device = distributed.device_for(context, config.device)
    distributed.initialize(context, device, timeout_s=config.dist_timeout_s)
    try:
        return _train(config, context, device)
    finally:
        distributed.shutdown()


def _main_first(context: distributed.DistributedContext, work, *, then_others: bool = False):
    """Run ``work()`` on rank 0 first; an error there is raised on every process (no rank waits
    forever for a failed one). ``then_others``: the other ranks run ``work()`` afterwards (e.g. to
    read what rank 0 wrote); otherwise they return None."""
    if not context.distributed:
        return work()
    outcome, result = None, None
    if context.is_main:
        try:
            result = work()
        except Exception as error:  # noqa: BLE001 - shared with the other ranks, then re-raised here
            outcome = error
    shared = distributed.broadcast_from_main(outcome)
    if shared is not None:
        if context.is_main:
            raise outcome
        raise shared
    if not context.is_main and then_others:
        result = work()
    return result


def _finished(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``metrics.jsonl`` holds the last epoch: resuming then trains nothing, only reloads
    (with any number of processes, e.g. a notebook reloading a run trained under torchrun)."""
    path = run_dir / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    return bool(rows) and int(rows[-1].get("epoch", 0)) >= config.epochs


def _claim_and_check(run_dir: Path, config: TrainConfig, context: distributed.DistributedContext):
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _claim_run_dir(run_dir, config)
    if record is not None and (run_dir / "checkpoint.pt").exists() and not _finished(run_dir, config):
        saved = int(record.get("environment", {}).get("world_size", 1))
        if saved != context.world_size:
            raise ValueError(f"cannot resume {run_dir} with {context.world_size} process(es): it was trained with "
                             f"{saved} (global batch {saved} x batch_size); resume with --nproc_per_node={saved} "
                             "(x nodes), or start a new run")
    return record


def _train(config: TrainConfig, context: distributed.DistributedContext, device: torch.device) -> TrainResult:
    run_dir = Path(config.run_dir)
    saved_record = _main_first(context, lambda: _claim_and_check(run_dir, config, context))
    if config.threads is not None:
        if config.threads < 1:
            raise ValueError(f"threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
    amp_dtype = AMP_MODES[config.amp]
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (it scales the loss), got {device}; use amp='bf16' here")
    _seed_everything(config.seed)  # every process: the same initial model
    train_set, val_set = _main_first(context, lambda: build_datasets(config), then_others=True)
    model = build_model(config, train_set.num_classes, train_set.class_names).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    network: nn.Module = model
    positives_reducer = None
    if context.distributed:
        if config.sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, device)
        distributed.attach_means_reducer(model)
        positives_reducer = distributed.loss_normalizer
        # The means are kept equal by their reducer: DDP must not overwrite them with rank 0's.
        network = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    pin_memory = device.type == "cuda"
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    batches_per_epoch = _steps_per_epoch(len(train_set), config.batch_size, context.world_size)
    if config.max_train_batches is not None:
        batches_per_epoch = min(batches_per_epoch, config.max_train_batches)
    total_steps = batches_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_lambda(step, total_steps, config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")

    metrics: list[dict[str, Any]] = []
    means_history: list[np.ndarray] = []
    kappa_history: list[np.ndarray] = []
    start_epoch = 1
    checkpoint_path = run_dir / "checkpoint.pt"
    writes = context.is_main  # rank 0 alone writes the run folder
    if config.resume and checkpoint_path.exists():  # every process loads the same checkpoint
        state = load_checkpoint(checkpoint_path)
        check_finite_state(state["model"], str(checkpoint_path))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        metrics = [dict(row) for row in state["metrics"]]
        means_history = [m.numpy() for m in state.get("means_history", [])]
        kappa_history = [k.numpy() for k in state.get("kappa_history", [])]
        start_epoch = int(state["epoch"]) + 1
    else:
        if saved_record is None and writes:
            config_record = {"config": config.to_dict(), "class_names": train_set.class_names,
                             "category_ids": train_set.category_ids,
                             "environment": environment(device, context.world_size)}
            _write_json(run_dir / "config.json", config_record)
        zero_manual = config.means_update == "manual" and config.means_init == "zeros"
        if model.has_tracked_means and (config.init_means or zero_manual):
            model.reset_statistics()
            initialize_means(model, train_set, config, device, context)
        snapshot = _means_snapshot(model)
        if snapshot is not None:
            means_history.append(snapshot[0])
            kappa_history.append(snapshot[1])
    if writes:
        _write_metrics(run_dir, metrics)

    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        if context.distributed:  # augmentation draws: seeded per process and epoch (resume-safe)
            _seed_everything(config.seed * 1_000_003 + epoch * 1009 + context.rank)
        model.train()
        model.reset_statistics()
        sums = {"loss": 0.0, "classification": 0.0, "bbox_regression": 0.0}
        batches = skipped = 0
        loader = _loader(train_set, config, shuffle=True, epoch=epoch,
                         batch_size=config.batch_size * context.world_size, context=context, pin_memory=pin_memory)
        progress = _Progress(config.progress and writes, batches_per_epoch, f"epoch {epoch}/{config.epochs}")
        for images, annotations in loader:
            if batches + skipped >= batches_per_epoch:
                break
            images = images.to(device, non_blocking=pin_memory)
            annotations = annotations.to(device, non_blocking=pin_memory)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            where = f"epoch {epoch}, batch {batches + skipped}"
            problem = None if torch.isfinite(images).all() else "non-finite (NaN/Inf) pixels in the input images"
            if context.distributed and distributed.any_over_processes(problem is not None, device):
                problem = problem or "non-finite (NaN/Inf) pixels in the input images of another process"
            if problem is None:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    output = network(images, annotations)
                    losses = model.loss(*output, annotations, assignment=output.assignment,
                                        positives_reducer=positives_reducer)
                loss = losses["classification"] + losses["bbox_regression"]
                if not torch.isfinite(loss):
                    problem = f"non-finite loss {loss.item()}"
                if context.distributed and distributed.any_over_processes(problem is not None, device):
                    problem = problem or "non-finite loss in another process"
            if problem is not None:
                if config.nonfinite == "raise":
                    raise FloatingPointError(f"{problem} at {where}; the step was refused before it reached the "
                                             f"means or the optimizer. The last good state is in {checkpoint_path}; "
                                             "nonfinite='skip' skips such steps instead")
                skipped += 1
                progress.step()
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            batches += 1
            sums["loss"] += loss.item()
            sums["classification"] += losses["classification"].item()
            sums["bbox_regression"] += losses["bbox_regression"].item()
            progress.step(loss=f"{sums['loss'] / batches:.3f}")
        progress.close()
        if context.distributed:  # each process's loss is its share of the global batch's: average them
            totals = distributed.mean_over_processes(torch.tensor(list(sums.values()), dtype=torch.float64,
                                                                  device=device))
            sums = dict(zip(sums, totals.tolist()))
        model.update_means()  # 'manual' means: one update per epoch; a no-op otherwise
        distributed.average_batchnorm_statistics(model)  # without sync BN each process kept its own
        distributed.check_replicated(model, f"after epoch {epoch}")  # means, weights, statistics: bitwise equal
        row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": sums["loss"] / max(1, batches),
                               "train_cls_loss": sums["classification"] / max(1, batches),
                               "train_box_loss": sums["bbox_regression"] / max(1, batches)}
        if skipped:
            row["skipped_steps"] = skipped
        row["train_time_s"] = time.perf_counter() - started
        row["val_loss"] = validation_loss(model, val_set, config, device, context)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            coco = evaluate_model(model, val_set, config, device, context)
            row.update({key: value for key, value in coco.items() if key != "per_class"})
            row["per_class_AP"] = coco["per_class"]
        row["time_s"] = time.perf_counter() - started
        metrics.append(_finite(row))
        snapshot = _means_snapshot(model)
        if snapshot is not None:
            means_history.append(snapshot[0])
            kappa_history.append(snapshot[1])
        if writes:
            _save_training_state(checkpoint_path, model, optimizer, scheduler, scaler, epoch, metrics,
                                 means_history, kappa_history)
            _write_metrics(run_dir, metrics)
            _write_histories(run_dir, means_history, kappa_history)
        if config.progress and writes:
            ap = f", AP {row['AP']:.3f}, AP50 {row['AP50']:.3f}" if "AP" in row else ""
            print(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, "
                  f"val loss {row['val_loss']:.4f}{ap} ({row['time_s']:.0f} s)", flush=True)
    if start_epoch > config.epochs and writes:  # resuming a finished run: restore its files from the checkpoint
        _write_histories(run_dir, means_history, kappa_history)
    return TrainResult(run_dir, metrics, model, list(train_set.class_names))


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN metrics (e.g. AP_large without large objects) become None so the JSON stays valid."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value
    return {key: clean(value) for key, value in row.items()}


def _save_training_state(path: Path, model, optimizer, scheduler, scaler, epoch: int, metrics, means_history,
                         kappa_history) -> None:
    state = model.state_dict()
    check_finite_state(state, f"model of epoch {epoch} (not saved to {path})")
    atomic_save({
        "model": state,
        "hyperparameters": {"model": model.constructor_arguments()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "rng": _rng_state(),
        "metrics": metrics,
        "means_history": [torch.from_numpy(m) for m in means_history],
        "kappa_history": [torch.from_numpy(k) for k in kappa_history],
    }, path)


def _write_metrics(run_dir: Path, metrics: Sequence[Mapping[str, Any]]) -> None:
    temporary = run_dir / ".metrics.jsonl.tmp"
    temporary.write_text("".join(json.dumps(row) + "\n" for row in metrics))
    temporary.replace(run_dir / "metrics.jsonl")


def _write_histories(run_dir: Path, means_history, kappa_history) -> None:
    """``means_history.npy`` and ``kappa_history.npy`` (DLDENet runs only)."""
    if means_history:
        _save_array(run_dir / "means_history.npy", np.stack(means_history))
        _save_array(run_dir / "kappa_history.npy", np.stack(kappa_history))


def _save_array(path: Path, array: np.ndarray) -> None:
    temporary = path.with_name(f".{path.stem}.tmp.npy")
    np.save(temporary, array)
    temporary.replace(path)


# ------------------------------------------------------------------------------------------ CLI
def _parser(preset: str = "digits") -> argparse.ArgumentParser:
    """The CLI: every :class:`TrainConfig` field is a flag; ``--help`` shows the defaults of ``preset``."""
    parser = _OneLineErrors(
        prog="python -m dlde.train", description="Train a detector (DLDENet, the sigmoid baseline or learned "
        "cosine prototypes). Every flag overrides the preset; --help shows the defaults of the preset given "
        "with --preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset, help="starting configuration")
    base = PRESETS[preset]
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(base, f.name)
        shown = f"preset {preset}: {default}"
        type_name = str(f.type)
        if type_name == "bool":
            parser.add_argument(flag, dest=f.name, type=_bool, default=None, metavar="BOOL", help=shown)
        elif "tuple" in type_name:
            kind = float if "float" in type_name else str if "str" in type_name else int
            parser.add_argument(flag, dest=f.name, type=kind, nargs="+", default=None, help=shown)
        else:
            kind = {"int": int, "float": float}.get(type_name.split(" |")[0], str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, choices=CHOICES.get(f.name),
                                help=shown)
    return parser


class _OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block, no traceback)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag with its choices)\n")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m dlde.train``: bad values and refused runs end with a one-line error (exit 2)."""
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    preset_args, _ = preset_parser.parse_known_args(argv)
    parser = _parser(preset_args.preset)
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    overrides = {key: value for key, value in args.items() if value is not None}
    try:
        config = TrainConfig.from_dict(overrides, preset=preset)
        result = train(config)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as error:
        context = distributed.context_from_environment()
        where = f" (rank {context.rank} of {context.world_size})" if context.distributed else ""
        parser.exit(2, f"{parser.prog}{where}: error: {error}\n")
    if distributed.context_from_environment().is_main:
        print(json.dumps({key: value for key, value in result.metrics[-1].items() if key != "per_class_AP"},
                         indent=1))
    return result

