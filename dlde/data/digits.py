"""A tiny synthetic detection dataset built from scikit-learn's bundled 8x8 digits.

Each canvas is a dark, slightly noisy grayscale image (stored as RGB PNG) with one to a few
upscaled digits pasted at random, non-overlapping positions. Annotations are COCO JSON with
category id = digit + 1, so the ids are not contiguous from 0 and the label mapping of
:class:`dlde.data.coco.CocoDetection` is exercised.

The 1,797 source digit images are split disjointly (stratified, 80/20 per seed) into a train
pool and a val pool, so the validation canvases only use digit images never seen in training.

Layout written under ``root``::

    dlde_digits.json              # manifest: generation arguments + source indices of each split
    train/000001.png ...
    val/000001.png ...
    annotations/instances_train.json
    annotations/instances_val.json

The manifest proves that the folder belongs to the generator: :func:`make_digits_dataset`
writes only into an empty folder or into one holding its manifest, never deletes a file, and
refuses a folder generated with different arguments. :func:`default_digits_root` derives a
folder name from the arguments, so differently-parameterized datasets never share a folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dlde.errors import ConfigError, Key

from .generated import GeneratedPaths, Generator, at_least, checked_arguments, int_range

__all__ = ["DigitsConfig", "DigitsOptions", "DigitsPaths", "default_digits_root", "make_digits_dataset"]

_DIGITS = Generator(kind="digits", identifier="dlde.digits", format_version=2,
                    default_root="dlde.data.digits.default_digits_root")
MANIFEST_NAME = _DIGITS.manifest_name  # dlde_digits.json: written first (incomplete) and last (complete) under root
_LEGACY_MANIFEST_NAME = "dataset.json"  # the manifest of format version 1
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
        set_("digit_size", int_range("digit_size", self.digit_size, minimum=1))
        set_("digits_per_image", int_range("digits_per_image", self.digits_per_image, minimum=1))
        classes = tuple(range(10)) if self.classes is None else self.classes
        set_("classes", tuple(sorted(int(c) for c in classes)))
        set_("noise", float(self.noise))
        if self.canvas_size < 1:
            raise ConfigError("{canvas_size} must be >= 1, got {got}", canvas_size=Key("canvas_size"),
                              got=self.canvas_size)
        if self.digit_size[1] > self.canvas_size:
            raise ConfigError("{digit_size} {got} does not fit in a canvas of {canvas_size} {side} px",
                              digit_size=Key("digit_size"), got=self.digit_size, canvas_size=Key("canvas_size"),
                              side=self.canvas_size)
        for name in ("train_images", "val_images"):
            if int(getattr(self, name)) < 0:
                raise ConfigError("{name} must be >= 0, got {got}", name=Key(name), got=getattr(self, name))
            set_(name, int(getattr(self, name)))
        if not self.classes:
            raise ConfigError("{classes} must hold at least one digit", classes=Key("classes"))
        if len(set(self.classes)) != len(self.classes) or not set(self.classes) <= set(range(10)):
            raise ConfigError("{classes} must be distinct digits 0..9, got {got}", classes=Key("classes"),
                              got=list(self.classes))
        if not np.isfinite(self.noise) or self.noise < 0:
            raise ConfigError("{noise} must be a finite number >= 0, got {got}", noise=Key("noise"), got=self.noise)

    def to_json(self) -> dict:
        """Returns the arguments as a JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def key(self) -> str:
        """Returns a short hash of the arguments (and of the file format): equal arguments
        give equal keys, different arguments different ones."""
        return _DIGITS.key(self.to_json())


@dataclass(frozen=True)
class DigitsPaths(GeneratedPaths):
    """Where a digits dataset lives on disk (the layout of :class:`dlde.data.generated.GeneratedPaths`)."""


def default_digits_root(base: str | Path, **params) -> Path:
    """Returns the folder under ``base`` that holds the digits dataset of ``params``.

    The name is ``digits-<key>`` with ``key`` a short hash of the arguments (see
    :meth:`DigitsConfig.key`), so two differently-parameterized datasets never share a
    folder, while equal arguments (omitted ones taking their defaults) find the same one.
    Nothing is read or written.

    Args:
        base: Parent folder, e.g. ``"data"``.
        **params: Keyword arguments of :func:`make_digits_dataset` other than ``root``
            (``seed``, ``canvas_size``, ``digit_size``, ``digits_per_image``,
            ``train_images``, ``val_images``, ``classes``, ``noise``).

    Returns:
        ``Path(base) / f"digits-{key}"``.

    Raises:
        ValueError: On an unknown parameter name or an invalid value.
    """
    return _DIGITS.folder(base, _DIGITS.config(DigitsConfig, params, "default_digits_root").to_json())


def make_digits_dataset(
    root: str | Path,
    seed: int = DigitsConfig.seed,
    *,
    canvas_size: int = DigitsConfig.canvas_size,
    digit_size: tuple[int, int] = DigitsConfig.digit_size,
    digits_per_image: tuple[int, int] = DigitsConfig.digits_per_image,
    train_images: int = DigitsConfig.train_images,
    val_images: int = DigitsConfig.val_images,
    classes: list[int] | tuple[int, ...] | None = DigitsConfig.classes,
    noise: float = DigitsConfig.noise,
) -> DigitsPaths:
    """Writes (or reuses) a synthetic digits detection dataset in COCO format.

    Each annotation's ``bbox`` is the pasted square ``[x, y, side, side]`` in pixels (not the
    tighter box around the digit's ink: sklearn digits fill most of their 8x8 cell, and a
    square box keeps the geometry simple and exact). ``area`` is ``side ** 2``, ``iscrowd``
    is 0, and an extra ``digit_index`` field names the sklearn source image.

    The output is byte-for-byte deterministic for given arguments. ``root`` must be missing,
    empty, or a folder this function wrote (it holds the manifest ``dlde_digits.json``):

    - written with identical arguments and complete: reused, nothing is rewritten;
    - written with identical arguments but incomplete (an interrupted generation): its files
      are written again;
    - written with different arguments: refused (use another ``root``, e.g. the one
      :func:`default_digits_root` derives from the arguments);
    - anything else (a non-empty folder without the manifest): refused.

    No file is ever deleted.

    Args:
        root: Output folder.
        seed: Seed of the train/val split of the source digits and of the canvases.
        canvas_size: Side of the square canvas, in pixels.
        digit_size: Inclusive range of the side of a pasted digit, in pixels.
        digits_per_image: Inclusive range of the number of digits per canvas.
        train_images: Number of training canvases.
        val_images: Number of validation canvases.
        classes: Digits that may appear (all ten for None); the others are held out and get
            no category.
        noise: Standard deviation of the background noise, as a fraction of 255.

    Returns:
        The paths of the image folders and annotation files.

    Raises:
        ValueError: On invalid arguments; when the digits cannot be placed without overlap
            (canvas too small for the requested sizes and counts); when ``root`` is not a
            folder, is a non-empty folder without the manifest, or holds a dataset of other
            arguments or an unreadable manifest.
    """
    config = DigitsConfig(
        seed=seed,
        canvas_size=canvas_size,
        digit_size=tuple(digit_size),
        digits_per_image=tuple(digits_per_image),
        train_images=train_images,
        val_images=val_images,
        classes=classes,
        noise=noise,
    )
    paths = DigitsPaths.under(Path(root))
    if _DIGITS.needs_writing(paths, config.to_json(), (config.train_images, config.val_images),
                             legacy=_read_legacy_manifest):
        _generate(paths, config)
    return paths


#: :class:`DigitsOptions` field -> argument of :func:`make_digits_dataset`.
_ARGUMENTS = {"digits_seed": "seed", "digits_canvas_size": "canvas_size", "digits_size": "digit_size",
              "digits_per_image": "digits_per_image", "digits_train_images": "train_images",
              "digits_val_images": "val_images", "digits_classes": "classes"}


@dataclass(frozen=True)
class DigitsOptions:
    """The digits as a training config sets them (``dataset='digits'``, registered in
    :data:`dlde.data.registry.DATASETS`): the arguments of :func:`make_digits_dataset` under the
    names of the config and the command line (``digits_train_images``, ``--digits-train-images``);
    ``noise`` keeps its default. Checked on construction, naming these names.

    Attributes:
        digits_seed: ``seed``, >= 0.
        digits_canvas_size: ``canvas_size``, >= 1.
        digits_size: ``digit_size``.
        digits_per_image: ``digits_per_image``.
        digits_train_images: ``train_images``, >= 1.
        digits_val_images: ``val_images``, >= 1.
        digits_classes: ``classes`` (None: all ten).
    """

    digits_seed: int = DigitsConfig.seed
    digits_canvas_size: int = DigitsConfig.canvas_size
    digits_size: tuple[int, int] = DigitsConfig.digit_size
    digits_per_image: tuple[int, int] = DigitsConfig.digits_per_image
    digits_train_images: int = DigitsConfig.train_images
    digits_val_images: int = DigitsConfig.val_images
    digits_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        at_least(self, {"digits_seed": 0, "digits_canvas_size": 1, "digits_train_images": 1, "digits_val_images": 1})
        checked_arguments(DigitsConfig, self, _ARGUMENTS)

    def arguments(self) -> dict:
        """The keyword arguments of :func:`make_digits_dataset` and :func:`default_digits_root`."""
        return {argument: getattr(self, name) for name, argument in _ARGUMENTS.items()}

    def default_root(self, base: str | Path) -> Path:
        """The folder under ``base`` named after these settings (:func:`default_digits_root`)."""
        return default_digits_root(base, **self.arguments())

    def build(self, root: str | Path) -> DigitsPaths:
        """Generate the dataset into ``root`` (or reuse it there): :func:`make_digits_dataset`."""
        return make_digits_dataset(root, **self.arguments())


def _generate(paths: DigitsPaths, config: DigitsConfig) -> None:
    """Writes every file of ``config``'s dataset: the claiming manifest first, the complete one last."""
    images, targets = _load_source_digits()
    train_pool, val_pool = _split_sources(targets, config)
    pools = {"train": (train_pool, config.train_images), "val": (val_pool, config.val_images)}

    def write_split(split: str, images_dir: Path) -> dict:
        pool, count = pools[split]
        rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
        return _write_split(rng, images, targets, pool, count, images_dir, config)

    record = {"train_source_indices": train_pool.tolist(), "val_source_indices": val_pool.tolist()}
    _DIGITS.write(paths, config.to_json(), record, write_split)


def _read_legacy_manifest(root: Path) -> dict | None:
    """The format-1 ``dataset.json`` in ``root`` (complete by construction: it was written last),
    as a manifest of the current format; ``None`` when there is no such file."""
    try:
        stored = json.loads((root / _LEGACY_MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    keys = {"format_version", "args", "train_source_indices", "val_source_indices"}
    if not isinstance(stored, dict) or set(stored) != keys or stored["format_version"] != 1:
        return None
    if not isinstance(stored["args"], dict):
        return None
    return {**stored, "generator": _DIGITS.identifier, "format_version": _DIGITS.format_version, "complete": True}


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
