"""Running a trained detector on images: dataset items with their ground truth (:func:`detection_samples`)
and a folder of your own images (:func:`detect_folder`), optionally flagging unknown objects
(:class:`dlde.inference.unknown_flag.UnknownFlag`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dlde.analysis.inspection import device_of
from dlde.analysis.retrieval import box_embeddings
from dlde.data.transforms import DetectionTransform

__all__ = ["IMAGE_SUFFIXES", "UNKNOWN_LABEL", "detect_folder", "detection_samples", "display_image", "image_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Label of a detection flagged as an unknown object (see :func:`detect_folder`); drawn dotted in grey
#: as "unknown" by :mod:`dlde.plots.detection_plots`.
UNKNOWN_LABEL = -1


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
    :class:`dlde.inference.unknown_flag.UnknownFlag`) its score flags instead: ``unknown_score``
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
    and ``unknown (N,)``, with ``unknown_flag`` (an :class:`dlde.inference.unknown_flag.UnknownFlag`)
    ``unknown_score (N,)`` and ``unknown (N,)``, and flagged detections labelled -1 (see :func:`_detect`).
    """
    files = image_files(folder)
    transform = DetectionTransform(min_size=min_size, max_size=max_size, size_divisor=size_divisor)
    results = _detect(model, [display_image(path) for path in files], transform, score_threshold,
                      unknown_below=unknown_below, unknown_flag=unknown_flag)
    for result, path in zip(results, files):
        result["path"] = str(path)
    return results
