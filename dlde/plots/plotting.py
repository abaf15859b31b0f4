"""What every figure of dlde shares: class colors, class names and labels, deterministic saving.

The figures themselves live by subject: :mod:`dlde.plots.metric_plots` (training curves, AP per
class, calibration, open-set scores), :mod:`dlde.plots.embedding_plots` (class means and
embeddings), :mod:`dlde.plots.detection_plots` (images with boxes, retrieval crops) and
:mod:`dlde.plots.fewshot_plots`. Every ``plot_*`` function returns a
:class:`matplotlib.figure.Figure` and never calls ``plt.show``; pass it to :func:`save_figure`
(which closes it) or display it in a notebook. Class ``c`` is drawn in ``class_colors(C)[c]`` in
every figure. Inputs may be numpy arrays or torch tensors.

Every figure is drawn at the width it is printed at, so its file's physical width (pixels / dpi)
is its print width: one column (:data:`WIDTH`) unless it cannot be read there (multi-panel sweeps,
detection grids, retrieval crops, side-by-side heatmaps), then two (:data:`TEXT_WIDTH`); see
:func:`figure_size`. Its text is sized for print by :func:`print_style` (:data:`FONT_PT`,
:data:`LABEL_PT`, never under :data:`MIN_TEXT_PT`), and series besides their colour have a
marker (:data:`MARKERS`), a line style or a hatch, so they read apart in grey.

matplotlib is imported when a color is asked for or a figure saved, so the sweep writer and the
notebook support can import this module without loading it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["class_colors", "display_names", "as_labels", "save_figure", "figure_size", "print_style",
           "WIDTH", "TEXT_WIDTH", "PRINT_WIDTHS", "FONT_PT", "LABEL_PT", "MIN_TEXT_PT", "OKABE_ITO", "BUCKET_COLORS",
           "BUCKET_LINES", "BUCKET_HATCHES", "MARKERS", "LINES", "HATCHES", "HATCH"]

WIDTH = 3.4  # inches: one column of a two-column paper
TEXT_WIDTH = 7.0  # inches: two columns, the full text width
#: Columns -> printed width in inches: every figure is drawn at one of these (:func:`figure_size`).
PRINT_WIDTHS = {1: WIDTH, 2: TEXT_WIDTH}
FONT_PT = 7.0  # tick labels, legends, annotations
LABEL_PT = 8.0  # axis labels, axis and figure titles
MIN_TEXT_PT = 6.0  # the smallest text a figure prints at its width (dense annotations)
#: What :func:`print_style` sets while a figure is drawn: the text sizes above (matplotlib's own
#: defaults of 10-12 pt are meant for a screen, and "small" of them is relative).
_PRINT_RC = {"font.size": FONT_PT, "axes.titlesize": LABEL_PT, "axes.labelsize": LABEL_PT,
             "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT,
             "legend.title_fontsize": FONT_PT, "figure.titlesize": LABEL_PT, "figure.labelsize": LABEL_PT}
#: Okabe & Ito's colour-blind-safe palette (black left out: it draws the single points).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442")
#: LVIS bucket letter -> (name, colour), and a line style per bucket so the buckets read in grey too.
BUCKET_COLORS: dict[str, tuple[str, str]] = {"r": ("rare", OKABE_ITO[1]), "c": ("common", OKABE_ITO[3]),
                                             "f": ("frequent", OKABE_ITO[0])}
BUCKET_LINES = {"r": ":", "c": "--", "f": "-."}
#: A marker per series (model, method, loss), so series drawn in class_colors also read apart in grey.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
#: A line style per series, with :data:`MARKERS`, where series are lines.
LINES = ("-", "--", ":", "-.")
#: A hatch per series of bars (model), so bars drawn in class_colors also read apart in grey.
HATCHES = ("", "//", "..", "xx", "\\\\", "++")
#: The hatch that tells the second of two overlaid histograms from the first in grey.
HATCH = HATCHES[1]
#: A hatch per LVIS bucket, for areas shaded in the bucket's colour.
BUCKET_HATCHES = {"r": HATCHES[0], "c": HATCHES[2], "f": HATCHES[1]}

# What save_figure passes to savefig per format: metadata without the timestamps and version strings
# matplotlib would write, and Pillow's PNG settings written out (zlib level 6, what Pillow's default
# -1 means; no extra optimization pass). A PNG then holds IHDR, pHYs (the dpi), IDAT and IEND only:
# its bytes depend on the pixels, the dpi, Pillow's row filters and the zlib library (libz.so.1).
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"metadata": {"Software": None}, "pil_kwargs": {"compress_level": 6, "optimize": False}},
    "pdf": {"metadata": {"CreationDate": None, "Producer": None, "Creator": None}},
    "svg": {"metadata": {"Date": None, "Creator": None}},
}
# What matplotlib reads from its rc settings while writing (not while drawing), pinned to
# matplotlib's defaults so a matplotlibrc cannot change the files; svg.hashsalt replaces the random
# salt of the SVG element ids.
_SAVE_RC = {"savefig.bbox": None, "savefig.facecolor": "auto", "savefig.edgecolor": "auto",
            "savefig.transparent": False, "pdf.compression": 6, "pdf.fonttype": 3, "svg.fonttype": "path",
            "svg.hashsalt": "dlde"}


_Plot = TypeVar("_Plot", bound=Callable[..., Any])


def figure_size(height: float, columns: int = 1) -> tuple[float, float]:
    """``figsize`` of a figure printed ``columns`` columns wide.

    Args:
        height: inches.
        columns: 1 (:data:`WIDTH`) or 2 (:data:`TEXT_WIDTH`).

    Returns:
        ``(width, height)`` in inches.
    """
    if columns not in PRINT_WIDTHS:
        raise ValueError(f"a figure is {' or '.join(map(str, PRINT_WIDTHS))} columns wide, not {columns}")
    return PRINT_WIDTHS[columns], height


def print_style(plot: _Plot) -> _Plot:
    """Decorates a ``plot_*`` function so that the figure it draws takes the print text sizes
    (:data:`FONT_PT`, :data:`LABEL_PT`): matplotlib reads them when the texts and ticks are made."""

    @functools.wraps(plot)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib as mpl

        with mpl.rc_context(_PRINT_RC):
            return plot(*args, **kwargs)

    return drawn  # type: ignore[return-value]


def class_colors(num_classes: int) -> np.ndarray:
    """Categorical colors, one per class.

    Args:
        num_classes: C.

    Returns:
        (C, 4) RGBA rows: tab10 for C <= 10, tab20 for C <= 20, evenly spaced turbo beyond.
    """
    from matplotlib import colormaps

    if num_classes <= 10:
        return colormaps["tab10"](np.arange(num_classes))
    if num_classes <= 20:
        return colormaps["tab20"](np.arange(num_classes))
    return colormaps["turbo"](np.linspace(0.0, 1.0, num_classes))


def display_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The C names to write in a figure: ``names`` (checked to hold C), or "0", "1", ... for None."""
    if names is None:
        return [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    return list(names)


def as_labels(labels: Any) -> np.ndarray:
    """Class ids (tensor, array or sequence, any shape) as a flat (N,) int64 array."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64).reshape(-1)


def save_figure(
    fig: Figure,
    directory: str | Path,
    name: str,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
) -> list[Path]:
    """Writes ``directory/name.<fmt>`` for each format and closes the figure.

    Timestamps and version strings are left out of the file metadata, and the compression and
    other save-time settings are fixed, so saving the same figure again gives identical bytes: a
    PNG's bytes depend only on its pixels and dpi (given Pillow and the zlib library; compare two
    PNGs' pixels with :mod:`dlde.plots.tools.compare`), a PDF's on the drawing.

    Args:
        fig: the figure.
        directory: output folder, created if missing.
        name: file stem.
        formats: file extensions understood by matplotlib.
        dpi: resolution of raster formats.

    Returns:
        The written paths, in the order of ``formats``.
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        with mpl.rc_context(_SAVE_RC):
            for fmt in formats:
                path = directory / f"{name}.{fmt}"
                fig.savefig(path, format=fmt, dpi=dpi, **_SAVE_OPTIONS.get(fmt, {}))
                paths.append(path)
    finally:
        plt.close(fig)
    return paths
