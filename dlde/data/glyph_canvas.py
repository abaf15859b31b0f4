"""One cluttered canvas of the glyphs dataset: a textured background, faint distractor strokes, and
glyphs with affine jitter, each in its own cell of a grid.

The canvas (side ``S``) is cut into an ``n x n`` grid with ``n = S // largest glyph side``; every
glyph takes a distinct cell, at a random position inside it, so boxes never overlap. A glyph is
its rendered coverage rotated by up to :data:`MAX_ROTATION` degrees and sheared by up to
:data:`MAX_SHEAR`, then resized so that its longer side is the drawn side; its box is the box of
its pixels with coverage >= :data:`MIN_ALPHA` (fainter rim pixels are not pasted), exact in pixels.
Everything is drawn from one ``numpy`` Generator, so a canvas is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .glyph_vocabulary import crop_to_ink

__all__ = ["draw_canvas"]

BACKGROUND_LEVEL = (10.0, 80.0)  # range of a canvas's mean level per channel, out of 255
TEXTURE_GRID = 5  # the texture: random levels on a (5, 5) grid, bicubic-upsampled to the canvas
TEXTURE_SD = 16.0  # their standard deviation, in gray levels
NOISE_SD = 5.0  # per-pixel Gaussian noise
STROKES = (2, 6)  # inclusive range of faint distractor strokes (polylines and arcs) per canvas
STROKE_CONTRAST = (20.0, 50.0)  # a canvas's strokes: this far above its mean level (glyph ink is >= 70)
INK_LEVEL = (150.0, 255.0)  # range of a glyph's colour per channel
MAX_ROTATION = 10.0  # degrees
MAX_SHEAR = 0.2  # horizontal shear factor
MIN_ALPHA = 0.1  # coverage of the outermost pasted pixels of a glyph


def draw_canvas(rng: np.random.Generator, size: int, glyph_size: tuple[int, int],
                masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Draws one canvas holding the given glyphs.

    Args:
        rng: The source of every random choice.
        size: Side ``S`` of the square canvas, in pixels.
        glyph_size: Inclusive range of a glyph's longer side, in pixels.
        masks: Rendered glyphs (h, w) uint8 coverage, one per object (at most ``n * n``).

    Returns:
        image (S, S, 3) uint8 RGB; boxes (K, 4) int64 as x, y, width, height in pixels.
    """
    canvas, level = _background(rng, size)
    _add_strokes(rng, canvas, level)
    cells_per_side = size // glyph_size[1]
    edges = (np.arange(cells_per_side + 1) * size) // cells_per_side  # (n + 1,) cell borders
    cells = rng.choice(cells_per_side ** 2, size=len(masks), replace=False)
    boxes = np.zeros((len(masks), 4), np.int64)
    for k, (mask, cell) in enumerate(zip(masks, cells)):  # a handful of glyphs per canvas
        alpha = _jitter(rng, mask, int(rng.integers(glyph_size[0], glyph_size[1] + 1)))  # (h, w)
        h, w = alpha.shape
        row, col = divmod(int(cell), cells_per_side)
        x = int(edges[col] + rng.integers(0, edges[col + 1] - edges[col] - w + 1))
        y = int(edges[row] + rng.integers(0, edges[row + 1] - edges[row] - h + 1))
        ink = rng.uniform(*INK_LEVEL, size=3)
        region = canvas[y : y + h, x : x + w]
        region += (ink - region) * alpha[:, :, None]
        boxes[k] = (x, y, w, h)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark textured background (S, S, 3) float32 and its mean level (3,)."""
    level = rng.uniform(*BACKGROUND_LEVEL, size=3)
    coarse = rng.normal(0.0, TEXTURE_SD, size=(3, TEXTURE_GRID, TEXTURE_GRID)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(channel).resize((size, size), Image.BICUBIC))
                        for channel in coarse], axis=-1)  # (S, S, 3)
    noise = rng.normal(0.0, NOISE_SD, size=(size, size, 3))
    return (level + texture + noise).astype(np.float32), level


def _add_strokes(rng: np.random.Generator, canvas: np.ndarray, level: np.ndarray) -> None:
    """Blends faint polylines and arcs into ``canvas`` (S, S, 3), in place."""
    size = canvas.shape[0]
    count = int(rng.integers(STROKES[0], STROKES[1] + 1))
    points = rng.uniform(0, size, size=(count, 3, 2))  # three (x, y) points per stroke
    arcs = rng.random(count) < 0.5
    widths = rng.integers(1, 3, size=count)
    angles = rng.uniform(0, 360, size=(count, 2))
    shade = level + rng.uniform(*STROKE_CONTRAST)
    layer = Image.new("L", (size, size))
    draw = ImageDraw.Draw(layer)
    for stroke, arc, width, (start, end) in zip(points, arcs, widths, angles):  # a few strokes
        if arc:
            (x0, x1), (y0, y1) = np.sort(stroke[:2, 0]), np.sort(stroke[:2, 1])
            draw.arc((x0, y0, x1 + 1, y1 + 1), start, end, fill=255, width=int(width))
        else:
            draw.line([tuple(point) for point in stroke], fill=255, width=int(width))
    alpha = np.asarray(layer, np.float32)[:, :, None] / 255.0  # (S, S, 1)
    canvas += (shade - canvas) * alpha


def _jitter(rng: np.random.Generator, mask: np.ndarray, side: int) -> np.ndarray:
    """``mask`` (h, w) rotated, sheared and resized to longer side ``side``: coverage (h', w')
    float32 in [0, 1], cut to the pixels >= :data:`MIN_ALPHA`."""
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    shear = rng.uniform(-MAX_SHEAR, MAX_SHEAR)
    forward = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) @ np.array(
        [[1.0, shear], [0.0, 1.0]])  # (2, 2) acting on (x, y)
    h, w = mask.shape
    corners = (np.array([[0, 0], [w, 0], [0, h], [w, h]]) - [w / 2, h / 2]) @ forward.T  # (4, 2)
    out_w, out_h = (int(math.ceil(extent)) + 2 for extent in np.ptp(corners, axis=0))
    inverse = np.linalg.inv(forward)
    # PIL maps each output pixel (x, y) to the input (a x + b y + c, d x + e y + f): centre to centre.
    offset = np.array([w / 2, h / 2]) - inverse @ np.array([out_w / 2, out_h / 2])
    coefficients = tuple(float(v) for v in (*inverse[0], offset[0], *inverse[1], offset[1]))
    turned = Image.fromarray(mask).transform((out_w, out_h), Image.AFFINE, coefficients, resample=Image.BILINEAR)
    tilted = crop_to_ink(np.asarray(turned))
    scale = side / max(tilted.shape)
    resized = Image.fromarray(tilted).resize((max(1, round(tilted.shape[1] * scale)),
                                              max(1, round(tilted.shape[0] * scale))), Image.BILINEAR)
    alpha = np.asarray(resized, np.float32) / 255.0
    return crop_to_ink(np.where(alpha >= min(MIN_ALPHA, alpha.max()), alpha, 0.0))
