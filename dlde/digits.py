"""A tiny synthetic detection dataset built from scikit-learn's bundled 8x8 digits.

Each canvas is a dark, slightly noisy grayscale image (stored as RGB PNG) with one to a few
upscaled digits pasted at random, non-overlapping positions. Annotations are COCO JSON with
category id = digit + 1, so the ids are not contiguous from 0 and the label mapping of
:class:`dlde.coco.CocoDetection` is exercised.

The 1,797 source digit images are split disjointly (stratified, 80/20 per seed) into a train
pool and a val pool, so the validation canvases only use digit images never seen in training.

Layout written under ``root``::

    dataset.json                  # generation arguments + source indices of each split
    train/000001.png ...
    val/000001.png ...
    annotations/instances_train.json
    annotations/instances_val.json
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DigitsConfig", "DigitsPaths", "make_digits_dataset"]

_FORMAT_VERSION = 1
_VAL_FRACTION = 0.2
_BACKGROUND_LEVEL = 16.0  # mean gray level of the dark background, out of 255
_MAX_PLACEMENT_TRIES = 1000  # rejection-sampling attempts per digit
_MAX_RESTARTS = 50  # redraws of a whole canvas whose first digits block the later ones


@dataclass(frozen=True)
class DigitsConfig:
    """Arguments of one digits dataset; validated on construction.

    Attributes:
        seed: Seed of the split and of the canvases.
        canvas_size: Side of the square canvas, in pixels.
        digit_size: Inclusive range (lo, hi) of the side of a pasted digit, in pixels.
        digits_per_image: Inclusive range (lo, hi) of the number of digits per canvas.
        train_images: Number of training canvases.
        val_images: Number of validation canvases.
        classes: Sorted digits that may appear (all ten when built from ``None``).
        noise: Standard deviation of the background's Gaussian noise, as a fraction of 255.
    """

    seed: int = 0
    canvas_size: int = 128
    digit_size: tuple[int, int] = (20, 40)
    digits_per_image: tuple[int, int] = (1, 3)
    train_images: int = 2000
    val_images: int = 400
    classes: tuple[int, ...] = tuple(range(10))
    noise: float = 0.05

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # normalize a field of the frozen instance
            object.__setattr__(self, name, value)

        set_("seed", int(self.seed))
        set_("canvas_size", int(self.canvas_size))
        set_("digit_size", _int_range("digit_size", self.digit_size, minimum=1))
        set_("digits_per_image", _int_range("digits_per_image", self.digits_per_image, minimum=1))
        set_("classes", tuple(sorted(int(c) for c in self.classes)))
        set_("noise", float(self.noise))
        if self.canvas_size < 1:
            raise ValueError(f"canvas_size must be positive, got {self.canvas_size}")
        if self.digit_size[1] > self.canvas_size:
            raise ValueError(
                f"digit_size {self.digit_size} does not fit in a canvas of {self.canvas_size} px"
            )
        for name in ("train_images", "val_images"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
            set_(name, int(getattr(self, name)))
        if not self.classes:
            raise ValueError("classes must hold at least one digit")
        if len(set(self.classes)) != len(self.classes) or not set(self.classes) <= set(range(10)):
            raise ValueError(f"classes must be distinct digits 0..9, got {list(self.classes)}")
        if not np.isfinite(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")

    def to_json(self) -> dict:
        """Returns the arguments as a JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class DigitsPaths:
    """Where a digits dataset lives on disk."""

    root: Path
    train_images_dir: Path
    val_images_dir: Path
    train_annotations: Path
    val_annotations: Path


def make_digits_dataset(
    root: str | Path,
    seed: int = 0,
    *,
    canvas_size: int = 128,
    digit_size: tuple[int, int] = (20, 40),
    digits_per_image: tuple[int, int] = (1, 3),
    train_images: int = 2000,
    val_images: int = 400,
    classes: list[int] | tuple[int, ...] | None = None,
    noise: float = 0.05,
) -> DigitsPaths:
    """Writes (or reuses) a synthetic digits detection dataset in COCO format.

    Each annotation's ``bbox`` is the pasted square ``[x, y, side, side]`` in pixels (not the
    tighter box around the digit's ink: sklearn digits fill most of their 8x8 cell, and a
    square box keeps the geometry simple and exact). ``area`` is ``side ** 2``, ``iscrowd``
    is 0, and an extra ``digit_index`` field names the sklearn source image.

    The output is byte-for-byte deterministic for given arguments. If ``root`` already holds
    a dataset written with identical arguments, nothing is rewritten; otherwise the dataset
    files under ``root`` (``train/``, ``val/``, ``annotations/``, ``dataset.json``) are
    replaced.

    Args:
        root: Output folder.
        seed: Seed of the train/val split of the source digits and of the canvases.
        canvas_size: Side of the square canvas, in pixels.
        digit_size: Inclusive range of the side of a pasted digit, in pixels.
        digits_per_image: Inclusive range of the number of digits per canvas.
        train_images: Number of training canvases.
        val_images: Number of validation canvases.
        classes: Digits that may appear (default all ten); the others are held out and get
            no category.
        noise: Standard deviation of the background noise, as a fraction of 255.

    Returns:
        The paths of the image folders and annotation files.

    Raises:
        ValueError: On invalid arguments, or when the digits cannot be placed without
            overlap (canvas too small for the requested sizes and counts).
    """
    config = DigitsConfig(
        seed=seed,
        canvas_size=canvas_size,
        digit_size=tuple(digit_size),
        digits_per_image=tuple(digits_per_image),
        train_images=train_images,
        val_images=val_images,
        classes=tuple(range(10)) if classes is None else tuple(classes),
        noise=noise,
    )
    root = Path(root)
    paths = DigitsPaths(
        root=root,
        train_images_dir=root / "train",
        val_images_dir=root / "val",
        train_annotations=root / "annotations" / "instances_train.json",
        val_annotations=root / "annotations" / "instances_val.json",
    )
    if _is_complete(paths, config):
        return paths

    images, targets = _load_source_digits()
    train_pool, val_pool = _split_sources(targets, config)

    for folder in (paths.train_images_dir, paths.val_images_dir, paths.train_annotations.parent):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    manifest = root / "dataset.json"
    manifest.unlink(missing_ok=True)

    for split, pool, count, images_dir, annotation_file in (
        ("train", train_pool, config.train_images, paths.train_images_dir, paths.train_annotations),
        ("val", val_pool, config.val_images, paths.val_images_dir, paths.val_annotations),
    ):
        rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
        coco = _write_split(rng, images, targets, pool, count, images_dir, config)
        annotation_file.write_text(json.dumps(coco))

    # Written last: its presence marks a complete dataset.
    manifest.write_text(
        json.dumps(
            {
                "format_version": _FORMAT_VERSION,
                "args": config.to_json(),
                "train_source_indices": train_pool.tolist(),
                "val_source_indices": val_pool.tolist(),
            },
            indent=1,
        )
    )
    return paths


def _int_range(name: str, value, *, minimum: int) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi) of integers, got {value!r}") from None
    if not minimum <= lo <= hi:
        raise ValueError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return lo, hi


def _is_complete(paths: DigitsPaths, config: DigitsConfig) -> bool:
    manifest = paths.root / "dataset.json"
    try:
        stored = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if stored.get("format_version") != _FORMAT_VERSION or stored.get("args") != config.to_json():
        return False
    if not (paths.train_annotations.is_file() and paths.val_annotations.is_file()):
        return False
    n_train = sum(1 for _ in paths.train_images_dir.glob("*.png"))
    n_val = sum(1 for _ in paths.val_images_dir.glob("*.png"))
    return n_train == config.train_images and n_val == config.val_images


def _load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """Returns images (1797, 8, 8) uint8 in 0..255 and targets (1797,) int64 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _split_sources(targets: np.ndarray, config: DigitsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 80/20 split of the source indices, restricted to ``config.classes``.

    The split of each digit does not depend on which classes are kept, so holding classes out
    never moves a source image from one split to the other.
    """
    rng = np.random.default_rng([config.seed, 2])
    train, val = [], []
    for digit in range(10):  # ten classes, not a hot path
        members = rng.permutation(np.flatnonzero(targets == digit))
        n_val = int(round(_VAL_FRACTION * len(members)))
        if digit in config.classes:
            val.append(members[:n_val])
            train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _place(rng: np.random.Generator, sides: np.ndarray, canvas_size: int) -> np.ndarray:
    """Rejection-samples top-left corners for squares of the given sides without overlap.

    Squares are placed one after the other; when an early square blocks every position of a
    later one (a large square in the middle of a small canvas), the whole canvas is redrawn,
    up to ``_MAX_RESTARTS`` times.

    Returns:
        Corners (K, 2) as x, y in pixels.
    """
    for _ in range(_MAX_RESTARTS):
        corners = _place_once(rng, sides, canvas_size)
        if corners is not None:
            return corners
    raise ValueError(
        f"could not place {len(sides)} digits of sides {sides.tolist()} without overlap "
        f"on a {canvas_size}x{canvas_size} canvas after {_MAX_RESTARTS} restarts; "
        "use a larger canvas_size or smaller digit_size / digits_per_image"
    )


def _place_once(rng: np.random.Generator, sides: np.ndarray, canvas_size: int) -> np.ndarray | None:
    corners = np.zeros((len(sides), 2), dtype=np.int64)
    for k, side in enumerate(sides):  # at most a handful of digits per canvas
        # Vectorized over the tries: draw them all, keep the first that overlaps nothing.
        cand = rng.integers(0, canvas_size - side + 1, size=(_MAX_PLACEMENT_TRIES, 2))
        placed, placed_sides = corners[:k], sides[:k]
        # Two squares are disjoint iff they are separated along x or along y.
        sep_x = (cand[:, None, 0] + side <= placed[None, :, 0]) | (
            placed[None, :, 0] + placed_sides[None] <= cand[:, None, 0]
        )
        sep_y = (cand[:, None, 1] + side <= placed[None, :, 1]) | (
            placed[None, :, 1] + placed_sides[None] <= cand[:, None, 1]
        )
        ok = np.flatnonzero((sep_x | sep_y).all(axis=1))
        if len(ok) == 0:
            return None
        corners[k] = cand[ok[0]]
    return corners


def _write_split(
    rng: np.random.Generator,
    images: np.ndarray,
    targets: np.ndarray,
    pool: np.ndarray,
    count: int,
    images_dir: Path,
    config: DigitsConfig,
) -> dict:
    size = config.canvas_size
    coco_images, annotations = [], []
    for image_id in range(1, count + 1):  # one canvas at a time
        n = int(rng.integers(config.digits_per_image[0], config.digits_per_image[1] + 1))
        sides = rng.integers(config.digit_size[0], config.digit_size[1] + 1, size=n)
        sources = rng.choice(pool, size=n)
        corners = _place(rng, sides, size)
        canvas = rng.normal(_BACKGROUND_LEVEL, config.noise * 255.0, size=(size, size))
        canvas = canvas.clip(0, 255).astype(np.uint8)
        for source, side, (x, y) in zip(sources, sides, corners):
            digit = Image.fromarray(images[source]).resize((int(side), int(side)), Image.BILINEAR)
            region = canvas[y : y + side, x : x + side]
            np.maximum(region, np.asarray(digit), out=region)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(targets[source]) + 1,
                    "bbox": [int(x), int(y), int(side), int(side)],
                    "area": int(side) ** 2,
                    "iscrowd": 0,
                    "digit_index": int(source),
                }
            )
        file_name = f"{image_id:06d}.png"
        rgb = np.repeat(canvas[:, :, None], 3, axis=2)
        Image.fromarray(rgb).save(images_dir / file_name, format="PNG", compress_level=1)
        coco_images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in config.classes]
    return {"images": coco_images, "annotations": annotations, "categories": categories}
