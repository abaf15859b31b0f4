"""Print check: every figure read at the width it is printed at.

Every figure of dlde is drawn at its print width (:func:`dlde.plots.plotting.figure_size`): one
column (:data:`~dlde.plots.plotting.WIDTH`, 3.4 in) or, where one column cannot hold it, two
(:data:`~dlde.plots.plotting.TEXT_WIDTH`, 7.0 in). A PNG's physical width (pixels / dpi) is
therefore the width it declares. For each PNG under ``figures/`` (subfolders included) the check
reads that width and flags

- **width**: a figure not drawn at a print width; it is then read as if printed one column wide;
- **text**: the smallest text the figure prints at that width, if below
  :data:`~dlde.plots.plotting.MIN_TEXT_PT` (6 pt);
- **colour only**: legend entries told apart by colour alone (same line style and marker, same
  patch hatch, same scatter marker), which grey printing merges; a group of more entries than
  :data:`~dlde.plots.plotting.MARKERS` holds is a figure's classes, coloured by design, and noted
  rather than failed;

then the colour pairs of the shared palettes (:data:`~dlde.plots.plotting.OKABE_ITO`,
:data:`~dlde.plots.plotting.BUCKET_COLORS`, the first :func:`~dlde.plots.plotting.class_colors`)
whose grey levels differ by less than 0.1. A PNG records neither its font sizes nor its legend, so
both are read from the figure its plot function draws from small made-up inputs
(:data:`SAMPLES`, matched by file name) by the current code, so a committed figure drawn by older
code is measured with today's text sizes: check the committed figures after drawing them again, or
check ``--drawn``. The width is read from the file. A file no sample matches (a screenshot) gets
its width only.

Usage::

    python -m dlde.plots.tools print-check                    # figures/, each at the width it is drawn
    python -m dlde.plots.tools print-check --column 3.4       # every figure printed 3.4 in wide
    python -m dlde.plots.tools print-check --drawn            # the samples drawn now by the current code
    python -m dlde.plots.tools print-check --drawn --save DIR # ... and kept in DIR as PNG files to look at

Exit status 1 when a figure fails. The checks are functions (``text_sizes``, ``colour_only_series``,
``grey_level``, ``close_grey_pairs``) that ``tests/test_print_check.py`` tests.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from dlde.analysis.sweep_stats import collapse_curves, summarize_arms
from dlde.protocols.fewshot import FewShotSummary
from dlde.protocols.mechanism import probability_curves, track_stream
from dlde.protocols.openset import PooledModel, PooledOpenSet, PooledScore

from .. import (
    detection_plots,
    embedding_plots,
    fewshot_plots,
    mechanism_plots,
    metric_plots,
    sweep_plots,
    vocabulary_plots,
)
from ..interactive import MeansExplorer
from ..plotting import BUCKET_COLORS, MARKERS, MIN_TEXT_PT, OKABE_ITO, PRINT_WIDTHS, WIDTH, class_colors, save_figure

#: The checkout's committed figures (the default of ``--figures``).
FIGURES_DIR = Path(__file__).resolve().parents[3] / "figures"
WIDTH_TOLERANCE = 0.01  # inches: a figure this close to a print width is drawn at it (pixels are whole)
MIN_GREY_STEP = 0.1  # grey levels (0 black .. 1 white) closer than this read as one in print
#: More series than there are markers are classes, coloured by design (read in colour, named in the legend).
MAX_SERIES = len(MARKERS)


# ------------------------------------------------------------------------------------ checks
def png_geometry(path: str | Path) -> tuple[int, int, float]:
    """``(width px, height px, dpi)`` of a PNG (72 dpi when it records none), the dpi rounded to 0.1 (the
    file stores whole pixels per metre: 150 dpi reads back as 150.0124)."""
    with Image.open(path) as image:
        return image.width, image.height, round(float(image.info.get("dpi", (72.0, 72.0))[0]), 1)


def column_scale(width_in: float, column_in: float = WIDTH) -> float:
    """The factor that prints a figure ``width_in`` inches wide at ``column_in`` inches."""
    return column_in / width_in


def print_columns(width_in: float) -> int | None:
    """The columns (:data:`~dlde.plots.plotting.PRINT_WIDTHS`) a figure ``width_in`` inches wide is
    drawn for, or None when it is drawn at no print width."""
    return next((columns for columns, width in PRINT_WIDTHS.items() if abs(width_in - width) <= WIDTH_TOLERANCE),
                None)


def text_sizes(fig: Figure) -> list[tuple[float, str]]:
    """``(size pt, text)`` of every non-blank text the figure draws (ticks, labels, legends, titles,
    annotations), recorded from the renderer so hidden axes and removed tick labels are not counted."""
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    drawn: list[tuple[float, str]] = []
    draw_text = renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            drawn.append((float(prop.get_size_in_points()), s))
        return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    fig.draw(renderer)
    return drawn


def _legends(fig: Figure) -> list:
    """The legends of a figure: its own, then each axis's."""
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def _handle_style(handle) -> tuple[tuple, tuple[float, float, float] | None]:
    """``(what tells a legend handle apart besides colour, its colour)``."""
    if isinstance(handle, Line2D):
        line = handle.get_linestyle() if handle.get_linewidth() > 0 else "None"
        return ("line", line, str(handle.get_marker())), to_rgb(handle.get_color())
    if isinstance(handle, Patch):
        return ("patch", handle.get_hatch(), handle.get_linestyle(), handle.get_fill()), to_rgb(handle.get_facecolor())
    if isinstance(handle, Collection):
        paths = handle.get_paths()
        shape = tuple(np.round(paths[0].vertices, 3).ravel()) if paths else ()
        colours = handle.get_facecolor()
        return ("points", shape), (to_rgb(colours[0]) if len(colours) else None)
    return (type(handle).__name__,), None


def colour_only_series(fig: Figure) -> list[list[str]]:
    """Groups of legend entries (two or more per group) that differ in colour and nothing else.

    Two entries with the same line style and marker (lines), hatch and edge (patches) or marker
    shape (scatter points) but different colours are told apart by colour only.
    """
    groups = []
    for legend in _legends(fig):
        by_style: dict[tuple, list[tuple[str, tuple | None]]] = {}
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            style, colour = _handle_style(handle)
            by_style.setdefault(style, []).append((text.get_text(), colour))
        for entries in by_style.values():
            if len(entries) > 1 and len({colour for _, colour in entries}) > 1:
                groups.append([label for label, _ in entries])
    return groups


def grey_level(colour) -> float:
    """Grey level in [0, 1] of a matplotlib colour printed in grey: ITU-R 601 luma
    (0.299 R + 0.587 G + 0.114 B), as Pillow's ``convert("L")`` computes it."""
    red, green, blue = to_rgb(colour)
    return 0.299 * red + 0.587 * green + 0.114 * blue


def close_grey_pairs(colours: Mapping[str, object], min_step: float = MIN_GREY_STEP) -> list[tuple[str, str, float]]:
    """``(name, name, grey difference)`` of the colour pairs whose grey levels differ by less than ``min_step``."""
    levels = {name: grey_level(colour) for name, colour in colours.items()}
    return [(a, b, abs(levels[a] - levels[b])) for a, b in combinations(levels, 2)
            if abs(levels[a] - levels[b]) < min_step]


def palettes() -> dict[str, dict[str, object]]:
    """The shared palettes: name -> (colour name -> colour)."""
    tab10 = {f"C{c}": colour for c, colour in enumerate(class_colors(10))}
    return {"OKABE_ITO": {hex_: hex_ for hex_ in OKABE_ITO},
            "BUCKET_COLORS": {name: colour for name, colour in BUCKET_COLORS.values()},
            "class_colors(3) (models, methods)": dict(list(tab10.items())[:3]),
            "class_colors(10) (classes)": tab10}


# --------------------------------------------------------------------------------- samples
NAMES = [str(c) for c in range(10)]  # the digits


def _curve(rng) -> dict:
    edges = np.linspace(0, 1, 11)
    return {"bin_edges": edges, "confidence": edges[:-1] + 0.05, "accuracy": rng.uniform(0, 1, 10),
            "count": np.full(10, 5)}


def _detections(rng, n: int = 8) -> list[dict]:
    boxes = np.array([[4.0, 4.0, 30.0, 30.0], [34.0, 20.0, 60.0, 50.0]])
    return [{"image": rng.uniform(0, 1, (3, 64, 64)), "boxes": boxes, "labels": np.array([1, 7]),
             "scores": np.array([0.9, 0.6]), "gt_boxes": boxes} for _ in range(n)]


def _few_shot_rows() -> list[FewShotSummary]:
    interval = {"mean": 0.5, "low": 0.4, "high": 0.6}
    return [FewShotSummary(method, k, 3, 20, interval, interval, interval, interval, interval, 0.7, 0.2)
            for method in ("dlde_imprint", "dlde_finetune", "prototypes_finetune") for k in (1, 5, 30)]


def _vocabulary_rows(x: str, series: Mapping[str, object]) -> list[dict]:
    values = {f"{m}_{k}": v for m in ("AP", "APr", "APc", "APf", "epoch_time_s")
              for k, v in (("mean", 0.5), ("low", 0.4), ("high", 0.6))}
    return [{x: size, **series, **values} for size in (10, 100, 1000)]


def _unknown_scores() -> Figure:
    interval = {"mean": 0.7, "low": 0.6, "high": 0.8}
    scores = {kind: PooledScore(*[interval] * 5) for kind in ("probability", "cosine", "energy")}
    models = {head: PooledModel(scores, *[interval] * 4) for head in ("dlde", "retinanet")}
    return fewshot_plots.plot_unknown_scores(PooledOpenSet([0, 1, 2], 0, 0, 0, models, {}))


def _collapse(title: str) -> Figure:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        arms = {}
        for arm in ("a", "b"):
            run = Path(folder) / arm
            run.mkdir()
            np.save(run / "means_history.npy", rng.normal(size=(5, 10, 8)))
            arms[arm] = [run]
        return sweep_plots.plot_collapse(collapse_curves(arms), title)


def _sweep(title: str) -> Figure:
    summaries = [{"AP": 0.5, "AP50": 0.8, "AP75": 0.5, "min_angle_deg": 50.0, "kappa": 40.0, "ECE": 0.1}] * 3
    return sweep_plots.plot_sweep(summarize_arms({"x=1": summaries, "x=2": summaries}), title,
                                  {"x=1": summaries, "x=2": summaries})


def _means_explorer() -> Figure:
    rng = np.random.default_rng(0)
    return MeansExplorer(rng.normal(size=(5, 10, 8)), NAMES, rng.normal(size=(100, 8)),
                         rng.integers(0, 10, 100)).figure


def _embedding_2d() -> Figure:
    rng = np.random.default_rng(0)
    return embedding_plots.plot_embedding_2d(rng.normal(size=(100, 2)), np.arange(100) % 10,
                                             rng.normal(size=(10, 2)), NAMES)


def _sphere() -> Figure:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3))
    return embedding_plots.plot_sphere(xyz / np.linalg.norm(xyz, axis=1, keepdims=True), np.arange(100) % 10,
                                       rng.normal(size=(10, 3)), NAMES)


def _retrieval() -> Figure:
    rng = np.random.default_rng(0)
    crops = [rng.uniform(0, 1, (3, 24, 24)) for _ in range(3)]
    return detection_plots.plot_retrieval_grid(crops, [crops] * 3, query_labels=[0, 1, 2],
                                               result_labels=[[0, 1, 2]] * 3, result_scores=[[0.9, 0.8, 0.7]] * 3,
                                               class_names=NAMES)


def _arms() -> Figure:
    arms = [f"C={c},{head}{lever}" for c in (1000, 100) for head in ("dlde", "retinanet", "prototypes")
            for lever in ("", ",rfs,efl")]
    rows = [{"arm": arm, "head": arm.split(",")[1], **row}
            for arm, row in zip(arms, _vocabulary_rows("classes", {}) * 4)]
    return vocabulary_plots.plot_arms(rows)


def _tracking() -> Figure:
    rng = np.random.default_rng(0)
    images = np.tile(np.arange(4) * 4000.0, (3, 1))  # (seeds, epochs + 1)
    curves = {}
    for index in range(9):  # more arms than markers: the line style tells the last apart
        falling = 1.0 - np.cumsum(rng.uniform(0.0, 0.05, (3, 4)), axis=1)
        curves[f"dlde,lever={index}"] = {"images": images, "cos_start_r": falling, "cos_start_c": falling - 0.01,
                                         "cos_start_f": falling - 0.02, "min_angle": 90.0 * falling,
                                         "embedding_norm": 0.5 * falling, "w": 14.0 * falling}
    return vocabulary_plots.plot_tracking(curves)


def _per_class_ap() -> Figure:
    return metric_plots.plot_per_class_ap({name: 0.5 + 0.04 * c for c, name in enumerate(NAMES)})


def _training_curves() -> Figure:
    return metric_plots.plot_training_curves([{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "AP": 0.1 * e,
                                               "AP50": 0.12 * e} for e in range(1, 6)])


def _drift() -> Figure:
    rng = np.random.default_rng(0)
    return embedding_plots.plot_angular_drift(rng.uniform(0, 20, (4, 10)), rng.uniform(0, 60, (5, 10)), NAMES)


class Sample(NamedTuple):
    """A plot function and a figure it draws from made-up inputs."""

    example: str  # a file name (relative, no suffix) the pattern matches: what ``--drawn`` saves it as
    drawn_by: str
    build: Callable[[], Figure]


#: File-name pattern (full match on the path relative to the figures folder, without suffix) ->
#: :class:`Sample`. First match wins.
SAMPLES: dict[str, Sample] = {
    r"mechanism_probability": Sample("mechanism_probability", "plot_probability_curves", lambda: (
        mechanism_plots.plot_probability_curves(probability_curves([(5.0, -0.5), (10.0, -0.5), (20.0, -0.5)])))),
    r"mechanism_tracking": Sample("mechanism_tracking", "plot_stream_tracking", lambda: (
        mechanism_plots.plot_stream_tracking({f"means_lr {lr:g}": track_stream(lr, batches=20)
                                              for lr in (0.003, 0.1)}))),
    r"(sigmoid_)?train_curves": Sample("train_curves", "plot_training_curves", _training_curves),
    r"(sigmoid_)?per_class_ap": Sample("per_class_ap", "plot_per_class_ap", _per_class_ap),
    r"(sigmoid_)?reliability": Sample("reliability", "plot_reliability", lambda: metric_plots.plot_reliability(
        {"dlde": _curve(np.random.default_rng(0)), "sigmoid": _curve(np.random.default_rng(1))})),
    r"(sigmoid_)?(val_detections|inference)|few_shot_detections": Sample("val_detections", "detection_grid", lambda: (
        detection_plots.detection_grid(_detections(np.random.default_rng(0)), NAMES))),
    r"vocabulary_detections_.*": Sample("vocabulary_detections_dlde", "detection_grid", lambda: (
        detection_plots.detection_grid(_detections(np.random.default_rng(0), 4), NAMES, cols=2))),
    r"mean_drift": Sample("mean_drift", "plot_angular_drift", _drift),
    r"mean_cosines": Sample("mean_cosines", "plot_cosine_heatmaps", lambda: embedding_plots.plot_cosine_heatmaps(
        np.eye(10), np.full((10, 10), 0.3), NAMES)),
    r"concentration": Sample("concentration", "plot_concentration", lambda: embedding_plots.plot_concentration(
        np.linspace(1, 50, 50).reshape(5, 10), NAMES)),
    r"embeddings_umap|few_shot_means_umap": Sample("embeddings_umap", "plot_embedding_2d", _embedding_2d),
    r"embeddings(_raw)?_sphere": Sample("embeddings_sphere", "plot_sphere", _sphere),
    r"means_through_training": Sample("means_through_training", "MeansExplorer", _means_explorer),
    r"cosine_margins": Sample("cosine_margins", "plot_cosine_histograms", lambda: (
        embedding_plots.plot_cosine_histograms(np.linspace(-1, 1, 50), np.linspace(-0.5, 0.9, 50)))),
    r"few_shot_novel_ap(50)?": Sample("few_shot_novel_ap", "plot_shots", lambda: fewshot_plots.plot_shots(
        _few_shot_rows())),
    r"few_shot_base_ap": Sample("few_shot_base_ap", "plot_forgetting", lambda: fewshot_plots.plot_forgetting(
        _few_shot_rows())),
    r"unknown_scores_over_seeds": Sample("unknown_scores_over_seeds", "plot_unknown_scores", _unknown_scores),
    r"unknown_scores_.*": Sample("unknown_scores_dlde_cosine", "plot_score_histograms", lambda: (
        metric_plots.plot_score_histograms(np.linspace(0, 1, 50), np.linspace(0.3, 1, 30),
                                           xlabel="unknown score (cosine)"))),
    r"unknown_roc": Sample("unknown_roc", "plot_roc", lambda: metric_plots.plot_roc(
        {name: {"fpr": [0, 0.5, 1], "tpr": [0, 0.7, 1], "auroc": 0.6} for name in ("dlde", "sigmoid", "prototypes")})),
    r"retrieval_examples": Sample("retrieval_examples", "plot_retrieval_grid", _retrieval),
    r"vocabulary_ap|vocabulary_epoch_time": Sample("vocabulary_ap", "plot_against_classes", lambda: (
        vocabulary_plots.plot_against_classes([row for head in ("dlde", "retinanet", "prototypes")
                                               for row in _vocabulary_rows("classes", {"head": head})]))),
    r"vocabulary_arms_.*": Sample("vocabulary_arms_tracking", "plot_arms", _arms),
    r"vocabulary_tracking": Sample("vocabulary_tracking", "plot_tracking", _tracking),
    r"vocabulary_class_frequency_.*": Sample("vocabulary_class_frequency_1000", "plot_class_frequency", lambda: (
        vocabulary_plots.plot_class_frequency(list(range(1, 301)), ["r"] * 100 + ["c"] * 100 + ["f"] * 100))),
    r"ablations/.*_collapse": Sample("ablations/means_lr_collapse", "plot_collapse", lambda: (
        _collapse("sweep: largest cosine between two class means"))),
    r"ablations/.*": Sample("ablations/means_lr", "plot_sweep", lambda: _sweep("sweep")),
}


def sample_for(name: str) -> Sample | None:
    """The :class:`Sample` whose pattern in :data:`SAMPLES` matches ``name`` (relative path without suffix), or
    None."""
    for candidate in dict.fromkeys((name, name.rsplit("/", 1)[-1])):  # a figure in a folder of its own: by its name
        entry = next((entry for pattern, entry in SAMPLES.items() if re.fullmatch(pattern, candidate)), None)
        if entry is not None:
            return entry
    return None


def draw_samples(folder: Path, dpi: int = 150) -> list[Path]:
    """Draws every :data:`SAMPLES` figure with the current plot code and saves it as ``folder/<example>.png``,
    as the pipeline saves its figures (:func:`~dlde.plots.plotting.save_figure`, 150 dpi)."""
    paths = []
    for sample in SAMPLES.values():
        where = folder / sample.example
        paths += save_figure(sample.build(), where.parent, where.name, formats=("png",), dpi=dpi)
    return paths


# ---------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class FigureCheck:
    """The print check of one figure file.

    Attributes:
        name: path relative to the figures folder.
        width_in: the file's width at its dpi: its print width when it is drawn at one.
        print_in: the width it is read at: its own print width, the width asked for, or one column
            (:data:`~dlde.plots.plotting.WIDTH`) for a figure drawn at no print width.
        drawn_by: the plot function matched, or None.
        smallest_pt: the smallest text at the figure's own size (None without a sample).
        colour_only: groups of legend entries told apart by colour only (classes included).
        at_print_width: drawn at a print width (or read at the width asked for); a file no sample
            matches (a screenshot) is not held to it.
    """

    name: str
    width_in: float
    print_in: float
    drawn_by: str | None
    smallest_pt: float | None
    colour_only: list[list[str]]
    at_print_width: bool = True

    @property
    def scale(self) -> float:
        """The factor from the figure's own size to its printed size."""
        return column_scale(self.width_in, self.print_in)

    @property
    def printed_pt(self) -> float | None:
        """The smallest text when printed ``print_in`` inches wide."""
        return None if self.smallest_pt is None else self.smallest_pt * self.scale

    @property
    def failures(self) -> list[str]:
        """What fails in print, as short phrases (empty when the figure passes)."""
        found = []
        if not self.at_print_width and self.drawn_by is not None:
            widths = " or ".join(f"{width:g}" for width in PRINT_WIDTHS.values())
            found.append(f"drawn {self.width_in:.2f} in wide, at no print width ({widths} in)")
        if self.printed_pt is not None and self.printed_pt < MIN_TEXT_PT - 1e-9:
            needed = self.width_in * MIN_TEXT_PT / self.smallest_pt  # the printed width where it reaches 6 pt
            found.append(f"text {self.printed_pt:.1f} pt at {self.print_in:g} in (6 pt when printed {needed:.1f} in "
                         "wide)")
        found += [f"colour only: {', '.join(group)}" for group in self.colour_only if len(group) <= MAX_SERIES]
        return found

    @property
    def notes(self) -> list[str]:
        """What the check leaves to the reader: classes coloured by design (groups of more than
        :data:`MAX_SERIES` entries), or a file no sample matches."""
        if self.drawn_by is None:
            return ["not a plot of dlde (no sample): width only"]
        return [f"{len(group)} classes in colour only" for group in self.colour_only if len(group) > MAX_SERIES]


def check_figure(path: Path, figures: Path, column_in: float | None = None) -> FigureCheck:
    """The :class:`FigureCheck` of one PNG under ``figures``, read at its own print width or, given, at
    ``column_in`` inches."""
    width_px, _, dpi = png_geometry(path)
    name = path.relative_to(figures).with_suffix("").as_posix()
    width_in = width_px / dpi
    columns = print_columns(width_in)
    if column_in is not None:
        print_in, at_print_width = column_in, True
    elif columns is not None:
        print_in, at_print_width = PRINT_WIDTHS[columns], True
    else:
        print_in, at_print_width = WIDTH, False
    sample = sample_for(name)
    smallest, colour_only, drawn_by = None, [], None
    if sample is not None:
        drawn_by = sample.drawn_by
        fig = sample.build()
        try:
            smallest = min(size for size, _ in text_sizes(fig))
            colour_only = colour_only_series(fig)
        finally:
            plt.close(fig)
    return FigureCheck(name, width_in, print_in, drawn_by, smallest, colour_only, at_print_width)


def report(checks: Sequence[FigureCheck]) -> list[str]:
    """The markdown table of ``checks``, the close palette pairs and a closing count."""
    lines = ["| figure | drawn by | width (in) | columns | printed at (in) | smallest text (pt) | printed (pt) "
             "| fails |", "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        columns = print_columns(c.width_in)
        small = "–" if c.smallest_pt is None else f"{c.smallest_pt:.1f}"
        printed = "–" if c.printed_pt is None else f"{c.printed_pt:.1f}"
        lines.append(f"| {c.name} | {c.drawn_by or 'no sample'} | {c.width_in:.2f} | {columns or '–'} | "
                     f"{c.print_in:g} | {small} | {printed} | {'; '.join(c.failures + c.notes) or 'passes'} |")
    lines.append("\nPalette pairs closer than 0.1 in grey (ITU-R 601 luma):")
    for palette, colours in palettes().items():
        pairs = close_grey_pairs(colours)
        lines.append(f"- {palette}: " + (", ".join(f"{a}/{b} {d:.3f}" for a, b, d in pairs) or "none"))
    failing = [c for c in checks if c.failures]
    lines.append(f"\n{len(checks)} figures, {len(failing)} fail in print")
    return lines


def check_folder(figures: Path, column_in: float | None = None) -> list[FigureCheck]:
    """The :class:`FigureCheck` of every PNG under ``figures``, in path order."""
    return [check_figure(path, figures, column_in) for path in sorted(figures.rglob("*.png"))]


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the check of every PNG under ``--figures`` (or of the samples drawn now) and of the palettes;
    1 when a figure fails."""
    parser = argparse.ArgumentParser(prog="python -m dlde.plots.tools print-check", description=__doc__.split("\n")[0])
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR, help="folder of committed figures")
    parser.add_argument("--column", type=float, default=None,
                        help="print every figure this many inches wide (default: the print width it is drawn at)")
    parser.add_argument("--drawn", action="store_true",
                        help="check the samples drawn now by the current plot code instead of --figures")
    parser.add_argument("--save", type=Path, default=None, help="with --drawn: keep the drawn PNGs in this folder")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # draws and measures only, never shows
    if args.drawn:
        with tempfile.TemporaryDirectory() as scratch:
            folder = args.save or Path(scratch)
            draw_samples(folder)
            checks = check_folder(folder, args.column)
    else:
        checks = check_folder(args.figures, args.column)
    print("\n".join(report(checks)))
    return 1 if any(c.failures for c in checks) else 0

