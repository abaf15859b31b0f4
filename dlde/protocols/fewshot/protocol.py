"""The few-shot protocol (see :mod:`dlde.protocols.fewshot`): the ten-digit datasets, k-shot draws,
adapting a grown copy of a base model by imprinting or fine-tuning, COCO AP of the novel and base
classes, and the summary over draws and base seeds (:func:`run_over_base_seeds`, :func:`summarize`).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dlde.analysis.embeddings import project_with_means
from dlde.analysis.inspection import device_of, matched_embeddings
from dlde.data.coco import CocoDetection
from dlde.data.transforms import collate
from dlde.evaluation import DEFAULT_PAIR_THRESHOLD, coco_metrics, to_original
from dlde.model.growth import add_classes, classifier_parameters, imprint
from dlde.model.modes import evaluating, training_only
from dlde.train import TrainConfig, build_datasets, default_data_root

from .methods import DEFAULT_FINE_TUNE, DRAWS, METHODS, NOVEL_CLASSES, SEED_STRIDE, SHOTS, FineTune
from .results import FewShotResult, FewShotRow

__all__ = ["Shots", "adapt", "draw_shots", "embedding_view", "few_shot_datasets", "fine_tune", "group_metrics",
           "images_with", "run_over_base_seeds", "run_protocol"]

# ------------------------------------------------------------------------------------- data
def few_shot_datasets(config, data_root: str | Path | None = None) -> tuple[CocoDetection, CocoDetection]:
    """``(train, val)`` of all ten digits, generated like the base run's ``config`` otherwise.

    Args:
        config: the base run's TrainConfig (or its dict from ``config.json``).
        data_root: folder of the ten-digit dataset; None derives one next to the base run's data
            (``<parent of config.data_root>/digits-<hash>``, or under ``data/``).

    The training set is built without flipping, so its boxes are the annotated ones.
    """
    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    if config.dataset != "digits":
        raise ValueError(f"the few-shot protocol runs on the digits, got dataset={config.dataset!r}")
    full = config.updated({"digits_classes": None, "flip_prob": 0.0})
    if data_root is None:
        data_root = default_data_root(full, Path(config.data_root).parent if config.data_root else "data")
    return build_datasets(full.updated({"data_root": str(data_root)}))


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
def fine_tune(model: nn.Module, images: Tensor, annotations: Tensor, settings: FineTune = DEFAULT_FINE_TUNE, *,
              seed: int = 0) -> dict[str, float]:
    """Train only the classifier layer of ``model`` on a k-shot set (TFA-style); returns steps and seconds.

    Everything but :func:`dlde.model.growth.classifier_parameters` is frozen (and the backbone,
    pyramid and box head stay in eval mode, so BatchNorm statistics do not move); the loss is
    the focal classification loss. Heads with tracked means keep tracking the batches.

    Args:
        model: a detector (changed in place).
        images: ``(S, 3, H, W)`` the shot images.
        annotations: ``(S, M, 5)`` their boxes in model labels (-1 rows are padding).
        settings: steps, learning rate and batch size.
        seed: seed of the batch draws.
    """
    generator = torch.Generator().manual_seed(seed)
    device = device_of(model)
    images, annotations = images.to(device), annotations.to(device)
    started = time.perf_counter()
    model.train()
    for module in (model.fpn, model.regression):
        module.eval()
    try:
        with training_only(model, classifier_parameters(model)) as trainable:
            optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
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
    return {"steps": settings.steps, "seconds": time.perf_counter() - started}


def adapt(base_model: nn.Module, method: str, dataset: CocoDetection, shots: Shots, *, base_names: Sequence[str],
          settings: FineTune = DEFAULT_FINE_TUNE, seed: int = 0) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``base_model`` grown by the novel classes of ``shots`` and adapted by ``method``.

    Args:
        base_model: the base detector (not changed).
        method: a key of :data:`METHODS`.
        dataset: the ten-digit training set the shots index.
        shots: the k-shot draw.
        base_names: the base model's class names (label order), names of ``dataset`` classes.
        settings: fine-tuning settings (methods that fine-tune).
        seed: seed of the adaptation's random draws: the novel classes' random start (heads that
            draw one: the learned prototypes) and the fine-tuning batches (:func:`fine_tune`), each
            from its own generator, so the result never depends on what ran before in the process.

    Returns:
        ``(model, {"steps", "seconds"})``: the model has labels ``base_names`` then the novel
        classes in the order of ``shots.boxes``; seconds run from growing the copy to the adapted
        model (reading the shot images, imprinting, fine-tuning), without the copy itself.
    """
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; options: {', '.join(METHODS)}")
    _, imprints, tunes = METHODS[method]
    model = copy.deepcopy(base_model).eval()
    novel = list(shots.boxes)
    novel_names = [dataset.class_names[c] for c in novel]
    started = time.perf_counter()
    new_labels = add_classes(model, len(novel), names=novel_names, generator=torch.Generator().manual_seed(seed))
    lookup = _label_map(dataset, list(base_names) + novel_names)
    base_labels = [dataset.class_names.index(name) for name in base_names]
    images, annotations, per_class_boxes = _shot_batch(dataset, shots, base_labels, lookup)
    device = device_of(model)
    if imprints:
        for c, label in zip(novel, new_labels):  # a few novel classes
            holds = [s for s, b in enumerate(per_class_boxes[c]) if len(b)]
            imprint(model, label, images[holds].to(device), [per_class_boxes[c][s] for s in holds])
    steps = 0
    if tunes:
        steps = fine_tune(model, images, annotations, settings, seed=seed)["steps"]
    return model, {"steps": steps, "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------- evaluation
@dataclass
class _CategorySubset:
    """What :func:`dlde.evaluation.coco_metrics` reads of a dataset, restricted to some categories and images."""

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
    device = device_of(model)
    threshold = float(getattr(model, "score_threshold", DEFAULT_PAIR_THRESHOLD))
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
                 settings: FineTune = DEFAULT_FINE_TUNE, max_eval_images: int | None = None, seed: int = 0,
                 progress: bool = False) -> FewShotResult:
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
        seed: seed of the draws, the novel classes' random start and the fine-tuning batches
            (draw ``j`` is adapted with seed ``seed + j``, see :func:`adapt`).
        progress: print one line per (method, k, draw).

    Returns:
        The base AP and AP50 of each base model (base categories), one row per (method, k, draw),
        and what the run was asked for.
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
                row = FewShotRow(method, k, draw.draw, cost["steps"], cost["seconds"], groups["novel"]["AP"],
                                 groups["novel"]["AP50"], groups["base"]["AP"], groups["base"]["AP50"],
                                 groups["novel"]["per_class"])
                rows.append(row)
                if progress:
                    print(f"{method} k={k} draw={draw.draw}: novel AP {row.novel_AP:.3f} "
                          f"AP50 {row.novel_AP50:.3f}, base AP {row.base_AP:.3f} ({row.seconds:.1f} s)", flush=True)
    return FewShotResult(before, rows, settings, list(base_names), list(novel_names), len(indices),
                         [k for k in shots if k not in skipped], skipped, draws)


def run_over_base_seeds(base_models: Mapping[int, Mapping[str, nn.Module]], base_names: Sequence[str],
                        train_set: CocoDetection, val_set: CocoDetection, *, seed: int = 0, progress: bool = False,
                        **protocol: Any) -> FewShotResult:
    """:func:`run_protocol` on the base models of every base seed, pooled.

    Base seed ``s`` runs with the seed ``seed + SEED_STRIDE * s`` (:data:`SEED_STRIDE`): its own
    k-shot draws and fine-tuning batches (draws nested in base seeds), so a per-seed mean over
    draws varies with the training seed and the draws alike; base seed 0 repeats the protocol of
    one base model per head exactly.

    Args:
        base_models: base seed -> head -> base detector (:class:`dlde.protocols.base_runs.BaseModels`).
        base_names, train_set, val_set: as :func:`run_protocol`.
        seed: the protocol's seed for base seed 0.
        progress: print the base seed, then one line per (method, k, draw).
        **protocol: further arguments of :func:`run_protocol` (``shots``, ``draws``, ``settings``, ...).

    Returns:
        What :func:`run_protocol` returns, with the base seed in every row, the base AP and AP50
        averaged over the base seeds (each seed's own in ``before_by_seed``) and the base seeds.
    """
    if not base_models:
        raise ValueError("run_over_base_seeds needs the base models of at least one base seed")
    results = {}
    for base_seed, models in base_models.items():  # a few base seeds
        if progress:
            print(f"base seed {base_seed}", flush=True)
        results[int(base_seed)] = run_protocol(models, base_names, train_set, val_set,
                                               seed=seed + SEED_STRIDE * int(base_seed), progress=progress, **protocol)
    first = next(iter(results.values()))
    before = {head: {key: float(np.mean([r.before[head][key] for r in results.values()])) for key in ("AP", "AP50")}
              for head in first.before}
    rows = [dataclasses.replace(row, base_seed=s) for s, r in results.items() for row in r.rows]
    return dataclasses.replace(first, before=before, rows=rows,
                               before_by_seed={s: r.before for s, r in results.items()}, base_seeds=list(results))


# ------------------------------------------------------------------------- grown models, views
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
    embeddings, labels = matched_embeddings(model, dataset, max_images=max_images)
    labels = _label_map(dataset, model.class_names)[torch.as_tensor(labels)].numpy()
    keep = labels >= 0
    n_neighbors = max(2, min(n_neighbors, int(keep.sum()) - 1))
    points, mean_points = project_with_means(embeddings[keep], model.class_directions().cpu().numpy(), kind="2d",
                                             seed=seed, n_neighbors=n_neighbors)
    return points, labels[keep], mean_points
