"""The embedded long-tailed large-vocabulary detection dataset ``glyphs``.

Classes are characters of the fonts that ship inside matplotlib, visually distinct from each
other (:mod:`dlde.data.glyph_vocabulary`); a canvas holds several of them at a range of scales
with affine jitter, over a textured background with faint distractor strokes
(:mod:`dlde.data.glyph_canvas`). Training canvases draw every glyph in a train style of its
class, validation canvases in a held-out style (one per font family, never seen in training).

Class frequencies follow LVIS (:mod:`dlde.data.long_tail`): each class is rare, common or frequent
by the number of training images containing it (1-10, 11-100, 101-``max_images``), the share
of each bucket configurable (default LVIS v1's 337 / 461 / 405), and every class appears in
exactly its drawn number of training images, at most once per image. The number of training
canvases follows from those counts and ``glyphs_per_image``. Validation is balanced: every class
appears in about the same number of validation images, so APr, APc and APf are measured alike.

The output is COCO (readable by :class:`dlde.data.coco.CocoDetection`) and LVIS v1: categories
carry ``frequency`` ('r', 'c', 'f'), ``image_count`` and ``instance_count`` (training images
containing the class; one instance each), ``code_point`` and ``unicode_name``. The annotations
are exhaustive, so every validation image lists every class it does not contain as
``neg_category_ids`` (under LVIS's federated rules an unmatched detection then counts, as in
COCO) and ``not_exhaustive_category_ids`` is empty. Annotations carry the ``style`` drawn.
The layout, the manifest ``dlde_glyphs.json`` and the ownership rules are those of
:mod:`dlde.data.generated`; the manifest also records the classes, the styles of each split, the
font files' hashes and the realized buckets. The output is byte-for-byte deterministic for given
arguments (and fonts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dlde.errors import ConfigError, Key

from . import glyph_vocabulary as vocab
from .generated import GeneratedPaths, Generator, at_least, checked_arguments, int_range
from .glyph_canvas import draw_canvas
from .glyph_vocabulary import FAMILIES, FontStyle, GlyphClass, GlyphRenderer, build_vocabulary, vocabulary_size
from .long_tail import BUCKETS, LVIS_V1_SHARES, assign_classes, bucket_sizes, draw_image_counts, objects_per_image

__all__ = ["GlyphsConfig", "GlyphsOptions", "GlyphsPlan", "default_glyphs_root", "make_glyphs_dataset", "plan_glyphs"]

_GLYPHS = Generator(kind="glyphs", identifier="dlde.glyphs", format_version=1,
                    default_root="dlde.data.glyphs.default_glyphs_root")
MANIFEST_NAME = _GLYPHS.manifest_name
_LETTERS = tuple(BUCKETS)  # bucket index -> LVIS frequency letter: 'r', 'c', 'f'


@dataclass(frozen=True)
class GlyphsConfig:
    """Arguments of one glyphs dataset; validated on construction.

    Attributes:
        seed: Seed of the class frequencies and of the canvases (not of the vocabulary).
        classes: Number of classes ``C`` (the first ``C`` of the vocabulary).
        canvas_size: Side of the square canvas, in pixels.
        glyph_size: Inclusive range of a glyph's longer side, in pixels.
        glyphs_per_image: Inclusive range of the number of glyphs per canvas.
        val_images: Number of validation canvases.
        bucket_shares: Relative shares of rare, common and frequent classes.
        max_images: Most training images containing one (frequent) class.
        families: Font families of :data:`dlde.data.glyph_vocabulary.FAMILIES`; the first
            family's first style is the reference every class is rendered in.
        max_similarity: Largest similarity of two classes (see :mod:`dlde.data.glyph_vocabulary`).
    """

    seed: int = 0
    classes: int = 1000
    canvas_size: int = 96
    glyph_size: tuple[int, int] = (12, 24)
    glyphs_per_image: tuple[int, int] = (10, 16)
    val_images: int = 500
    bucket_shares: tuple[float, float, float] = LVIS_V1_SHARES
    max_images: int = 150
    families: tuple[str, ...] = tuple(FAMILIES)
    max_similarity: float = 0.8

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # normalize a field of the frozen instance
            object.__setattr__(self, name, value)

        for name in ("seed", "classes", "canvas_size", "val_images", "max_images"):
            set_(name, int(getattr(self, name)))
        set_("glyph_size", int_range("glyph_size", self.glyph_size, minimum=1))
        set_("glyphs_per_image", int_range("glyphs_per_image", self.glyphs_per_image, minimum=1))
        set_("bucket_shares", tuple(float(share) for share in self.bucket_shares))
        set_("families", tuple(str(family) for family in self.families))
        set_("max_similarity", float(self.max_similarity))
        if self.classes < 1:
            raise ConfigError("{classes} must be >= 1, got {got}", classes=Key("classes"), got=self.classes)
        available = vocabulary_size(self.families, self.max_similarity)
        if available is not None and self.classes > available:
            raise ConfigError("{classes} {got} is more than the {available} classes of the glyph vocabulary (the "
                              "fonts of {families} at similarity <= {similarity}); ask for at most {available}",
                              classes=Key("classes"), got=self.classes, available=available,
                              families=", ".join(self.families), similarity=self.max_similarity)
        if self.val_images < 0:
            raise ConfigError("{val_images} must be >= 0, got {got}", val_images=Key("val_images"),
                              got=self.val_images)
        if self.glyph_size[1] > self.canvas_size:
            raise ConfigError("{glyph_size} {got} does not fit in a canvas of {canvas_size} {side} px",
                              glyph_size=Key("glyph_size"), got=self.glyph_size, canvas_size=Key("canvas_size"),
                              side=self.canvas_size)
        cells = (self.canvas_size // self.glyph_size[1]) ** 2
        if self.glyphs_per_image[1] > cells:
            raise ConfigError("{per_image} {got} asks for up to {most} glyphs, more than the {cells} cells of the "
                              "canvas ({canvas_size} // the largest {glyph_size}, squared); lower {per_image}, raise "
                              "{canvas_size} or lower {glyph_size}", per_image=Key("glyphs_per_image"),
                              got=self.glyphs_per_image, most=self.glyphs_per_image[1], cells=cells,
                              canvas_size=Key("canvas_size"), glyph_size=Key("glyph_size"))
        if self.glyphs_per_image[1] > self.classes:
            raise ConfigError("{classes} {got} is fewer than the up to {most} glyphs of a canvas ({per_image} "
                              "{range}), and a class appears at most once per canvas; ask for {classes} >= {most} "
                              "or lower {per_image}", classes=Key("classes"), got=self.classes,
                              most=self.glyphs_per_image[1], per_image=Key("glyphs_per_image"),
                              range=self.glyphs_per_image)
        shares = np.asarray(self.bucket_shares)
        if len(shares) != 3 or not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
            raise ConfigError("{shares} must be three finite weights >= 0 (rare, common, frequent) with a positive "
                              "sum, got {got}", shares=Key("bucket_shares"), got=self.bucket_shares)
        if self.max_images < BUCKETS["f"][0]:
            raise ConfigError("{max_images} must be >= {least} (frequent classes), got {got}",
                              max_images=Key("max_images"), least=BUCKETS["f"][0], got=self.max_images)
        unknown = [family for family in self.families if family not in FAMILIES]
        if unknown or not self.families or len(set(self.families)) != len(self.families):
            raise ConfigError("{families} must be distinct names of {known}, got {got}", families=Key("families"),
                              known=sorted(FAMILIES), got=list(self.families))
        if not -1.0 < self.max_similarity <= 1.0:
            raise ConfigError("{similarity} must be in (-1, 1], got {got}", similarity=Key("max_similarity"),
                              got=self.max_similarity)

    def to_json(self) -> dict:
        """Returns the arguments as a JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def styles(self) -> list[FontStyle]:
        """The font styles of :attr:`families`, the reference style first."""
        return [style for family in self.families for style in FAMILIES[family]]


@dataclass(frozen=True)
class GlyphsPlan:
    """What a config decides before any glyph is drawn: labels are vocabulary ranks 0..C-1.

    Attributes:
        buckets: (C,) 0 rare, 1 common, 2 frequent.
        train_counts: (C,) training images containing each class.
        train_canvases: The labels on each training canvas.
        val_canvases: The labels on each validation canvas.
    """

    buckets: np.ndarray
    train_counts: np.ndarray
    train_canvases: list[np.ndarray]
    val_canvases: list[np.ndarray]


def plan_glyphs(config: GlyphsConfig) -> GlyphsPlan:
    """The buckets, the training counts and the classes of every canvas of ``config``."""
    rng = np.random.default_rng([config.seed, 2])
    sizes = bucket_sizes(config.classes, config.bucket_shares)
    buckets, counts = draw_image_counts(rng, sizes, config.max_images)
    capacities = objects_per_image(rng, int(counts.sum()), config.glyphs_per_image)
    if counts.max() > len(capacities):
        raise ValueError(
            f"glyphs: a class of {counts.max()} training images does not fit on the {len(capacities)} canvases "
            f"that {counts.sum()} objects fill at {config.glyphs_per_image} per image; use fewer glyphs_per_image "
            f"(a mean of at most {counts.sum() / counts.max():.1f}), a smaller max_images or more classes")
    train = assign_classes(rng, counts, capacities)
    capacities = rng.integers(config.glyphs_per_image[0], config.glyphs_per_image[1] + 1, size=config.val_images)
    total = int(capacities.sum())
    val_counts = np.full(config.classes, total // config.classes, np.int64)
    val_counts[rng.permutation(config.classes)[: total % config.classes]] += 1
    val = assign_classes(rng, val_counts, capacities) if total else []
    return GlyphsPlan(buckets, counts, train, val)


def default_glyphs_root(base: str | Path, **params) -> Path:
    """Returns the folder under ``base`` that holds the glyphs dataset of ``params``:
    ``Path(base) / f"glyphs-{key}"`` with ``key`` a short hash of the arguments (omitted ones
    taking their defaults). Nothing is read or written.

    Raises:
        ValueError: On an unknown parameter name or an invalid value.
    """
    return _GLYPHS.folder(base, _GLYPHS.config(GlyphsConfig, params, "default_glyphs_root").to_json())


def make_glyphs_dataset(root: str | Path, **params) -> GeneratedPaths:
    """Writes (or reuses) a glyphs detection dataset in COCO / LVIS format.

    ``root`` must be missing, empty, or a folder this function wrote (holding ``dlde_glyphs.json``):
    written with identical arguments and complete, it is reused; incomplete, written again; with
    other arguments, or any other non-empty folder, refused. No file is ever deleted.

    Args:
        root: Output folder.
        **params: Fields of :class:`GlyphsConfig` (``seed``, ``classes``, ``canvas_size``,
            ``glyph_size``, ``glyphs_per_image``, ``val_images``, ``bucket_shares``,
            ``max_images``, ``families``, ``max_similarity``); omitted ones take its defaults.

    Returns:
        The paths of the image folders and annotation files.

    Raises:
        ValueError: On unknown or invalid arguments; when the fonts hold fewer distinct classes
            than asked for, or the counts cannot be placed on distinct canvases; when ``root``
            may not be written (see :meth:`dlde.data.generated.Generator.claimed`).
    """
    config = _GLYPHS.config(GlyphsConfig, params, "make_glyphs_dataset")
    paths = GeneratedPaths.under(Path(root))
    plan = plan_glyphs(config)
    if _GLYPHS.needs_writing(paths, config.to_json(), (len(plan.train_canvases), config.val_images)):
        _generate(paths, config, plan)
    return paths


#: :class:`GlyphsOptions` field -> argument of :func:`make_glyphs_dataset`.
_ARGUMENTS = {"glyphs_seed": "seed", "glyphs_classes": "classes", "glyphs_canvas_size": "canvas_size",
              "glyphs_size": "glyph_size", "glyphs_per_image": "glyphs_per_image", "glyphs_val_images": "val_images",
              "glyphs_bucket_shares": "bucket_shares", "glyphs_max_images": "max_images"}


@dataclass(frozen=True)
class GlyphsOptions:
    """The glyphs as a training config sets them (``dataset='glyphs'``, registered in
    :data:`dlde.data.registry.DATASETS`): the arguments of :func:`make_glyphs_dataset` under the
    names of the config and the command line (``glyphs_classes``, ``--glyphs-classes``); ``families``
    and ``max_similarity`` keep their defaults. Checked on construction (the glyph vocabulary bounds
    the classes; nothing is drawn), naming these names.

    Attributes:
        glyphs_seed: ``seed``, >= 0.
        glyphs_classes: ``classes``.
        glyphs_canvas_size: ``canvas_size``, >= 1.
        glyphs_size: ``glyph_size``.
        glyphs_per_image: ``glyphs_per_image``.
        glyphs_val_images: ``val_images``, >= 1.
        glyphs_bucket_shares: ``bucket_shares``.
        glyphs_max_images: ``max_images``.
    """

    glyphs_seed: int = GlyphsConfig.seed
    glyphs_classes: int = GlyphsConfig.classes
    glyphs_canvas_size: int = GlyphsConfig.canvas_size
    glyphs_size: tuple[int, int] = GlyphsConfig.glyph_size
    glyphs_per_image: tuple[int, int] = GlyphsConfig.glyphs_per_image
    glyphs_val_images: int = GlyphsConfig.val_images
    glyphs_bucket_shares: tuple[float, ...] = GlyphsConfig.bucket_shares
    glyphs_max_images: int = GlyphsConfig.max_images

    def __post_init__(self) -> None:
        at_least(self, {"glyphs_seed": 0, "glyphs_canvas_size": 1, "glyphs_val_images": 1})
        checked_arguments(GlyphsConfig, self, _ARGUMENTS)

    def arguments(self) -> dict:
        """The keyword arguments of :func:`make_glyphs_dataset` and :func:`default_glyphs_root`."""
        return {argument: getattr(self, name) for name, argument in _ARGUMENTS.items()}

    def default_root(self, base: str | Path) -> Path:
        """The folder under ``base`` named after these settings (:func:`default_glyphs_root`)."""
        return default_glyphs_root(base, **self.arguments())

    def build(self, root: str | Path) -> GeneratedPaths:
        """Generate the dataset into ``root`` (or reuse it there): :func:`make_glyphs_dataset`."""
        return make_glyphs_dataset(root, **self.arguments())


def _generate(paths: GeneratedPaths, config: GlyphsConfig, plan: GlyphsPlan) -> None:
    styles = config.styles()
    renderer = GlyphRenderer(styles)
    classes = build_vocabulary(styles, config.classes, config.max_similarity, renderer)
    categories = _categories(classes, plan)
    canvases = {"train": plan.train_canvases, "val": plan.val_canvases}

    def write_split(split: str, images_dir: Path) -> dict:
        rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
        return _write_split(rng, split, canvases[split], classes, renderer, images_dir, config) | {
            "categories": categories}

    _GLYPHS.write(paths, config.to_json(), _record(config, styles, classes, plan, categories), write_split)


def _categories(classes: list[GlyphClass], plan: GlyphsPlan) -> list[dict]:
    """COCO / LVIS categories: id = vocabulary rank + 1 (a smaller dataset's ids are a prefix)."""
    return [{"id": label + 1, "name": glyph.name, "code_point": glyph.code_point, "unicode_name": glyph.unicode_name,
             "frequency": _LETTERS[int(plan.buckets[label])], "image_count": int(plan.train_counts[label]),
             "instance_count": int(plan.train_counts[label])} for label, glyph in enumerate(classes)]


def _record(config: GlyphsConfig, styles: list[FontStyle], classes: list[GlyphClass], plan: GlyphsPlan,
            categories: list[dict]) -> dict:
    """The manifest's entries beyond the arguments."""
    import matplotlib

    val_counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *plan.val_canvases]), minlength=len(classes))
    return {
        "train_images": len(plan.train_canvases),
        "styles": {split: [style.name for style in styles if style.split == split] for split in ("train", "val")},
        "fonts": {style.name: {"file": style.file, "sha256": hashlib.sha256(
            (vocab.fonts_folder() / style.file).read_bytes()).hexdigest()} for style in styles},
        "matplotlib": matplotlib.__version__,
        "vocabulary": {"reference_style": styles[0].name, "order_seed": vocab.ORDER_SEED,
                       "render_size": vocab.RENDER_SIZE, "feature_size": vocab.FEATURE_SIZE,
                       "min_ink": vocab.MIN_INK, "max_aspect": vocab.MAX_ASPECT,
                       "max_similarity": config.max_similarity},
        "buckets": {"ranges": {"r": list(BUCKETS["r"]), "c": list(BUCKETS["c"]),
                               "f": [BUCKETS["f"][0], config.max_images]},
                    "shares": list(config.bucket_shares),
                    "counts": {letter: sum(c["frequency"] == letter for c in categories) for letter in _LETTERS}},
        "classes": [{**category, "val_image_count": int(val_counts[k]), "train_styles": list(glyph.train_styles),
                     "val_styles": list(glyph.val_styles)}
                    for k, (category, glyph) in enumerate(zip(categories, classes))],
    }


def _write_split(rng: np.random.Generator, split: str, canvases: list[np.ndarray], classes: list[GlyphClass],
                 renderer: GlyphRenderer, images_dir: Path, config: GlyphsConfig) -> dict:
    """Draws and saves the canvases of ``split``; returns their COCO images and annotations."""
    images, annotations = [], []
    all_ids = np.arange(1, len(classes) + 1)
    for image_id, labels in enumerate(canvases, start=1):  # one canvas at a time
        options = [classes[label].styles(split) for label in labels]
        chosen = [names[int(rng.integers(len(names)))] for names in options]
        masks = [renderer.mask(style, classes[label].code_point) for style, label in zip(chosen, labels)]
        pixels, boxes = draw_canvas(rng, config.canvas_size, config.glyph_size, masks)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(images_dir / file_name, format="PNG", compress_level=1)
        image = {"id": image_id, "file_name": file_name, "width": config.canvas_size, "height": config.canvas_size}
        if split == "val":  # exhaustive: every absent class is a verified negative (LVIS's federated rules)
            image |= {"neg_category_ids": np.setdiff1d(all_ids, labels + 1).tolist(),
                      "not_exhaustive_category_ids": []}
        images.append(image)
        for label, style, (x, y, w, h) in zip(labels, chosen, boxes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "style": style})
    return {"images": images, "annotations": annotations}
