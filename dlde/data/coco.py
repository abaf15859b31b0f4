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

from .coco_files import CocoFiles, CocoOptions
from .long_tail import BUCKETS

__all__ = ["CocoDetection", "CocoFiles", "CocoOptions", "read_image"]

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
    starts: a folder or missing file given as ``annotation_file``, malformed JSON, missing keys,
    an empty ``categories`` list, duplicate ids, missing image files, a ``file_name``
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

    The LVIS v1 format loads too: an image without ``file_name`` is found by its ``coco_url``'s
    last part (``000000397133.jpg``) in ``images_dir``, else by its last two parts
    (``val2017/000000397133.jpg``: LVIS v1's val images come from both COCO 2017 folders, so
    ``images_dir`` can be the COCO folder holding them); categories may carry LVIS's
    ``frequency`` (``r``, ``c``, ``f``), and images its federated fields ``neg_category_ids``
    (classes verified absent) and ``not_exhaustive_category_ids`` (classes not all of whose
    instances are annotated). Each is all or nothing: given for every record or for none.

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
        frequencies: label -> frequency bucket (``r`` rare, ``c`` common, ``f`` frequent), from
            the categories' ``frequency``; None when they have none.
        neg_category_ids: dataset index -> frozenset of the category ids verified absent from the
            image (LVIS's federated annotation); None when the images have no such field.
        not_exhaustive_category_ids: dataset index -> frozenset of the category ids whose
            instances are not all annotated in the image; None likewise.
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

        by_category = _read_categories(data, where)
        self.category_ids: list[int] = sorted(by_category)
        self.class_names: list[str] = [by_category[c] for c in self.category_ids]
        self.num_classes: int = len(self.category_ids)
        self.frequencies: list[str] | None = _read_frequencies(data, where, self.category_ids)
        label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids)}

        # Ids, files and (h, w) sizes of the images, in file order.
        self.image_ids, self._files, self._sizes = _read_images(data, where, self.images_dir)
        index_of = {image_id: index for index, image_id in enumerate(self.image_ids)}
        self.neg_category_ids: list[frozenset[int]] | None
        self.not_exhaustive_category_ids: list[frozenset[int]] | None
        self.neg_category_ids, self.not_exhaustive_category_ids = _read_federated(data, where, label_of)

        table, owner = _read_annotations(data, where, index_of, label_of)
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

    @property
    def is_federated(self) -> bool:
        """Whether the images carry LVIS's federated fields (``neg_category_ids`` and
        ``not_exhaustive_category_ids``), which change how detections are scored."""
        return self.neg_category_ids is not None

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


def _read_categories(data: dict, where: str) -> dict[int, str]:
    """Category id -> name, checked (at least one category, unique integer ids)."""
    categories = _records(data, "categories", where)
    if not categories:
        raise ValueError(f"{where}: 'categories' is empty: a detection dataset needs at least one "
                         "category (id and name) for its labels")
    by_category: dict[int, str] = {}
    for i, cat in enumerate(categories):
        rec = f"{where}: categories[{i}]"
        cat_id = _int_field(cat, "id", rec)
        name = _field(cat, "name", rec)
        if cat_id in by_category:
            raise ValueError(f"{rec}: duplicate category id {cat_id}")
        by_category[cat_id] = str(name)
    return by_category


def _read_images(data: dict, where: str, images_dir: Path) -> tuple[list[int], list[Path], list[tuple[int, int]]]:
    """Image ids, files (confined to ``images_dir``, existing) and ``(h, w)`` sizes, in file order."""
    images_root = os.path.abspath(images_dir)
    image_ids: list[int] = []
    files: list[Path] = []
    sizes: list[tuple[int, int]] = []
    seen: set[int] = set()
    for i, img in enumerate(_records(data, "images", where)):
        rec = f"{where}: images[{i}]"
        image_id = _int_field(img, "id", rec)
        if image_id in seen:
            raise ValueError(f"{rec}: duplicate image id {image_id}")
        file_name = _file_name(img, rec, images_dir)
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
                f"images_dir {images_dir}"
            )
        path = images_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"{rec} (id {image_id}): image file {path} does not exist"
            )
        seen.add(image_id)
        image_ids.append(image_id)
        files.append(path)
        sizes.append((int(height), int(width)))
    return image_ids, files, sizes


_FREQUENCIES = tuple(BUCKETS)  # LVIS's buckets: rare, common, frequent


def _all_or_none(records: list[dict], keys: tuple[str, ...], name: str, where: str) -> bool:
    """Whether ``records`` carry ``keys``: True when every record has them all, False when none has
    any; anything in between raises naming the first record that lacks one."""
    if not any(key in rec for rec in records for key in keys):
        return False
    for i, rec in enumerate(records):
        missing = [key for key in keys if key not in rec]
        if missing:
            raise ValueError(f"{where}: {name}[{i}] lacks {', '.join(map(repr, missing))}, which other "
                             f"{name} have: give it for every record or for none")
    return True


def _read_frequencies(data: dict, where: str, category_ids: list[int]) -> list[str] | None:
    """Label -> LVIS frequency bucket (``r``, ``c``, ``f``), or None when no category has one."""
    categories = data["categories"]
    if not _all_or_none(categories, ("frequency",), "categories", where):
        return None
    by_category = {}
    for i, cat in enumerate(categories):
        if cat["frequency"] not in _FREQUENCIES:
            raise ValueError(f"{where}: categories[{i}]: 'frequency' must be one of "
                             f"{', '.join(_FREQUENCIES)} (rare, common, frequent), got {cat['frequency']!r}")
        by_category[cat["id"]] = cat["frequency"]
    return [by_category[cat_id] for cat_id in category_ids]


def _read_federated(
    data: dict, where: str, label_of: dict[int, int]
) -> tuple[list[frozenset[int]], list[frozenset[int]]] | tuple[None, None]:
    """Per image in file order, LVIS's ``neg_category_ids`` and ``not_exhaustive_category_ids`` as
    sets of known category ids; None and None when no image has them."""
    keys = ("neg_category_ids", "not_exhaustive_category_ids")
    images = data["images"]
    if not _all_or_none(images, keys, "images", where):
        return None, None
    fields: tuple[list[frozenset[int]], list[frozenset[int]]] = ([], [])
    for i, img in enumerate(images):
        for key, out in zip(keys, fields):
            ids = img[key]
            if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
                raise ValueError(f"{where}: images[{i}]: '{key}' must be a list of category ids, got {ids!r}")
            unknown = sorted(set(ids) - label_of.keys())
            if unknown:
                raise ValueError(f"{where}: images[{i}]: '{key}' holds unknown category ids {unknown}")
            out.append(frozenset(ids))
    return fields


def _file_name(img: dict, rec: str, images_dir: Path):
    """The image's ``file_name``, else the last part of its ``coco_url`` (LVIS v1), else the last
    two parts when only they name a file in ``images_dir``; checked by the caller."""
    if "file_name" in img or "coco_url" not in img:
        return _field(img, "file_name", rec)
    url = img["coco_url"]
    if not isinstance(url, str) or not url.rstrip("/"):
        raise ValueError(f"{rec}: 'coco_url' must be a URL string, got {url!r}")
    parts = url.rstrip("/").split("/")
    if len(parts) > 1 and not (images_dir / parts[-1]).is_file() and (images_dir / parts[-2] / parts[-1]).is_file():
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def _read_annotations(
    data: dict, where: str, index_of: dict[int, int], label_of: dict[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The non-crowd boxes as ``(N, 5)`` float32 x1, y1, x2, y2, label and ``(N,)`` image index,
    in file order; absurd or malformed records raise naming the record."""
    rows: list[list[float]] = []
    owners: list[int] = []
    for i, ann in enumerate(_records(data, "annotations", where)):  # parsing records, not a hot path
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
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5), np.asarray(owners, dtype=np.int64)


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
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.json"))[:3]
        holds = f" (it holds {', '.join(inside)})" if inside else ""
        raise FileNotFoundError(f"annotation file {path} is a folder, not a COCO JSON file{holds}; "
                                "pass the instances JSON file itself")
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
