"""A COCO-format detection dataset with contiguous labels and strict input checks."""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Callable
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CocoDetection", "read_image"]

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_FLOAT32_MAX = float(np.finfo(np.float32).max)  # box corners beyond this become inf in float32
# What Pillow's decoders raise on a truncated, corrupt or oversized file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # Pillow's unsigned 16-bit grayscale


class CocoDetection(Dataset):
    """Images and boxes read from a COCO ``instances`` JSON file.

    COCO category ids need not be contiguous; they are mapped to labels ``0..C-1`` in order
    of increasing category id (``category_ids[label]`` maps back). Crowd annotations
    (``iscrowd`` 1) are not returned as targets (COCOeval ignores them). Images without
    annotations are kept and give an empty (0, 5) target. Boxes of zero width or height are
    dropped; boxes reaching outside their image are clipped to it, and dropped when nothing
    remains (a box fully outside); one warning per dataset gives the counts.

    Everything in the JSON is checked at construction, so a bad file fails before training
    starts: malformed JSON, missing keys, duplicate ids, missing image files, a ``file_name``
    that leaves ``images_dir`` (``../x.png``, an absolute path elsewhere), annotations
    pointing to unknown images or categories, non-finite or negative sizes, negative box
    width or height, and corners that overflow float32 (``w=1e39``) all raise with a message
    naming the file and the record. An image file that cannot be decoded (truncated,
    corrupt) raises when its item is loaded, with the image's path in the message.

    Images of any mode and bit depth load to their true [0, 1] values: 8-bit modes (``1``,
    ``L``, ``LA``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...) through an RGB conversion (alpha
    dropped) divided by 255; 16-bit grayscale (``I;16*``) divided by 65535; 32-bit integer
    (``I``) divided by the maximum of its bit depth (from a TIFF's ``BitsPerSample``, else
    16 bits when its values fit, else refused); float (``F``) kept when within [0, 1], else
    refused. Grayscale is repeated to three channels.

    Each item is ``(image, annotations)``:

    - image: (3, H, W) float32 RGB in [0, 1] (or whatever ``transform`` returns).
    - annotations: (M, 5) float32 as x1, y1, x2, y2, label with corners in pixels, inside
      the image.

    Args:
        images_dir: Folder holding the images named by each image's ``file_name``; paths
            are confined to it (checked on the path's text, so symbolic links inside it may
            point elsewhere).
        annotation_file: COCO JSON with ``images``, ``annotations`` and ``categories``.
        transform: Optional callable ``(image, annotations) -> (image, annotations)``. If it
            resizes, it should expose ``scale(h, w) -> float`` (as
            :class:`dlde.data.transforms.DetectionTransform` does) so that :meth:`meta` reports
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
        images_root = os.path.abspath(self.images_dir)
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
            if not isinstance(file_name, str) or not file_name:
                raise ValueError(f"{rec}: 'file_name' must be a non-empty string, got {file_name!r}")
            full = os.path.normpath(os.path.join(images_root, file_name))
            if os.path.commonpath([images_root, full]) != images_root or full == images_root:
                raise ValueError(
                    f"{rec} (id {image_id}): file_name {file_name!r} points outside "
                    f"images_dir {self.images_dir}"
                )
            path = self.images_dir / file_name
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
                or not all(_is_finite_number(v) for v in bbox)
            ):
                raise ValueError(f"{rec}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = bbox
            if w < 0 or h < 0:
                raise ValueError(f"{rec}: bbox has negative width or height {bbox!r}")
            if max(abs(x), abs(y), abs(x + w), abs(y + h)) > _FLOAT32_MAX:
                raise ValueError(
                    f"{rec}: bbox {bbox!r} has corners beyond float32's range (absurd values)"
                )
            if ann.get("iscrowd", 0):
                continue
            rows.append([x, y, x + w, y + h, label_of[cat_id]])
            owners.append(index_of[image_id])

        table = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        owner = np.asarray(owners, dtype=np.int64)
        table, owner = _clip_boxes(table, owner, np.asarray(self._sizes, np.float32).reshape(-1, 2), where)
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
        image = read_image(path)
        if tuple(image.shape[-2:]) != self._sizes[index]:
            raise ValueError(
                f"{path}: image is {image.shape[1]}x{image.shape[2]} (h x w) but "
                f"{self.annotation_file} says {self._sizes[index][0]}x{self._sizes[index][1]}"
            )
        annotations = torch.from_numpy(self._targets[index].copy())
        if self.transform is not None:
            image, annotations = self.transform(image, annotations)
        return image, annotations

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self._files[index]

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


def read_image(path: str | Path) -> torch.Tensor:
    """Reads an image file of any mode and bit depth as RGB values in [0, 1].

    See :class:`CocoDetection` for how each mode is scaled.

    Args:
        path: Image file.

    Returns:
        (3, H, W) float32 in [0, 1].

    Raises:
        ValueError: When the file cannot be decoded (truncated, corrupt, not an image), or
            holds values whose range cannot be told (32-bit integers beyond 16 bits without a
            TIFF bit depth, floats outside [0, 1]); the message names ``path``.
    """
    path = Path(path)
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in _SIXTEEN_BIT_MODES:
                values, top = np.asarray(pil).astype(np.float32), 65535.0  # (H, W) exact
            elif pil.mode == "I":
                values, top = np.asarray(pil), _integer_top(pil, path)
            elif pil.mode == "F":
                values, top = np.asarray(pil, dtype=np.float32), 1.0
            else:  # every 8-bit mode: RGB conversion (palette expanded, alpha dropped)
                values, top = np.asarray(pil.convert("RGB")), 255.0
    except _DECODE_ERRORS as err:
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    if pil.mode == "I":
        if values.min() < 0 or values.max() > top:
            raise ValueError(
                f"{path}: 32-bit integer image with values in [{values.min()}, {values.max()}], "
                f"outside 0..{int(top)}; convert it to 8 or 16 bits"
            )
        values = values.astype(np.float64)  # int32 -> float32 directly would round above 2**24
    if pil.mode == "F" and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise ValueError(f"{path}: float image with values outside [0, 1] (or non-finite)")
    image = torch.from_numpy(np.array(values))  # a writable copy
    image = (image / top).float() if image.dtype == torch.float64 else image.float().div_(top)
    if image.ndim == 2:
        return image.expand(3, -1, -1).contiguous()  # grayscale (H, W) -> (3, H, W)
    return image.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _integer_top(pil: Image.Image, path: Path) -> float:
    """The largest value of a mode ``I`` image's true bit depth (TIFF tag, else 16 bits)."""
    tags = getattr(pil, "tag_v2", None)
    if tags is not None and 258 in tags:  # BitsPerSample
        bits = tags[258]
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        signed = tags.get(339, 1) in (2, (2,))  # SampleFormat 2: signed integers
        return float(2 ** (bits - 1 if signed else bits) - 1)
    return 65535.0


def _clip_boxes(
    table: np.ndarray, owner: np.ndarray, sizes: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Drops zero-size boxes, clips boxes to their image and drops those left empty, with
    one warning giving the counts.

    Args:
        table: (N, 5) float32 as x1, y1, x2, y2, label.
        owner: (N,) index of each box's image.
        sizes: (I, 2) float32 as h, w of each image.
        where: File named in the warning.

    Returns:
        The kept rows of ``table`` (clipped) and of ``owner``.
    """
    degenerate = (table[:, 2] <= table[:, 0]) | (table[:, 3] <= table[:, 1])
    h, w = sizes[owner, 0], sizes[owner, 1]  # (N,) each
    clipped = table.copy()
    clipped[:, [0, 2]] = np.clip(table[:, [0, 2]], 0.0, w[:, None])
    clipped[:, [1, 3]] = np.clip(table[:, [1, 3]], 0.0, h[:, None])
    changed = (clipped[:, :4] != table[:, :4]).any(axis=1) & ~degenerate
    outside = changed & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    keep = ~degenerate & ~outside
    notes = []
    if degenerate.any():
        notes.append(f"dropped {int(degenerate.sum())} degenerate boxes (zero width or height)")
    if changed.any():
        notes.append(
            f"clipped {int(changed.sum())} boxes reaching outside their image to it "
            f"({int(outside.sum())} of them lay fully outside and were dropped)"
        )
    if notes:
        warnings.warn(f"{where}: " + "; ".join(notes), stacklevel=3)
    return clipped[keep], owner[keep]


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


def _is_finite_number(value) -> bool:
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _int_field(record: dict, key: str, rec: str) -> int:
    value = _field(record, key, rec)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{rec}: '{key}' must be an integer, got {value!r}")
    return value


def _number_field(record: dict, key: str, rec: str) -> float:
    value = _field(record, key, rec)
    if not _is_finite_number(value):
        raise ValueError(f"{rec}: '{key}' must be a finite number, got {value!r}")
    return float(value)
