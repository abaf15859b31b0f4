"""A COCO-format detection dataset with contiguous labels and strict input checks."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CocoDetection"]

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class CocoDetection(Dataset):
    """Images and boxes read from a COCO ``instances`` JSON file.

    COCO category ids need not be contiguous; they are mapped to labels ``0..C-1`` in order
    of increasing category id (``category_ids[label]`` maps back). Crowd annotations
    (``iscrowd`` 1) are not returned as targets (COCOeval ignores them). Images without
    annotations are kept and give an empty (0, 5) target. Boxes of zero width or height are
    dropped with a single warning giving their count.

    Everything is checked at construction, so a bad file fails before training starts:
    malformed JSON, missing keys, duplicate ids, missing image files, annotations pointing to
    unknown images or categories, and non-finite or negative sizes or coordinates all raise
    with a message naming the file and the record.

    Each item is ``(image, annotations)``:

    - image: (3, H, W) float32 RGB in [0, 1] (or whatever ``transform`` returns).
    - annotations: (M, 5) float32 as x1, y1, x2, y2, label with corners in pixels.

    Args:
        images_dir: Folder holding the images named by each image's ``file_name``.
        annotation_file: COCO JSON with ``images``, ``annotations`` and ``categories``.
        transform: Optional callable ``(image, annotations) -> (image, annotations)``. If it
            resizes, it should expose ``scale(h, w) -> float`` (as
            :class:`dlde.transforms.DetectionTransform` does) so that :meth:`meta` reports
            the factor; without it the factor is taken as 1.0.

    Attributes:
        category_ids: label -> COCO category id.
        class_names: label -> category name.
        image_ids: dataset index -> COCO image id.
        num_classes: Number of categories C.
        annotation_file: Path of the JSON file.
        images_dir: Path of the image folder.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        transform: Transform | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.transform = transform
        data = _read_json(self.annotation_file)
        where = str(self.annotation_file)

        categories = _records(data, "categories", where)
        by_category: dict[int, str] = {}
        for i, cat in enumerate(categories):
            rec = f"{where}: categories[{i}]"
            cat_id = _int_field(cat, "id", rec)
            name = _field(cat, "name", rec)
            if cat_id in by_category:
                raise ValueError(f"{rec}: duplicate category id {cat_id}")
            by_category[cat_id] = str(name)
        self.category_ids: list[int] = sorted(by_category)
        self.class_names: list[str] = [by_category[c] for c in self.category_ids]
        self.num_classes: int = len(self.category_ids)
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

        images = _records(data, "images", where)
        self.image_ids: list[int] = []
        self._files: list[Path] = []
        self._sizes: list[tuple[int, int]] = []  # (h, w)
        index_of: dict[int, int] = {}
        for i, img in enumerate(images):
            rec = f"{where}: images[{i}]"
            image_id = _int_field(img, "id", rec)
            if image_id in index_of:
                raise ValueError(f"{rec}: duplicate image id {image_id}")
            file_name = _field(img, "file_name", rec)
            height = _number_field(img, "height", rec)
            width = _number_field(img, "width", rec)
            if height <= 0 or width <= 0 or height != int(height) or width != int(width):
                raise ValueError(f"{rec}: height and width must be positive integers")
            path = self.images_dir / str(file_name)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{rec} (id {image_id}): image file {path} does not exist"
                )
            index_of[image_id] = len(self.image_ids)
            self.image_ids.append(image_id)
            self._files.append(path)
            self._sizes.append((int(height), int(width)))

        annotations = _records(data, "annotations", where)
        rows: list[list[float]] = []
        owners: list[int] = []
        for i, ann in enumerate(annotations):  # parsing records, not a hot path
            rec = f"{where}: annotations[{i}]"
            image_id = _int_field(ann, "image_id", rec)
            cat_id = _int_field(ann, "category_id", rec)
            bbox = _field(ann, "bbox", rec)
            if image_id not in index_of:
                raise ValueError(f"{rec}: unknown image_id {image_id}")
            if cat_id not in label_of:
                raise ValueError(f"{rec}: unknown category_id {cat_id}")
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(_is_number(v) and math.isfinite(v) for v in bbox)
            ):
                raise ValueError(f"{rec}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            if min(bbox) < 0:
                raise ValueError(f"{rec}: bbox has negative values {bbox!r}")
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = bbox
            rows.append([x, y, x + w, y + h, label_of[cat_id]])
            owners.append(index_of[image_id])

        table = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        owner = np.asarray(owners, dtype=np.int64)
        degenerate = (table[:, 2] <= table[:, 0]) | (table[:, 3] <= table[:, 1])
        if degenerate.any():
            warnings.warn(
                f"{where}: dropped {int(degenerate.sum())} degenerate boxes "
                "(zero width or height)",
                stacklevel=2,
            )
            table, owner = table[~degenerate], owner[~degenerate]
        # Group rows by image: a stable sort keeps each image's annotations in file order.
        order = np.argsort(owner, kind="stable")
        table, owner = table[order], owner[order]
        bounds = np.searchsorted(owner, np.arange(len(self.image_ids) + 1))
        self._targets: list[np.ndarray] = [
            table[bounds[k] : bounds[k + 1]] for k in range(len(self.image_ids))
        ]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns image (3, H, W) float32 in [0, 1] and annotations (M, 5) float32
        ``x1, y1, x2, y2, label`` (both as changed by the transform, if any)."""
        path = self._files[index]
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
        if rgb.shape[:2] != self._sizes[index]:
            raise ValueError(
                f"{path}: image is {rgb.shape[0]}x{rgb.shape[1]} (h x w) but "
                f"{self.annotation_file} says {self._sizes[index][0]}x{self._sizes[index][1]}"
            )
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        annotations = torch.from_numpy(self._targets[index].copy())
        if self.transform is not None:
            image, annotations = self.transform(image, annotations)
        return image, annotations

    def meta(self, index: int) -> dict:
        """Returns ``image_id``, ``orig_size`` (h, w) and ``scale`` (the transform's resize
        factor, 1.0 without one) of item ``index``."""
        h, w = self._sizes[index]
        scale_fn = getattr(self.transform, "scale", None)
        scale = 1.0 if scale_fn is None else float(scale_fn(h, w))
        return {"image_id": self.image_ids[index], "orig_size": (h, w), "scale": scale}

    def targets(self, index: int) -> torch.Tensor:
        """Returns annotations (M, 5) of item ``index`` in original pixels, without loading
        the image or applying the transform."""
        return torch.from_numpy(self._targets[index].copy())


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _records(data: dict, key: str, where: str) -> list[dict]:
    if key not in data:
        raise ValueError(f"{where}: missing top-level key '{key}'")
    records = data[key]
    if not isinstance(records, list):
        raise ValueError(f"{where}: '{key}' must be a list")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: {key}[{i}] must be an object, got {rec!r}")
    return records


def _field(record: dict, key: str, rec: str):
    if key not in record:
        raise ValueError(f"{rec}: missing key '{key}' in {record!r}")
    return record[key]


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _int_field(record: dict, key: str, rec: str) -> int:
    value = _field(record, key, rec)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{rec}: '{key}' must be an integer, got {value!r}")
    return value


def _number_field(record: dict, key: str, rec: str) -> float:
    value = _field(record, key, rec)
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{rec}: '{key}' must be a finite number, got {value!r}")
    return float(value)
