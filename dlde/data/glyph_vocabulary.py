"""The classes of the glyphs dataset: characters of the fonts that ship inside matplotlib, each
visually distinct from every other.

A class is a Unicode code point; its instances are its glyph in the font styles that render it.
Every font family contributes train styles and one held-out validation style
(:data:`FAMILIES`), so validation measures generalization to unseen styles.

The vocabulary is built greedily over the candidates in a fixed pseudo-random order (it does not
depend on any dataset seed, so a smaller vocabulary is a prefix of a larger one):

1. Candidates: code points of the reference style (the first style of the first family, DejaVu
   Sans by default) in the Unicode categories letter, number, punctuation and symbol, rendered
   by at least one train and one validation style.
2. Each candidate is rendered at :data:`RENDER_SIZE` px in every style whose character map holds
   it; a style whose glyph has fewer than :data:`MIN_INK` inked pixels is blank and not used. A
   candidate is dropped when its reference glyph is blank, when it keeps no train or no
   validation style, or when one of its glyphs is more than :data:`MAX_ASPECT` times longer than
   wide or the reverse (boxes that square anchors cannot match).
3. Similarity of two classes: the largest Pearson correlation, over the styles rendering both
   (the reference style always does), of their glyph features: the inked box centred on a square,
   resized to :data:`FEATURE_SIZE` x :data:`FEATURE_SIZE` (scale-normalized, as the detector sees
   boxes of any size). A candidate more similar than ``max_similarity`` to a class already kept
   is dropped (e.g. Greek capital alpha after Latin capital A, or one of 'o' and 'O').
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

__all__ = ["FAMILIES", "VOCABULARY_SIZES", "FontStyle", "GlyphClass", "GlyphRenderer", "build_vocabulary",
           "class_similarity", "crop_to_ink", "fonts_folder", "glyph_feature", "vocabulary_size"]

RENDER_SIZE = 48  # font size in pixels of every rendered glyph (about 2x the largest pasted glyph)
FEATURE_SIZE = 16  # side of the normalized bitmap that classes are compared on
MIN_INK = 4  # pixels >= 128 a glyph needs to count as rendered
MAX_ASPECT = 2.0  # longest over shortest side of a glyph's inked box
ORDER_SEED = 0  # the fixed permutation of the candidates
_CATEGORIES = ("L", "N", "P", "S")  # Unicode major categories of the candidates
_ALPHANUMERIC = frozenset(map(ord, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@dataclass(frozen=True)
class FontStyle:
    """One font file of matplotlib's ``fonts/ttf`` folder used as a style.

    Attributes:
        name: Style name, as recorded in the annotations.
        file: File name in matplotlib's ``fonts/ttf``.
        split: ``'train'`` or ``'val'`` (held out of training).
        alphanumeric_only: Use only ``0-9A-Za-z`` (Computer Modern's TeX encoding puts other
            glyphs at the code points of ASCII punctuation).
    """

    name: str
    file: str
    split: str
    alphanumeric_only: bool = False


def _family(prefix: str, files: dict[str, str], val: str, *, alphanumeric_only: bool = False) -> tuple[FontStyle, ...]:
    return tuple(FontStyle(f"{prefix} {style}".strip(), file, "val" if style == val else "train", alphanumeric_only)
                 for style, file in files.items())


#: Font families -> styles, the held-out validation style of each family marked ``split='val'``.
FAMILIES: dict[str, tuple[FontStyle, ...]] = {
    "dejavu-sans": _family("DejaVu Sans", {"": "DejaVuSans.ttf", "Bold": "DejaVuSans-Bold.ttf",
                                           "Oblique": "DejaVuSans-Oblique.ttf",
                                           "Bold Oblique": "DejaVuSans-BoldOblique.ttf"}, val="Bold Oblique"),
    "dejavu-serif": _family("DejaVu Serif", {"": "DejaVuSerif.ttf", "Bold": "DejaVuSerif-Bold.ttf",
                                             "Bold Italic": "DejaVuSerif-BoldItalic.ttf",
                                             "Italic": "DejaVuSerif-Italic.ttf"}, val="Italic"),
    "dejavu-sans-mono": _family("DejaVu Sans Mono", {"": "DejaVuSansMono.ttf", "Oblique": "DejaVuSansMono-Oblique.ttf",
                                                     "Bold Oblique": "DejaVuSansMono-BoldOblique.ttf",
                                                     "Bold": "DejaVuSansMono-Bold.ttf"}, val="Bold"),
    "stix": _family("STIX", {"": "STIXGeneral.ttf", "Bold": "STIXGeneralBol.ttf", "Italic": "STIXGeneralItalic.ttf",
                             "Bold Italic": "STIXGeneralBolIta.ttf"}, val="Bold Italic"),
    "computer-modern": _family("Computer Modern", {"Roman": "cmr10.ttf", "Bold": "cmb10.ttf", "Italic": "cmti10.ttf",
                                                   "Typewriter": "cmtt10.ttf", "Sans": "cmss10.ttf"},
                               val="Sans", alphanumeric_only=True),
}

#: Classes in the whole vocabulary (``build_vocabulary(styles, None, max_similarity, ...)``) by
#: ``(families, max_similarity)``, measured with the fonts of matplotlib 3.11: a config asking for
#: more is refused at once (:func:`vocabulary_size`) instead of after planning and rendering.
#: ``tests/test_fail_fast.py`` rebuilds the vocabulary and checks the number.
VOCABULARY_SIZES: dict[tuple[tuple[str, ...], float], int] = {(tuple(FAMILIES), 0.8): 1462}


def vocabulary_size(families: Sequence[str], max_similarity: float) -> int | None:
    """The number of classes the fonts of ``families`` hold at ``max_similarity``, when recorded in
    :data:`VOCABULARY_SIZES` (None otherwise: :func:`build_vocabulary` counts them as it renders)."""
    return VOCABULARY_SIZES.get((tuple(families), float(max_similarity)))


@dataclass(frozen=True)
class GlyphClass:
    """One class of the vocabulary: a code point and the styles that render it."""

    code_point: int
    train_styles: tuple[str, ...]
    val_styles: tuple[str, ...]

    def styles(self, split: str) -> tuple[str, ...]:
        """The styles of ``split`` ('train' or 'val') that render the class."""
        return self.train_styles if split == "train" else self.val_styles

    @property
    def unicode_name(self) -> str:
        """The character's Unicode name, e.g. ``'LATIN CAPITAL LETTER A'``."""
        return unicodedata.name(chr(self.code_point))

    @property
    def name(self) -> str:
        """Category name: the Unicode name in lower case with underscores (``latin_capital_letter_a``)."""
        return self.unicode_name.lower().replace(" ", "_").replace("-", "_")


def fonts_folder() -> Path:
    """matplotlib's ``fonts/ttf`` folder."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


class GlyphRenderer:
    """Renders glyphs of font styles at :data:`RENDER_SIZE`, cached per (style, code point).

    Args:
        styles: The styles it may render.
    """

    def __init__(self, styles: Sequence[FontStyle]) -> None:
        self.styles = {style.name: style for style in styles}
        self._fonts: dict[str, ImageFont.FreeTypeFont] = {}
        self._masks: dict[tuple[str, int], np.ndarray | None] = {}

    def charmap(self, style: str) -> frozenset[int]:
        """The code points ``style`` has a glyph for."""
        from matplotlib.ft2font import FT2Font

        font = self.styles[style]
        codes = frozenset(FT2Font(str(fonts_folder() / font.file)).get_charmap())
        return codes & _ALPHANUMERIC if font.alphanumeric_only else codes

    def mask(self, style: str, code_point: int) -> np.ndarray | None:
        """The glyph of ``code_point`` in ``style``: (h, w) uint8 coverage cropped to its ink, or
        ``None`` when it is blank (fewer than :data:`MIN_INK` pixels >= 128)."""
        key = (style, code_point)
        if key not in self._masks:
            if style not in self._fonts:
                self._fonts[style] = ImageFont.truetype(str(fonts_folder() / self.styles[style].file), RENDER_SIZE)
            core = self._fonts[style].getmask(chr(code_point), mode="L")
            width, height = core.size
            coverage = np.array(core, dtype=np.uint8).reshape(height, width)  # (h, w)
            self._masks[key] = crop_to_ink(coverage) if (coverage >= 128).sum() >= MIN_INK else None
        return self._masks[key]


def crop_to_ink(coverage: np.ndarray) -> np.ndarray:
    """``coverage`` (h, w) cut to the rows and columns holding ink (any non-zero value)."""
    rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
    return coverage[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def glyph_feature(mask: np.ndarray) -> np.ndarray | None:
    """The comparison feature of a glyph (h, w): centred on a square, resized to
    :data:`FEATURE_SIZE` squared, zero mean and unit norm, (FEATURE_SIZE ** 2,) float32; ``None``
    for a flat bitmap (no shape to compare)."""
    h, w = mask.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = mask
    small = Image.fromarray(square).resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR)
    feature = np.asarray(small, np.float32).ravel()
    feature = feature - feature.mean()
    norm = float(np.linalg.norm(feature))
    return feature / norm if norm > 0 else None


def _features(renderer: GlyphRenderer, code_point: int, styles: Sequence[FontStyle],
              charmaps: dict[str, frozenset[int]]) -> dict[str, np.ndarray] | None:
    """Style name -> feature of every non-blank glyph of ``code_point``; ``None`` when the
    candidate is dropped (reference glyph blank, no train or no val style left, a glyph too
    elongated)."""
    features = {}
    for style in styles:
        if code_point not in charmaps[style.name]:
            continue
        mask = renderer.mask(style.name, code_point)
        if mask is None:
            continue
        if max(mask.shape) > MAX_ASPECT * min(mask.shape):
            return None
        feature = glyph_feature(mask)
        if feature is not None:
            features[style.name] = feature
    splits = {style.split for style in styles if style.name in features}
    return features if styles[0].name in features and splits == {"train", "val"} else None


class _Kept:
    """The features of the kept classes in one style: a growing (K, FEATURE_SIZE ** 2) matrix."""

    def __init__(self) -> None:
        self.rows = np.zeros((64, FEATURE_SIZE ** 2), np.float32)
        self.count = 0

    def add(self, feature: np.ndarray) -> None:
        if self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.count] = feature
        self.count += 1

    def most_similar(self, feature: np.ndarray) -> float:
        """The largest correlation of ``feature`` with a kept class (-1 when there is none)."""
        return float((self.rows[: self.count] @ feature).max()) if self.count else -1.0


def build_vocabulary(styles: Sequence[FontStyle], classes: int | None, max_similarity: float,
                     renderer: GlyphRenderer) -> list[GlyphClass]:
    """The first ``classes`` classes of the vocabulary of ``styles`` (see the module docstring).

    Args:
        styles: The font styles, the reference style first.
        classes: How many classes; ``None`` for the whole vocabulary.
        max_similarity: The largest similarity two kept classes may have.
        renderer: Renders (and caches) the glyphs; the classes' glyphs are in its cache afterwards.

    Returns:
        The classes in vocabulary order.

    Raises:
        ValueError: When the styles hold fewer than ``classes`` distinct classes.
    """
    charmaps = {style.name: renderer.charmap(style.name) for style in styles}
    in_split = {split: set().union(*(charmaps[s.name] for s in styles if s.split == split))
                for split in ("train", "val")}
    candidates = [code for code in sorted(charmaps[styles[0].name])
                  if unicodedata.category(chr(code))[0] in _CATEGORIES
                  and code in in_split["train"] and code in in_split["val"]]
    limit = len(candidates) if classes is None else classes
    kept = {style.name: _Kept() for style in styles}
    vocabulary: list[GlyphClass] = []
    for index in np.random.default_rng(ORDER_SEED).permutation(len(candidates)):
        if len(vocabulary) == limit:
            break
        code = candidates[index]
        features = _features(renderer, code, styles, charmaps)
        if features is None or any(kept[name].most_similar(feature) > max_similarity
                                   for name, feature in features.items()):
            continue
        for name, feature in features.items():
            kept[name].add(feature)
        vocabulary.append(GlyphClass(code, *(tuple(s.name for s in styles if s.split == split and s.name in features)
                                             for split in ("train", "val"))))
    if classes is not None and len(vocabulary) < classes:
        raise ValueError(f"the font styles {[s.name for s in styles]} hold {len(vocabulary)} glyph classes no more "
                         f"similar than {max_similarity}, fewer than the {classes} asked for")
    return vocabulary


def class_similarity(classes: Sequence[GlyphClass], renderer: GlyphRenderer) -> np.ndarray:
    """Similarity of every pair of classes (C, C): the largest correlation of their features over
    the styles rendering both (-1 where none does, and on the diagonal)."""
    similarity = np.full((len(classes), len(classes)), -1.0, np.float32)
    for style in renderer.styles:
        members = [k for k, c in enumerate(classes) if style in c.train_styles + c.val_styles]
        if not members:
            continue
        features = np.stack([glyph_feature(renderer.mask(style, classes[k].code_point)) for k in members])
        block = np.ix_(members, members)
        similarity[block] = np.maximum(similarity[block], features @ features.T)
    np.fill_diagonal(similarity, -1.0)
    return similarity
