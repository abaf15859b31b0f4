"""What every figure of dlde shares: class colors, class names and labels, deterministic saving.

The figures themselves live by subject: :mod:`dlde.analysis.metric_plots` (training curves, AP per
class, calibration, open-set scores), :mod:`dlde.analysis.embedding_plots` (class means and
embeddings), :mod:`dlde.analysis.detection_plots` (images with boxes, retrieval crops) and
:mod:`dlde.analysis.fewshot_plots`. Every ``plot_*`` function returns a
:class:`matplotlib.figure.Figure` and never calls ``plt.show``; pass it to :func:`save_figure`
(which closes it) or display it in a notebook. Class ``c`` is drawn in ``class_colors(C)[c]`` in
every figure. Inputs may be numpy arrays or torch tensors.

matplotlib is imported when a color is asked for or a figure saved, so the sweep writer and the
notebook support can import this module without loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["class_colors", "display_names", "as_labels", "save_figure", "WIDTH", "OKABE_ITO", "BUCKET_COLORS",
           "BUCKET_LINES"]

WIDTH = 3.4  # inches: one column of a two-column paper
#: Okabe & Ito's colour-blind-safe palette (black left out: it draws the single points).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442")
#: LVIS bucket letter -> (name, colour), and a line style per bucket so the buckets read in grey too.
BUCKET_COLORS: dict[str, tuple[str, str]] = {"r": ("rare", OKABE_ITO[1]), "c": ("common", OKABE_ITO[3]),
                                             "f": ("frequent", OKABE_ITO[0])}
BUCKET_LINES = {"r": ":", "c": "--", "f": "-."}

# Metadata that would otherwise embed a timestamp or version string in the file.
_DETERMINISTIC_METADATA = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "Producer": None},
    "svg": {"Date": None},
}


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

    Timestamps and version strings are left out of the file metadata, so saving the same
    figure again gives identical bytes.

    Args:
        fig: the figure.
        directory: output folder, created if missing.
        name: file stem.
        formats: file extensions understood by matplotlib.
        dpi: resolution of raster formats.

    Returns:
        The written paths, in the order of ``formats``.
    """
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            path = directory / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_DETERMINISTIC_METADATA.get(fmt))
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
