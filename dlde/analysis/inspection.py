"""Looking inside a trained detector: matched embeddings, sample detections, your own images."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from dlde.data.transforms import DetectionTransform, collate
from dlde.model.modes import evaluating

from .retrieval import box_embeddings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Label of a detection flagged as an unknown object (see :func:`detect_folder`); drawn dotted in grey
#: as "unknown" by :mod:`dlde.plots.detection_plots`.
UNKNOWN_LABEL = -1


def device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def matched_embeddings(model: nn.Module, dataset, *, max_images: int | None = 200, batch_size: int = 16,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of the anchors matched to ground-truth objects (the ones the means track).

    Args:
        model: a detector whose head has an embedding space (DLDENet, learned prototypes).
        dataset: a :class:`dlde.CocoDetection` (first ``max_images`` items are used).
        max_images: how many images to embed (None: all).
        batch_size: images per forward pass.
        progress: unused (kept for compatibility; the pass is short).

    Returns:
        ``(embeddings (N, d) float32, labels (N,) int64)``.
    """
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    device = device_of(model)
    collected, labels = [], []
    d = 0
    with evaluating(model):
        for images, annotations in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            anchors, embeddings = model.embeddings(images.to(device))  # TypeError for heads without embeddings
            assignment = model.assign(anchors, annotations.to(device))
            objects = assignment.objects_mask
            collected.append(embeddings[objects].cpu())
            labels.append(assignment.assigned_annotations[..., 4][objects].long().cpu())
            d = embeddings.shape[-1]
    embeddings = torch.cat(collected) if collected else torch.zeros(0, d)
    labels = torch.cat(labels) if labels else torch.zeros(0)
    return embeddings.numpy().astype(np.float32), labels.numpy().astype(np.int64)


def display_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _detect(model: nn.Module, images: list[np.ndarray], transform: DetectionTransform,
            score_threshold: float, unknown_below: float | None = None, unknown_flag=None) -> list[dict]:
    """Run the model on RGB uint8 images ``(H, W, 3)``; boxes come back in their pixels.

    With ``unknown_below`` (heads with class directions: DLDENet's means, learned prototypes)
    each detection also gets ``cosine``, the cosine of its box embedding to the nearest class
    direction, and a detection whose cosine is below ``unknown_below`` is flagged: its label
    becomes :data:`UNKNOWN_LABEL` (-1) and ``unknown`` is True. With ``unknown_flag`` (a
    :class:`dlde.analysis.unknown_flag.UnknownFlag`) its score flags instead: ``unknown_score``
    and ``unknown`` per detection.
    """
    if unknown_flag is not None and unknown_below is not None:
        raise ValueError("flag unknown objects by unknown_below or by an UnknownFlag, not both")
    device = device_of(model)
    directions = model.class_directions() if unknown_below is not None else None
    if unknown_below is not None and directions is None:
        raise TypeError(f"the {model.classification.name!r} head has no class directions to flag unknown objects")
    results = []
    for rgb in images:  # one image at a time: user images may differ in size
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
        batch, _ = transform(tensor, torch.zeros(0, 5))
        prediction = model.predict(batch[None].to(device))[0]
        scale = transform.scale(rgb.shape[0], rgb.shape[1])
        keep = prediction["scores"] >= score_threshold
        labels = prediction["labels"][keep].cpu().numpy()
        result = {"image": rgb, "scores": prediction["scores"][keep].cpu().numpy()}
        if directions is not None:
            with torch.no_grad():
                embedded = box_embeddings(model, batch[None].to(device), [prediction["boxes"][keep]])[0]
            cosine = (embedded @ directions.to(embedded).t()).max(dim=1).values.cpu().numpy()  # (N,)
            unknown = cosine < unknown_below
            labels = np.where(unknown, UNKNOWN_LABEL, labels)
            result.update(cosine=cosine, unknown=unknown)
        if unknown_flag is not None:
            flagged = unknown_flag.flag_predictions(model, batch[None].to(device), keep)
            labels = np.where(flagged["unknown"], UNKNOWN_LABEL, labels)
            result.update(flagged)
        boxes = (prediction["boxes"][keep] / scale).cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, rgb.shape[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, rgb.shape[0])
        result.update(boxes=boxes.numpy(), labels=labels)
        results.append(result)
    return results


def detection_samples(model: nn.Module, dataset, indices: Sequence[int], *, score_threshold: float = 0.3) -> list[dict]:
    """Detections on dataset items, in original pixels, with their ground truth, for
    :func:`dlde.plots.detection_plots.detection_grid` (keys ``image, boxes, labels, scores, gt_boxes``)."""
    images = [display_image(dataset.image_path(i)) for i in indices]
    samples = _detect(model, images, dataset.transform, score_threshold)
    for sample, index in zip(samples, indices):
        sample["gt_boxes"] = dataset.targets(index)[:, :4].numpy()
    return samples


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def detect_folder(model: nn.Module, folder: str | Path, *, min_size: int, max_size: int,
                  score_threshold: float = 0.3, size_divisor: int = 32,
                  unknown_below: float | None = None, unknown_flag=None) -> list[dict]:
    """Detect objects in every image of a folder.

    Returns one dict per image: ``path``, ``image (H, W, 3) uint8``, ``boxes (N, 4)`` x1, y1, x2, y2 in
    the image's pixels, ``scores (N,)``, ``labels (N,)``; with ``unknown_below`` also ``cosine (N,)``
    and ``unknown (N,)``, with ``unknown_flag`` (an :class:`dlde.analysis.unknown_flag.UnknownFlag`)
    ``unknown_score (N,)`` and ``unknown (N,)``, and flagged detections labelled -1 (see :func:`_detect`).
    """
    files = image_files(folder)
    transform = DetectionTransform(min_size=min_size, max_size=max_size, size_divisor=size_divisor)
    results = _detect(model, [display_image(path) for path in files], transform, score_threshold,
                      unknown_below=unknown_below, unknown_flag=unknown_flag)
    for result, path in zip(results, files):
        result["path"] = str(path)
    return results
