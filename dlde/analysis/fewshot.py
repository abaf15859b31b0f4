"""What tracked means can do: new classes from a few boxes, unknown objects, retrieval by embedding.

**Few-shot protocol on the digits** (:func:`run_protocol`):

* *Base training* on the digits ``BASE_CLASSES`` (0-6): the base datasets are generated with
  ``digits_classes=BASE_CLASSES``, so the digits 7-9 never appear in a base image. Images that
  would hold them are **dropped, not kept unlabeled**: an unlabeled 7 would be trained as
  background and then fought by the novel class (TFA and most few-shot detection benchmarks
  remove the novel annotations but keep the images; on the digits, generating without them is
  the clean version of "never annotated").
* *Novel data*: the same generator with all ten digits (:func:`few_shot_datasets`); the
  per-digit train/val split of the source images does not depend on the kept classes, so novel
  shots come from training digit images and evaluation from validation ones.
* *k-shot draws* (:func:`draw_shots`): for each novel class, ``k`` boxes drawn without
  replacement among all its boxes of the novel training set, ``draws`` times per ``k`` (seeded).
  The fine-tuning set is the images holding the drawn boxes, annotated with the drawn novel
  boxes and every base-class box (base annotations exist in the base setting); other novel
  objects in those images stay unannotated (they are not part of the k shots).
* *Methods* (:data:`METHODS`), each starting from a copy of its base model grown by the novel
  classes (:meth:`dlde.RetinaNet.add_classes`): DLDENet imprinted (zero steps,
  :meth:`dlde.RetinaNet.imprint`), DLDENet imprinted then fine-tuned, the sigmoid RetinaNet and
  the learned-prototype head fine-tuned, and the prototypes imprinted (zero steps). Fine-tuning
  is TFA-style: only the classifier layer (:meth:`dlde.RetinaNet.classifier_parameters`) is
  trained, with the backbone, pyramid and box head frozen (BatchNorm statistics too), for
  ``FineTune.steps`` steps of the classification loss; DLDENet's means keep being tracked from
  the fine-tuning batches, as in training.
* *Metrics*: novel AP / AP50 (COCO, on the novel categories of the full validation set) and
  base AP / AP50 (base categories, same images) before and after; mean and 95 % t-interval over
  draws (:func:`summarize`); steps and seconds per method on this machine.

**Unknown objects** (:func:`open_set_evaluation`): a base model on validation images that hold
7-9, each detection scored with :mod:`dlde.analysis.openset`. **Retrieval** (:func:`retrieval_evaluation`):
ground-truth boxes of the validation images as a gallery, searched with :mod:`dlde.analysis.retrieval`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from dlde.data.coco import CocoDetection
from dlde.data.digits import default_digits_root
from dlde.data.transforms import collate
from dlde.evaluation import coco_metrics, to_original
from dlde.model.modes import evaluating

from .calibration import DEFAULT_IOU, match_detections
from .openset import (
    DEFAULT_KNOWN_PRECISION,
    absolute_open_set_error,
    auroc,
    cosine_unknown_score,
    probability_unknown_score,
    roc_curve,
    unknown_recall_at_known_precision,
    wilderness_impact,
)
from .retrieval import EmbeddingIndex, box_embeddings, crop_boxes, map_at_r, per_class, recall_at_k

__all__ = [
    "BASE_CLASSES", "NOVEL_CLASSES", "SHOTS", "DRAWS", "METHODS", "FineTune", "Shots",
    "base_config", "ensure_base_run", "prepare", "few_shot_datasets", "draw_shots", "fine_tune", "adapt",
    "group_metrics", "run_protocol", "summarize", "mean_interval", "markdown_table",
    "open_set_evaluation", "retrieval_evaluation", "retrieval_examples", "open_set_summary", "open_set_markdown",
    "retrieval_summary", "retrieval_markdown", "images_with", "embedding_view", "plot_shots", "plot_forgetting",
]

BASE_CLASSES = (0, 1, 2, 3, 4, 5, 6)  # digits of the base training
NOVEL_CLASSES = (7, 8, 9)  # digits added from k shots
SHOTS = (1, 2, 5, 10, 30)  # k: annotated boxes per novel class
DRAWS = 5  # random k-shot sets per k
#: Operating recall of ORE's wilderness impact.
WI_RECALL = 0.8
#: method -> (base model, imprint the novel classes, fine-tune the classifier layer).
METHODS: dict[str, tuple[str, bool, bool]] = {
    "dlde_imprint": ("dlde", True, False),
    "dlde_imprint_finetune": ("dlde", True, True),
    "retinanet_finetune": ("retinanet", False, True),
    "prototypes_finetune": ("prototypes", False, True),
    "prototypes_imprint": ("prototypes", True, False),
}


@dataclass(frozen=True)
class FineTune:
    """TFA-style fine-tuning of the classifier layer on the k-shot images.

    Attributes:
        steps: optimizer steps (AdamW, no weight decay, constant learning rate).
        lr: learning rate.
        batch_size: shot images per step (drawn with replacement when there are fewer).
    """

    steps: int = 100
    lr: float = 0.01
    batch_size: int = 8


# ----------------------------------------------------------------------------- base runs, data
def base_config(model: str, run_dir: str | Path, *, like=None, preset: str = "digits",
                base_classes: Sequence[int] = BASE_CLASSES, data_dir: str | Path | None = None, **overrides: Any):
    """The :class:`dlde.train.TrainConfig` of a base run: a configuration restricted to ``base_classes``.

    Args:
        model: a head name of :data:`dlde.model.registry.HEADS`.
        run_dir: the run folder.
        like: a TrainConfig (or its dict, e.g. a run's ``config.json``) to copy everything else
            from, so the base runs get the budget of that run; None: the preset ``preset``.
        preset: a :data:`dlde.train.PRESETS` name (when ``like`` is None).
        base_classes: digits of the base training (the others never appear).
        data_dir: folder under which the base digits are generated, in a folder named after their
            settings (:func:`dlde.default_digits_root`); None: next to ``like``'s data (its
            parent folder), else ``data``. Ignored when ``data_root`` is among ``overrides``.
        **overrides: further TrainConfig fields (``epochs``, ``seed``, ...).
    """
    from dlde.train import TrainConfig

    values = {"model": model, "run_dir": str(run_dir), "digits_classes": tuple(int(c) for c in base_classes),
              "resume": False, "overwrite": False, **overrides}
    if like is not None:
        like = like.to_dict() if isinstance(like, TrainConfig) else dict(like)
        config = TrainConfig.from_dict({**like, **values})
    else:
        config = TrainConfig.from_dict(values, preset=preset)
    if "data_root" not in overrides:
        if data_dir is None:
            data_dir = Path(like["data_root"]).parent if like is not None and like.get("data_root") else Path("data")
        config = dataclasses.replace(config, data_root=str(default_digits_root(data_dir, **_digits_params(config))))
    return config


def _digits_params(config) -> dict[str, Any]:
    return dict(seed=config.digits_seed, canvas_size=config.digits_canvas_size, digit_size=config.digits_size,
                digits_per_image=config.digits_per_image, train_images=config.digits_train_images,
                val_images=config.digits_val_images, classes=config.digits_classes)


#: TrainConfig fields that may differ between a cached base run and the one asked for.
_NOT_IDENTITY = ("run_dir", "data_root", "resume", "overwrite", "progress", "device", "num_workers",
                 "eval_batch_size", "allow_changed", "dist_timeout_s", "threads")


def ensure_base_run(config) -> Path:
    """Train the base run of ``config`` unless its folder already holds it finished; return the folder.

    A finished run of the same configuration (``config.epochs`` epochs in ``metrics.jsonl``) is
    reused as it is; an unfinished one is resumed; an empty folder is trained.

    Raises:
        ValueError: the folder holds a run of another configuration (the differing fields are named).
    """
    from dlde.train import train

    run_dir = Path(config.run_dir)
    record, metrics = run_dir / "config.json", run_dir / "metrics.jsonl"
    if record.exists():
        saved = json.loads(record.read_text())["config"]
        wanted = config.to_dict()
        differ = sorted(key for key in wanted if key not in _NOT_IDENTITY and saved.get(key) != wanted[key])
        if differ:
            raise ValueError(f"{run_dir} holds another run than the base run asked for (fields {differ} differ): "
                             "delete it or choose another base runs folder")
        rows = [line for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
        if len(rows) >= config.epochs and (run_dir / "checkpoint.pt").exists():
            return run_dir
        train(dataclasses.replace(config, resume=True))
        return run_dir
    train(config)
    return run_dir


def prepare(like, base_runs_dir: str | Path, heads: Sequence[str] = ("dlde", "retinanet", "prototypes"), *,
            epochs: int | None = None, base_classes: Sequence[int] = BASE_CLASSES, preset: str = "digits",
            data_dir: str | Path | None = None, **overrides: Any
            ) -> tuple[dict[str, nn.Module], list[str], CocoDetection, CocoDetection]:
    """Base models (trained on ``base_classes`` if not cached) and the ten-digit datasets.

    Args:
        like: the TrainConfig (or ``config.json`` dict) the base runs copy, or None for the
            preset ``preset`` (see :func:`base_config`).
        base_runs_dir: folder holding one base run per head (``<base_runs_dir>/<head>``).
        heads: head names.
        epochs: epochs of the base runs (None: those of ``like`` or the preset).
        base_classes: digits of the base training.
        preset: the preset when ``like`` is None.
        data_dir: see :func:`base_config`.
        **overrides: further TrainConfig fields of the base runs (``seed``, ...).

    Returns:
        ``(models, base_names, train_set, val_set)``: head -> base detector in eval mode, the base
        class names in label order, and the ten-digit train (unflipped) and validation sets.
    """
    from dlde.train.runs import load_run

    if epochs:
        overrides["epochs"] = int(epochs)
    models, names, config = {}, None, None
    for head in heads:  # a few heads
        config = base_config(head, Path(base_runs_dir) / head, like=like, preset=preset, base_classes=base_classes,
                             data_dir=data_dir, **overrides)
        run = load_run(ensure_base_run(config))
        models[head] = run.load_model()
        if names is not None and run.class_names != names:
            raise ValueError(f"base runs disagree on the classes: {names} vs {run.class_names} ({run.run_dir})")
        names = run.class_names
    if config is None:
        raise ValueError("prepare needs at least one head")
    train_set, val_set = few_shot_datasets(config)
    return models, list(names), train_set, val_set


def few_shot_datasets(config, data_root: str | Path | None = None) -> tuple[CocoDetection, CocoDetection]:
    """``(train, val)`` of all ten digits, generated like the base run's ``config`` otherwise.

    Args:
        config: the base run's TrainConfig (or its dict from ``config.json``).
        data_root: folder of the ten-digit dataset; None derives one next to the base run's data
            (``<parent of config.data_root>/digits-<hash>``, or under ``data/``).

    The training set is built without flipping, so its boxes are the annotated ones.
    """
    from dlde.train import TrainConfig, build_datasets

    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    if config.dataset != "digits":
        raise ValueError(f"the few-shot protocol runs on the digits, got dataset={config.dataset!r}")
    full = dataclasses.replace(config, digits_classes=None, flip_prob=0.0)
    if data_root is None:
        base = Path(config.data_root).parent if config.data_root else Path("data")
        data_root = default_digits_root(base, **_digits_params(full))
    return build_datasets(dataclasses.replace(full, data_root=str(data_root)))


# -------------------------------------------------------------------------------------- shots
@dataclass
class Shots:
    """One k-shot draw.

    Attributes:
        k: boxes per novel class.
        draw: index of the draw.
        boxes: dataset label -> ``(image index, annotation row)`` pairs of its drawn boxes.
    """

    k: int
    draw: int
    boxes: dict[int, list[tuple[int, int]]]

    @property
    def images(self) -> list[int]:
        """Sorted dataset indices of the images holding a drawn box."""
        return sorted({index for pairs in self.boxes.values() for index, _ in pairs})


def _all_boxes(dataset: CocoDetection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image index (N,), row (N,), dataset label (N,))`` of every box of the dataset."""
    counts = np.array([len(dataset.targets(i)) for i in range(len(dataset))], dtype=np.int64)
    image = np.repeat(np.arange(len(dataset)), counts)
    row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = np.concatenate([dataset.targets(i)[:, 4].numpy() for i in range(len(dataset))]).astype(np.int64) \
        if len(dataset) else np.zeros(0, np.int64)
    return image, row, labels


def draw_shots(dataset: CocoDetection, novel_labels: Sequence[int], k: int, draws: int, *, seed: int = 0
               ) -> list[Shots]:
    """``draws`` random k-shot sets: ``k`` boxes of each novel label, without replacement.

    Draw ``j`` of ``k`` uses the generator seeded ``[seed, k, j]``, so adding a ``k`` or a draw
    never changes the others.

    Raises:
        ValueError: a novel class has fewer than ``k`` boxes in ``dataset``.
    """
    image, row, labels = _all_boxes(dataset)
    pools = {int(c): np.flatnonzero(labels == c) for c in novel_labels}
    for c, pool in pools.items():
        if len(pool) < k:
            raise ValueError(f"class {dataset.class_names[c]!r} has {len(pool)} boxes in "
                             f"{dataset.annotation_file}, fewer than k = {k}")
    out = []
    for j in range(draws):  # a handful of draws
        rng = np.random.default_rng([seed, k, j])
        boxes = {c: [(int(image[i]), int(row[i])) for i in rng.choice(pool, size=k, replace=False)]
                 for c, pool in pools.items()}
        out.append(Shots(k, j, boxes))
    return out


def _label_map(dataset: CocoDetection, names: Sequence[str]) -> Tensor:
    """``(C_dataset,)`` model label of each dataset label (-1: not a class of the model)."""
    lookup = torch.full((len(dataset.class_names),), -1, dtype=torch.long)
    for label, name in enumerate(names):
        if name not in dataset.class_names:
            raise ValueError(f"class {name!r} is not in {dataset.annotation_file} ({dataset.class_names})")
        lookup[dataset.class_names.index(name)] = label
    return lookup


def _shot_batch(dataset: CocoDetection, shots: Shots, base_labels: Sequence[int], lookup: Tensor
                ) -> tuple[Tensor, Tensor, dict[int, list[Tensor]]]:
    """The fine-tuning set of a draw.

    Returns:
        ``images (S, 3, H, W)``, ``annotations (S, M, 5)`` in model labels (drawn novel boxes and
        every base box), and per novel dataset label the S box tensors ``(n_i, 4)`` of its shots.
    """
    indices = shots.images
    position = {index: s for s, index in enumerate(indices)}
    chosen = {(index, row) for pairs in shots.boxes.values() for index, row in pairs}
    items = []
    per_class = {c: [torch.zeros(0, 4) for _ in indices] for c in shots.boxes}
    base = torch.as_tensor(list(base_labels), dtype=torch.long)
    for index in indices:  # the shot images: at most k x novel classes
        image, target = dataset[index]
        scale = dataset.meta(index)["scale"]
        original = dataset.targets(index)
        keep = torch.isin(original[:, 4].long(), base)
        keep |= torch.tensor([(index, r) in chosen for r in range(len(original))], dtype=torch.bool)
        rows = original[keep].clone()
        rows[:, :4] *= scale
        for c in shots.boxes:
            mine = [r for i, r in shots.boxes[c] if i == index]
            per_class[c][position[index]] = original[mine, :4] * scale
        rows[:, 4] = lookup[rows[:, 4].long()].float()
        items.append((image, rows))
    images, annotations = collate(items)
    return images, annotations, per_class


# ------------------------------------------------------------------------------- adaptation
def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def fine_tune(model: nn.Module, images: Tensor, annotations: Tensor, settings: FineTune = FineTune(), *,
              seed: int = 0) -> dict[str, float]:
    """Train only the classifier layer of ``model`` on a k-shot set (TFA-style); returns steps and seconds.

    Everything but :meth:`dlde.RetinaNet.classifier_parameters` is frozen (and the backbone,
    pyramid and box head stay in eval mode, so BatchNorm statistics do not move); the loss is
    the focal classification loss. Heads with tracked means keep tracking the batches.

    Args:
        model: a detector (changed in place).
        images: ``(S, 3, H, W)`` the shot images.
        annotations: ``(S, M, 5)`` their boxes in model labels (-1 rows are padding).
        settings: steps, learning rate and batch size.
        seed: seed of the batch draws.
    """
    trainable = list(model.classifier_parameters())
    ids = {id(p) for p in trainable}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = _device_of(model)
    images, annotations = images.to(device), annotations.to(device)
    started = time.perf_counter()
    model.train()
    for module in (model.fpn, model.regression):
        module.eval()
    try:
        for _ in range(settings.steps):
            pick = torch.randint(len(images), (min(settings.batch_size, len(images)),), generator=generator)
            batch, targets = images[pick.to(device)], annotations[pick.to(device)]
            output = model(batch, targets)
            losses = model.loss(*output, targets, assignment=output.assignment)
            optimizer.zero_grad(set_to_none=True)
            losses["classification"].backward()
            optimizer.step()
    finally:
        model.eval()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
    return {"steps": settings.steps, "seconds": time.perf_counter() - started}


def adapt(base_model: nn.Module, method: str, dataset: CocoDetection, shots: Shots, *, base_names: Sequence[str],
          settings: FineTune = FineTune(), seed: int = 0) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``base_model`` grown by the novel classes of ``shots`` and adapted by ``method``.

    Args:
        base_model: the base detector (not changed).
        method: a key of :data:`METHODS`.
        dataset: the ten-digit training set the shots index.
        shots: the k-shot draw.
        base_names: the base model's class names (label order), names of ``dataset`` classes.
        settings: fine-tuning settings (methods that fine-tune).
        seed: seed of the fine-tuning batches.

    Returns:
        ``(model, {"steps", "seconds"})``: the model has labels ``base_names`` then the novel
        classes in the order of ``shots.boxes``; seconds run from growing the copy to the adapted
        model (reading the shot images, imprinting, fine-tuning), without the copy itself.
    """
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; options: {', '.join(METHODS)}")
    _, imprint, tune = METHODS[method]
    model = copy.deepcopy(base_model).eval()
    novel = list(shots.boxes)
    novel_names = [dataset.class_names[c] for c in novel]
    started = time.perf_counter()
    new_labels = model.add_classes(len(novel), names=novel_names)
    lookup = _label_map(dataset, list(base_names) + novel_names)
    base_labels = [dataset.class_names.index(name) for name in base_names]
    images, annotations, per_class_boxes = _shot_batch(dataset, shots, base_labels, lookup)
    device = _device_of(model)
    if imprint:
        for c, label in zip(novel, new_labels):  # a few novel classes
            holds = [s for s, b in enumerate(per_class_boxes[c]) if len(b)]
            model.imprint(label, images[holds].to(device), [per_class_boxes[c][s] for s in holds])
    steps = 0
    if tune:
        steps = fine_tune(model, images, annotations, settings, seed=seed)["steps"]
    return model, {"steps": steps, "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------- evaluation
@dataclass
class _CategorySubset:
    """What :func:`dlde.coco_metrics` reads of a dataset, restricted to some categories and images."""

    annotation_file: Path
    image_ids: list[int]
    category_ids: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)


@torch.no_grad()
def _detections(model: nn.Module, dataset: CocoDetection, indices: Sequence[int], lookup_back: Tensor, *,
                batch_size: int = 32) -> list[dict]:
    """Every (box, class) pair above the model's score threshold (as :func:`dlde.evaluate`), in
    original pixels and *dataset* labels (``lookup_back``: model label -> dataset label)."""
    device = _device_of(model)
    threshold = float(getattr(model, "score_threshold", 0.05))
    out = []
    with evaluating(model):
        for start in range(0, len(indices), batch_size):
            chunk = list(indices[start:start + batch_size])
            images, _ = collate([dataset[i] for i in chunk])
            for i, (boxes, probabilities) in zip(chunk, model(images.to(device))):  # loop over images
                det = to_original(boxes, probabilities, dataset.meta(i), 100, labels="all", score_threshold=threshold)
                det["labels"] = lookup_back[det["labels"]]
                out.append(det)
    return out


def group_metrics(dataset: CocoDetection, indices: Sequence[int], detections: Sequence[Mapping[str, Any]],
                  labels: Sequence[int]) -> dict[str, float]:
    """COCO AP / AP50 / AP75 of the detections of ``labels`` (dataset labels) against those categories only.

    Args:
        dataset: the evaluation set.
        indices: the dataset indices the detections belong to (one dict each).
        detections: dicts ``boxes, scores, labels`` in original pixels and dataset labels.
        labels: the dataset labels of the group (e.g. the novel classes).
    """
    labels = [int(c) for c in labels]
    position = torch.full((len(dataset.class_names),), -1, dtype=torch.long)
    position[labels] = torch.arange(len(labels))
    subset = _CategorySubset(Path(dataset.annotation_file), [dataset.image_ids[i] for i in indices],
                             [dataset.category_ids[c] for c in labels], [dataset.class_names[c] for c in labels])
    kept = []
    for det in detections:  # loop over images
        mine = position[torch.as_tensor(det["labels"]).long()]
        keep = mine >= 0
        kept.append({"boxes": det["boxes"][keep], "scores": det["scores"][keep], "labels": mine[keep]})
    metrics = coco_metrics(subset, kept)
    return {key: metrics[key] for key in ("AP", "AP50", "AP75")} | {"per_class": metrics["per_class"]}


def _evaluate_groups(model: nn.Module, dataset: CocoDetection, indices: Sequence[int], names: Sequence[str],
                     groups: Mapping[str, Sequence[int]]) -> dict[str, dict[str, float]]:
    lookup_back = torch.as_tensor([dataset.class_names.index(n) for n in names], dtype=torch.long)
    detections = _detections(model, dataset, indices, lookup_back)
    return {group: group_metrics(dataset, indices, detections, labels) for group, labels in groups.items()}


def run_protocol(base_models: Mapping[str, nn.Module], base_names: Sequence[str], train_set: CocoDetection,
                 val_set: CocoDetection, *, novel_names: Sequence[str] = tuple(map(str, NOVEL_CLASSES)),
                 shots: Sequence[int] = SHOTS, draws: int = DRAWS, methods: Sequence[str] = tuple(METHODS),
                 settings: FineTune = FineTune(), max_eval_images: int | None = None, seed: int = 0,
                 progress: bool = False) -> dict[str, Any]:
    """The few-shot experiment: every method x k x draw, with base metrics before.

    Args:
        base_models: head name (``'dlde'``, ``'retinanet'``, ``'prototypes'``) -> base detector;
            methods whose base model is missing are skipped.
        base_names: class names of the base models, in label order (names of ``val_set``).
        train_set, val_set: the ten-digit datasets (:func:`few_shot_datasets`).
        novel_names: names of the novel classes, added in this order.
        shots: the k values; those above the number of boxes of the rarest novel class in
            ``train_set`` are skipped (listed in ``skipped_shots``; only tiny datasets have so few).
        draws: random k-shot sets per k.
        methods: keys of :data:`METHODS`.
        settings: fine-tuning settings.
        max_eval_images: evaluate on the first images of ``val_set`` only (None: all).
        seed: seed of the draws and the fine-tuning batches.
        progress: print one line per (method, k, draw).

    Returns:
        ``before``: head -> base AP/AP50 of the base model (base categories); ``rows``: one dict
        per (method, k, draw) with ``novel_AP``, ``novel_AP50``, ``base_AP``, ``base_AP50``,
        ``steps``, ``seconds``; ``settings``, ``base_names``, ``novel_names``, ``eval_images``.
    """
    indices = list(range(len(val_set) if max_eval_images is None else min(max_eval_images, len(val_set))))
    base_labels = [val_set.class_names.index(n) for n in base_names]
    novel_labels = [val_set.class_names.index(n) for n in novel_names]
    train_novel = [train_set.class_names.index(n) for n in novel_names]
    methods = [m for m in methods if METHODS[m][0] in base_models]
    before = {head: {k: v for k, v in _evaluate_groups(model, val_set, indices, base_names,
                                                           {"base": base_labels})["base"].items() if k != "per_class"}
              for head, model in base_models.items()}
    rows = []
    _, _, box_labels = _all_boxes(train_set)
    available = min(int((box_labels == c).sum()) for c in train_novel)
    skipped = [k for k in shots if k > available]
    for k in [k for k in shots if k <= available]:
        for draw in draw_shots(train_set, train_novel, k, draws, seed=seed):
            for method in methods:
                model, cost = adapt(base_models[METHODS[method][0]], method, train_set, draw, base_names=base_names,
                                    settings=settings, seed=seed + draw.draw)
                groups = _evaluate_groups(model, val_set, indices, model.class_names,
                                          {"novel": novel_labels, "base": base_labels})
                row = {"method": method, "k": k, "draw": draw.draw, **cost,
                       "novel_AP": groups["novel"]["AP"], "novel_AP50": groups["novel"]["AP50"],
                       "base_AP": groups["base"]["AP"], "base_AP50": groups["base"]["AP50"],
                       "novel_per_class_AP": groups["novel"]["per_class"]}
                rows.append(row)
                if progress:
                    print(f"{method} k={k} draw={draw.draw}: novel AP {row['novel_AP']:.3f} "
                          f"AP50 {row['novel_AP50']:.3f}, base AP {row['base_AP']:.3f} ({cost['seconds']:.1f} s)",
                          flush=True)
    return {"before": before, "rows": rows, "settings": dataclasses.asdict(settings), "base_names": list(base_names),
            "novel_names": list(novel_names), "eval_images": len(indices),
            "shots": [k for k in shots if k not in skipped],
            "skipped_shots": skipped, "draws": draws}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, standard deviation and the two-sided Student-t interval of the mean.

    NaN values are left out; with one value the interval is NaN.
    """
    from scipy.stats import t

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": int(x.size)}


SUMMARY_METRICS = ("novel_AP", "novel_AP50", "base_AP", "base_AP50", "seconds")


def summarize(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, k): :func:`mean_interval` of each metric over the draws, the steps,
    and the forgetting ``base_AP_drop`` (base AP before minus after, mean over draws)."""
    table = []
    keys = sorted({(r["method"], r["k"]) for r in result["rows"]},
                  key=lambda mk: (list(METHODS).index(mk[0]), mk[1]))
    for method, k in keys:
        rows = [r for r in result["rows"] if r["method"] == method and r["k"] == k]
        entry = {"method": method, "k": k, "draws": len(rows), "steps": rows[0]["steps"]}
        for metric in SUMMARY_METRICS:
            entry[metric] = mean_interval([r[metric] for r in rows])
        before = result["before"][METHODS[method][0]]["AP"]
        entry["base_AP_before"] = before
        after = entry["base_AP"]["mean"]
        entry["base_AP_drop"] = before - after if math.isfinite(after) else math.nan
        table.append(entry)
    return table


def _cell(stat: Mapping[str, float], digits: int = 3) -> str:
    if not math.isfinite(stat["mean"]):
        return "n/a"
    if not math.isfinite(stat["low"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The few-shot summary as a markdown table (mean [95 % interval] over draws)."""
    lines = ["| method | k | draws | novel AP | novel AP50 | base AP (before → after) | steps | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['method']} | {e['k']} | {e['draws']} | {_cell(e['novel_AP'])} | {_cell(e['novel_AP50'])} | "
                     f"{e['base_AP_before']:.3f} → {_cell(e['base_AP'])} | {e['steps']} | {_cell(e['seconds'], 1)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- open set
def _precision_at_recall(scores: np.ndarray, correct: np.ndarray, objects: int, recall: float) -> float:
    """Interpolated precision at ``recall`` (the best precision at any recall >= it); NaN if never reached."""
    if objects == 0 or scores.size == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    precision = tp / np.arange(1, tp.size + 1)
    reached = tp / objects >= recall - 1e-12
    return float(precision[reached].max()) if reached.any() else math.nan


@torch.no_grad()
def open_set_evaluation(models: Mapping[str, nn.Module], dataset: CocoDetection, known_names: Sequence[str], *,
                        max_images: int | None = None, score_threshold: float | None = None, iou: float = DEFAULT_IOU,
                        precision: float = DEFAULT_KNOWN_PRECISION, batch_size: int = 32) -> dict[str, Any]:
    """Unknown-object detection by base models on images that also hold unknown classes.

    Every detection (``model.predict``: one label per box) is matched to the ground-truth object
    of any class with the highest IoU; at IoU >= ``iou`` it is *known* when that object's class is
    in ``known_names`` and *unknown* otherwise (unmatched detections are left out). Scores
    (:mod:`dlde.analysis.openset`): ``probability`` = 1 - max class probability (every head) and, for heads
    with an embedding space, ``cosine`` = 1 - the cosine of the box's embedding
    (:func:`dlde.analysis.retrieval.box_embeddings`) to the nearest class direction (DLDENet's tracked
    means, the learned prototypes). For those heads a detection whose box gets no anchor (a
    duplicate of another detected box under another class) is left out.

    Per model and score: AUROC, the ROC curve, unknown recall at ``precision`` known precision;
    per model: ORE's wilderness impact (precision of the known detections at recall 0.8 on the
    images without unknown objects vs on all images) and absolute open-set error (unknown objects
    detected as a known class), before and after flagging the detections whose primary score
    (cosine when there is one) exceeds the threshold of ``precision``.

    Args:
        models: name -> base detector whose classes are ``known_names`` (label order).
        dataset: images with known and unknown objects (e.g. the ten-digit validation set).
        known_names: class names of the models, names of ``dataset`` classes.
        max_images: first images only (None: all).
        score_threshold: smallest detection score kept (None: each model's ``score_threshold``).
        iou: IoU of a match.
        precision: known precision of the unknown-recall operating point.
        batch_size: images per forward pass.

    Returns:
        ``{"models": name -> metrics, "scores": name -> {score: {"known", "unknown"} arrays},
        "known_objects", "unknown_objects", "images"}``.
    """
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    known = torch.as_tensor([dataset.class_names.index(n) for n in known_names], dtype=torch.long)
    unknown_labels = [c for c in range(len(dataset.class_names)) if c not in known.tolist()]
    targets = [dataset.targets(i) for i in indices]
    closed = np.array([not torch.isin(t[:, 4].long(), torch.as_tensor(unknown_labels)).any() for t in targets])
    out: dict[str, Any] = {"models": {}, "scores": {}, "images": len(indices), "closed_images": int(closed.sum()),
                           "known_objects": int(sum(torch.isin(t[:, 4].long(), known).sum() for t in targets)),
                           "unknown_objects": int(sum((~torch.isin(t[:, 4].long(), known)).sum() for t in targets))}
    for name, model in models.items():  # a few models
        device = _device_of(model)
        threshold = float(model.score_threshold if score_threshold is None else score_threshold)
        directions = model.class_directions()
        kinds = ["probability"] + (["cosine"] if directions is not None else [])
        per_image = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images, _ = collate([dataset[i] for i in chunk])
            images = images.to(device)
            predictions = model.predict(images)
            boxes = [p["boxes"][p["scores"] >= threshold] for p in predictions]
            embedded = box_embeddings(model, images, boxes) if directions is not None else [None] * len(chunk)
            for i, p, b, e in zip(chunk, predictions, boxes, embedded):  # loop over images
                keep = p["scores"] >= threshold
                if e is not None:  # a duplicate box (same box, other class) may get no anchor: left out
                    usable = e.norm(dim=1) > 0
                    keep[keep.clone()] = usable
                    b, e = b[usable], e[usable]
                scale = dataset.meta(i)["scale"]
                det = {"boxes": (b / scale).cpu(), "scores": p["scores"][keep].cpu(),
                       "labels": known[p["labels"][keep].cpu()]}
                det["probability"] = probability_unknown_score(det["scores"][:, None]) if len(b) else torch.zeros(0)
                if e is not None:
                    det["cosine"] = cosine_unknown_score(e.cpu(), directions.cpu()) if len(b) else torch.zeros(0)
                per_image.append(det)
        kind_of = np.concatenate([_object_kind(d["boxes"], t, known, iou) for d, t in zip(per_image, targets)]) \
            if per_image else np.zeros(0, np.int64)
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
        primary = "cosine" if "cosine" in kinds else "probability"
        flagged = []
        for d in per_image:  # loop over images
            labels = d["labels"].clone()
            if math.isfinite(metrics[primary]["threshold"]):
                labels[d[primary] > metrics[primary]["threshold"]] = -1
            flagged.append({"boxes": d["boxes"], "labels": labels})
        metrics["primary_score"] = primary
        metrics["wilderness_impact"] = _wilderness(per_image, targets, closed, known, iou)
        metrics["A-OSE"] = absolute_open_set_error(per_image, targets, unknown_labels, iou=iou)
        metrics["A-OSE_flagged"] = absolute_open_set_error(flagged, targets, unknown_labels, iou=iou)
        metrics["known_detections"] = int((kind_of == 0).sum())
        metrics["unknown_detections"] = int((kind_of == 1).sum())
        out["models"][name], out["scores"][name] = metrics, scores
    return out


def _object_kind(boxes: Tensor, target: Tensor, known: Tensor, iou: float) -> np.ndarray:
    """``(N,)`` per detection: 0 matches a known object, 1 an unknown one, -1 nothing (IoU < ``iou``)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if len(target) == 0:
        return np.full(len(boxes), -1, np.int64)
    best, which = box_iou(boxes.float(), target[:, :4].float()).max(dim=1)  # (N,)
    is_known = torch.isin(target[which, 4].long(), known)
    return torch.where(best >= iou, (~is_known).long(), torch.full_like(which, -1)).numpy()


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


# ------------------------------------------------------------------------------- retrieval
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
    device = _device_of(model)
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
    :func:`dlde.analysis.plotting.plot_retrieval_grid`.

    Args:
        dataset: the dataset of :func:`retrieval_evaluation`.
        retrieval: its result (``index`` and ``items``).
        queries: gallery positions to use as queries.
        k: results per query.
        pad: pixels around each crop.
    """
    from .inspection import _display_image

    index, items = retrieval["index"], retrieval["items"]
    queries = torch.as_tensor(list(queries), dtype=torch.long)
    scores, found = index.search(index.embeddings[queries], k, exclude=queries)

    def crop(position: int) -> np.ndarray:
        image = _display_image(dataset.image_path(int(items[position, 0])))
        return crop_boxes(image, items[position, 1:][None], pad=pad)[0]

    return {"query_crops": [crop(int(q)) for q in queries],
            "result_crops": [[crop(int(j)) for j in row] for row in found],
            "query_labels": index.labels[queries], "result_labels": index.labels[found], "result_scores": scores}


# ------------------------------------------------------------------------- tables, figures
def open_set_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`open_set_evaluation` without curves and score arrays (JSON-able)."""
    models = {name: {key: ({k: v for k, v in value.items() if k != "roc"} if isinstance(value, Mapping) else value)
                     for key, value in metrics.items()}
              for name, metrics in result["models"].items()}
    return {key: value for key, value in result.items() if key not in ("models", "scores")} | {"models": models}


def open_set_markdown(result: Mapping[str, Any]) -> str:
    """One row per model and score: AUROC, unknown recall at the known-precision point, WI, A-OSE."""
    lines = ["| model | score | AUROC | unknown recall (known recall) at 95 % known precision | WI @ recall 0.8 | "
             "A-OSE (flagged) |", "|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for kind in ("cosine", "probability"):
            if kind not in m:
                continue
            primary = kind == m["primary_score"]
            aose = f"{m['A-OSE']} ({m['A-OSE_flagged']})" if primary else f"{m['A-OSE']}"
            lines.append(f"| {name} | {kind} | {m[kind]['auroc']:.3f} | {m[kind]['unknown_recall']:.3f} "
                         f"({m[kind]['known_recall']:.3f}) | {m['wilderness_impact']:.3f} | {aose} |")
    return "\n".join(lines)


def retrieval_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`retrieval_evaluation` (without the index), JSON-able."""
    return {key: value for key, value in result.items() if key not in ("index", "items")}


def retrieval_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """MAP@R and Recall@k per model, then MAP@R per class."""
    ks = sorted(int(key.split("@")[1]) for key in next(iter(results.values())) if key.startswith("Recall@"))
    lines = ["| model | gallery | MAP@R | " + " | ".join(f"Recall@{k}" for k in ks) + " | ms per query |",
             "|---|---|---|" + "---|" * len(ks) + "---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['gallery']} | {r['MAP@R']:.3f} | "
                     + " | ".join(f"{r[f'Recall@{k}']:.3f}" for k in ks) + f" | {1000 * r['seconds_per_query']:.3f} |")
    classes = sorted({c for r in results.values() for c in r["per_class"]})
    lines += ["", "| model | " + " | ".join(f"MAP@R {c}" for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['per_class'][c]['MAP@R']:.3f}" if c in r["per_class"] else "n/a"
                                                for c in classes) + " |")
    return "\n".join(lines)


def images_with(dataset: CocoDetection, names: Sequence[str], n: int) -> list[int]:
    """The first ``n`` dataset indices whose image holds an object of a class in ``names``."""
    labels = torch.as_tensor([dataset.class_names.index(name) for name in names])
    return [i for i in range(len(dataset)) if torch.isin(dataset.targets(i)[:, 4].long(), labels).any()][:n]


def embedding_view(model: nn.Module, dataset: CocoDetection, *, max_images: int | None = 200, seed: int = 0,
                   n_neighbors: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UMAP (2-D) of the matched anchor embeddings with every class direction (base and imprinted).

    Returns:
        ``(points (N, 2), labels (N,) in the model's labels, mean_points (C, 2))``.
    """
    from .embeddings import project_with_means
    from .inspection import matched_embeddings

    embeddings, labels = matched_embeddings(model, dataset, max_images=max_images)
    labels = _label_map(dataset, model.class_names)[torch.as_tensor(labels)].numpy()
    keep = labels >= 0
    n_neighbors = max(2, min(n_neighbors, int(keep.sum()) - 1))
    points, mean_points = project_with_means(embeddings[keep], model.class_directions().cpu().numpy(), kind="2d",
                                             seed=seed, n_neighbors=n_neighbors)
    return points, labels[keep], mean_points


def plot_shots(summary: Sequence[Mapping[str, Any]], metric: str = "novel_AP"):
    """``metric`` against k per method: mean over draws with its 95 % interval as a band.

    Args:
        summary: :func:`summarize` rows.
        metric: one of :data:`SUMMARY_METRICS`.
    """
    import matplotlib.pyplot as plt

    from .plotting import class_colors

    methods = list(dict.fromkeys(e["method"] for e in summary))
    colors = class_colors(len(methods))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for color, method in zip(colors, methods):
        rows = [e for e in summary if e["method"] == method]
        k = np.array([e["k"] for e in rows], dtype=np.float64)
        mean = np.array([e[metric]["mean"] for e in rows], dtype=np.float64)
        low = np.array([e[metric]["low"] for e in rows], dtype=np.float64)
        high = np.array([e[metric]["high"] for e in rows], dtype=np.float64)
        ax.plot(k, mean, marker="o", color=color, label=method)
        ax.fill_between(k, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean),
                        color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ks = sorted({e["k"] for e in summary})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="shots per novel class (k)", ylabel=metric.replace("_", " "),
           title=f"{metric.replace('_', ' ')} (mean and 95 % interval over draws)")
    ax.legend(fontsize="small")
    return fig


def plot_forgetting(summary: Sequence[Mapping[str, Any]]):
    """Base AP after adding the novel classes against k per method, the base model's AP dashed."""
    import matplotlib.pyplot as plt

    from .plotting import class_colors

    methods = list(dict.fromkeys(e["method"] for e in summary))
    colors = class_colors(len(methods))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for color, method in zip(colors, methods):
        rows = [e for e in summary if e["method"] == method]
        k = np.array([e["k"] for e in rows], dtype=np.float64)
        mean = np.array([e["base_AP"]["mean"] for e in rows], dtype=np.float64)
        ax.plot(k, mean, marker="o", color=color, label=method)
        ax.axhline(rows[0]["base_AP_before"], color=color, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ks = sorted({e["k"] for e in summary})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="shots per novel class (k)", ylabel="base AP",
           title="base classes after adding the novel ones (dashed: before)")
    ax.legend(fontsize="small")
    return fig
