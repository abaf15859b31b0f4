"""The mechanism of DLDENet in small pieces, for ``notebooks/00_mechanism.ipynb``: one batch through
the head with the shape of every stage, the score of a class against the cosine, and tracked means
fed a stream of embeddings that share one direction (as a freshly initialised encoder's do), moving
slowly at a small step and collapsing together at a large one.

Nothing here trains; every function is deterministic (seeded generators, no global random state).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlde.model.directional import cosine_probability
from dlde.model.growth import add_classes, box_embeddings, imprint
from dlde.model.means import TrackedMeans, means_diagnostics
from dlde.model.modes import evaluating
from dlde.model.tracking import matched_embeddings


@dataclass(frozen=True)
class Stage:
    """One stage of :func:`walk_batch`: its name, what it holds and the shape of its tensor."""

    name: str
    shape: tuple[int, ...]
    what: str


@torch.no_grad()
def walk_batch(model: nn.Module, images: Tensor, annotations: Tensor) -> tuple[list[Stage], dict[str, Tensor]]:
    """One batch through a DLDENet detector, stage by stage, without changing the model.

    The images go through the backbone and pyramid, the head's encoder (unit embeddings), the
    cosine to every class mean and the scaled sigmoid (class probabilities); the anchors matched
    to ``annotations`` are then tracked once, on a copy of the model in training mode, to show the
    tracking step (how far each class mean turned).

    Args:
        model: a detector whose head has tracked means (DLDENet).
        images: ``(B, 3, H, W)`` network input.
        annotations: ``(B, M, 5)`` x1, y1, x2, y2, label; -1 rows are padding.

    Returns:
        The stages in order, and their tensors by name (``embeddings``, ``cosines``,
        ``probabilities``, ``matched``, ``labels``, ``turn_deg``).
    """
    if model.tracked_means is None:
        raise TypeError(f"the {model.classification.name!r} head keeps no tracked means")
    head = model.classification
    with evaluating(model):
        images = model.check_images(images)
        pyramid = model.fpn(images)
        anchors, embeddings = model.embeddings(images)  # (B, A, 4), (B, A, d)
        means = model.tracked_means.means
        cosines = embeddings @ F.normalize(means, dim=1).t()  # (B, A, C)
        probabilities = head.classify(embeddings)  # (B, A, C)
        matched, labels = matched_embeddings(model, images, annotations)  # (N, d), (N,)
    tracked = copy.deepcopy(model).train()
    before = tracked.tracked_means.means.clone()
    tracked(images, annotations)  # one training forward: scores, then tracks the batch
    after = tracked.tracked_means.means
    turn = torch.rad2deg(torch.arccos((F.normalize(before, dim=1) * F.normalize(after, dim=1)).sum(1).clamp(-1, 1)))
    stages = [Stage("images", tuple(images.shape), "B images, 3 channels, H x W pixels")]
    stages += [Stage(f"pyramid level {level}", tuple(x.shape), f"features at stride {2 ** level}")
               for level, x in zip(model.fpn_levels, pyramid)]
    stages += [
        Stage("anchors", tuple(anchors.shape), "A anchors over all levels, x1 y1 x2 y2"),
        Stage("embeddings", tuple(embeddings.shape), "a unit vector of d numbers per anchor"),
        Stage("class means", tuple(means.shape), "one unit direction per class, tracked (no gradient)"),
        Stage("cosines", tuple(cosines.shape), "cosine of every anchor's embedding to every class mean"),
        Stage("probabilities", tuple(probabilities.shape), "p_c = sigmoid(|w_c|(s_c + b_c)) / sigmoid(|w_c|(1 + b_c))"),
        Stage("matched embeddings", tuple(matched.shape), "embeddings of the anchors matched to a box: tracked"),
        Stage("turn of each mean", tuple(turn.shape), "degrees each class mean turned in one tracking step"),
    ]
    tensors = {"embeddings": embeddings, "cosines": cosines, "probabilities": probabilities, "matched": matched,
               "labels": labels, "turn_deg": turn}
    return stages, tensors


def probability_curves(pairs: Sequence[tuple[float, float]],
                       points: int = 201) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``"w=.., b=.." -> (cosines, p)`` of :func:`dlde.model.directional.cosine_probability` over
    cosines from -1 to 1, for each ``(w, b)``."""
    cosines = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    return {f"w={w:g}, b={b:g}": (cosines.numpy(), cosine_probability(cosines, w, b).numpy()) for w, b in pairs}


def shared_direction_stream(classes: int, d: int, batches: int, *, shared: float = 0.95, own: float = 0.3,
                            noise: float = 0.05, per_class: int = 4, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of unit embeddings like those of a freshly initialised encoder: all share one large
    direction ``u``, each class adds a small direction ``v_c`` of its own (orthonormal), plus noise:
    ``normalize(shared u + own v_c + noise)``, ``per_class`` of every class per batch.

    Yields:
        ``(embeddings (per_class * C, d), labels (per_class * C,))``.
    """
    if d < classes + 1:
        raise ValueError(f"d must exceed the number of classes ({classes}) for orthonormal directions, got {d}")
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, classes + 1, generator=generator, dtype=torch.float64)).Q.t().float()
    common, directions = basis[0], basis[1:]  # (d,), (C, d)
    labels = torch.arange(classes).repeat(per_class)
    for _ in range(batches):
        jitter = noise * torch.randn(len(labels), d, generator=generator)
        yield F.normalize(shared * common + own * directions[labels] + jitter, dim=1), labels


def track_stream(lr: float, *, classes: int = 10, d: int = 32, batches: int = 300, center_momentum: float = 0.0,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Tracked means (orthonormal starts, step ``lr``) fed :func:`shared_direction_stream`.

    Returns:
        ``angle_to_start`` ``(batches + 1,)``: degrees class 0's mean turned from its start;
        ``min_angle`` ``(batches + 1,)``: the smallest angle between two means (small: they collapsed).
    """
    means = TrackedMeans(classes, d, lr=lr, center_momentum=center_momentum)
    means.initialize("orthogonal", generator=torch.Generator().manual_seed(seed))
    start = means.means.clone()
    turned, smallest = [0.0], [means_diagnostics(means.means, start)["means_min_angle"]]
    for embeddings, labels in shared_direction_stream(classes, d, batches, seed=seed + 1):
        means.update(means.centered(embeddings), labels, raw=embeddings)
        turned.append(float(torch.rad2deg(torch.arccos((means.means[0] @ start[0]).clamp(-1, 1)))))
        smallest.append(means_diagnostics(means.means, start)["means_min_angle"])
    return {"angle_to_start": np.array(turned), "min_angle": np.array(smallest)}


def boxes_of_class(dataset, label: int, shots: int) -> tuple[Tensor, list[Tensor]]:
    """The first ``shots`` images of ``dataset`` that hold class ``label``, with that class's boxes:
    ``(images (k, 3, H, W), [boxes (n_i, 4)])`` (deterministic: dataset order).

    Raises:
        ValueError: fewer than ``shots`` images hold the class.
    """
    images, boxes = [], []
    for index in range(len(dataset)):  # loop over images, until enough are found
        image, annotations = dataset[index]
        chosen = annotations[annotations[:, 4] == label, :4]
        if len(chosen):
            images.append(image)
            boxes.append(chosen)
        if len(images) == shots:
            return torch.stack(images), boxes
    raise ValueError(f"only {len(images)} images of {len(dataset)} hold class {label}; asked for {shots}")


@torch.no_grad()
def imprinted_class(model: nn.Module, label: int, images: Tensor, boxes: Sequence[Tensor]) -> dict[str, float]:
    """Imprint a NEW class from boxes of class ``label`` on a copy of ``model`` (the model is not
    changed): one more class mean, set from the embeddings of the anchors matched to the boxes, no
    gradient step (:func:`dlde.model.growth.add_classes`, :func:`dlde.model.growth.imprint`).

    Returns:
        ``anchors``: the anchors it was imprinted from; ``cosine_to_tracked``: cosine between the new
        mean and the tracked mean of ``label`` (the same objects, seen by tracking over a whole
        training run); ``score_new`` / ``score_tracked``: the mean probability the new class and
        ``label`` give the matched anchors of the boxes.
    """
    grown = copy.deepcopy(model).eval()
    new = add_classes(grown, 1, [f"new ({grown.class_names[label]})"], generator=torch.Generator().manual_seed(0))[0]
    anchors = imprint(grown, new, images, boxes)
    means = F.normalize(grown.tracked_means.means, dim=1)
    probabilities = grown.classification.classify(box_embeddings(grown, images, boxes))  # (N, C + 1)
    return {"anchors": anchors, "cosine_to_tracked": float(means[new] @ means[label]),
            "score_new": float(probabilities[:, new].mean()), "score_tracked": float(probabilities[:, label].mean())}
