"""Operations that change a trained model's classes: growing the classifier, imprinting a class from
boxes, and what few-shot fine-tuning trains (free functions over a :class:`dlde.RetinaNet`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .heads import ClassificationHead, check_growth
from .modes import evaluating
from .tracking import matched_embeddings


def add_classes(model: nn.Module, k: int, names: Sequence[str] | None = None, *,
                generator: torch.Generator | None = None) -> list[int]:
    """Grow the classifier by ``k`` classes (labels ``C .. C + k - 1``) without touching any
    existing parameter or class mean (the head's ``grow``: see
    :meth:`dlde.DirectionalClassification.grow`, :meth:`dlde.SigmoidClassification.grow`,
    :meth:`dlde.CosinePrototypeClassification.grow` for how new classes start).

    Updates ``classes``, ``class_names`` and the saved hyperparameters, so :meth:`dlde.RetinaNet.save` and
    :meth:`dlde.RetinaNet.from_checkpoint` round-trip. Parameters of the head may be replaced: build the
    optimizer after this call.

    Args:
        k: number of classes to add (>= 1).
        names: their names (default: their labels as strings).
        generator: source of the new classes' random start, for heads that draw one (the learned
            prototypes); None draws from torch's global generator, so the result then depends on
            what ran before in the process.

    Returns:
        The new labels.
    """
    k = check_growth(k)
    new = list(range(model.classes, model.classes + k))
    names = [str(label) for label in new] if names is None else [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"add_classes({k}) got {len(names)} names")
    clash = sorted(set(names) & set(model.class_names))
    if clash:
        raise ValueError(f"add_classes: class names {clash} already exist")
    model.classification.grow(k, generator=generator)
    if model.equalized_focal is not None:  # the equalized focal loss's statistics: new classes start balanced
        model.equalized_focal.grow(k)
    model.classes += k
    model.hyperparameters["classes"] = model.classes
    model.hyperparameters["class_names"] = model.class_names + names
    return new

def label_of(model: nn.Module, label: int | str) -> int:
    """A class given by label or by name, as its label."""
    if isinstance(label, str):
        if label not in model.class_names:
            raise ValueError(f"no class named {label!r}; classes: {model.class_names}")
        return model.class_names.index(label)
    if isinstance(label, bool) or int(label) != label or not 0 <= int(label) < model.classes:
        raise ValueError(f"label {label!r} is not a class of this model (0..{model.classes - 1})")
    return int(label)

@torch.no_grad()
def box_embeddings(model: nn.Module, images: Tensor, boxes: Sequence[Tensor]) -> Tensor:
    """Unit embeddings ``(N, d)`` of the anchors matched to ``boxes``, as they would be tracked
    (:func:`dlde.model.tracking.matched_embeddings`, the boxes of one image competing for anchors as
    in training). The images are embedded in eval mode (the previous mode is restored).

    Args:
        images: ``(B, 3, H, W)`` network input.
        boxes: B tensors ``(N_i, 4)`` as x1, y1, x2, y2 in network-input pixels.
    """
    if len(boxes) != len(images):
        raise ValueError(f"got {len(boxes)} box tensors for {len(images)} images")
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    most = max([len(b) for b in boxes] + [1])
    annotations = torch.full((len(images), most, 5), -1.0)  # (B, M, 5), label 0 marks a box
    for i, b in enumerate(boxes):  # loop over images
        annotations[i, :len(b), :4] = b
        annotations[i, :len(b), 4] = 0.0
    with evaluating(model):  # BatchNorm uses (and keeps) its running statistics
        return matched_embeddings(model, images, annotations)[0]


@torch.no_grad()
def imprint(model: nn.Module, label: int | str, images: Tensor, boxes: Sequence[Tensor]) -> int:
    """Set class ``label`` from boxes of it, with no gradient step (weight imprinting).

    The class's mean (DLDENet) or prototype (learned prototypes) becomes the normalized sum
    of the embeddings of the anchors matched to the boxes (:func:`box_embeddings`), the
    way a tracked mean is formed; its ``w``/``b`` follow the head's rule (the mean over the
    other classes). The sigmoid head has no embedding space and raises NotImplementedError.
    The images are embedded in eval mode, so BatchNorm statistics do not move: nothing else changes.

    Args:
        label: the class (label or name), e.g. one made by :func:`add_classes`.
        images: ``(B, 3, H, W)`` network input.
        boxes: B tensors ``(N_i, 4)`` of objects of this class, x1, y1, x2, y2 in
            network-input pixels (empty for images without one).

    Returns:
        The number of anchors the class was imprinted from.
    """
    label = label_of(model, label)
    if type(model.classification).imprint is ClassificationHead.imprint:
        model.classification.imprint(label, None)  # raises the head's own error
    embeddings = box_embeddings(model, images, boxes)
    if len(embeddings) == 0:
        raise ValueError(f"imprint: no anchor matches the boxes given for class {label}")
    model.classification.imprint(label, embeddings)
    return len(embeddings)


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier layer's parameters (what TFA-style few-shot fine-tuning trains)."""
    return model.classification.classifier_parameters()
