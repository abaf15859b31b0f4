"""Tests for the figures (dlde.plots.plotting, embedding_plots, metric_plots, detection_plots): figure
structure (axes, artists) and deterministic saving."""

import matplotlib

matplotlib.use("Agg")

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402

from dlde.plots.detection_plots import detection_grid, draw_detections  # noqa: E402
from dlde.plots.embedding_plots import (  # noqa: E402
    plot_angular_drift,
    plot_concentration,
    plot_cosine_heatmaps,
    plot_cosine_histograms,
    plot_embedding_2d,
    plot_sphere,
)
from dlde.plots.metric_plots import MAX_CLASS_BARS, plot_per_class_ap, plot_training_curves  # noqa: E402
from dlde.plots.plotting import (  # noqa: E402
    FONT_PT,
    LABEL_PT,
    PRINT_WIDTHS,
    TEXT_WIDTH,
    WIDTH,
    class_colors,
    figure_size,
    print_style,
    save_figure,
)

NAMES = ["cat", "dog", "car"]
FIXTURES = Path(__file__).parent / "fixtures"
#: The matplotlib that drew the PNG fixtures (other versions may rasterise text differently).
FIXTURE_MATPLOTLIB = "3.11.2"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


@pytest.mark.parametrize(
    "num_classes, cmap", [(3, "tab10"), (10, "tab10"), (15, "tab20"), (25, None)]
)
def test_class_colors_are_distinct_and_categorical(num_classes, cmap):
    colors = class_colors(num_classes)
    assert colors.shape == (num_classes, 4)
    assert len({tuple(c) for c in colors}) == num_classes
    if cmap is not None:
        assert_allclose(colors, matplotlib.colormaps[cmap](np.arange(num_classes)))


def test_figure_size_is_one_or_two_columns_wide():
    assert figure_size(2.0) == (WIDTH, 2.0) and figure_size(3.0, columns=2) == (TEXT_WIDTH, 3.0)
    assert PRINT_WIDTHS == {1: 3.4, 2: 7.0}
    with pytest.raises(ValueError, match="1 or 2 columns wide, not 3"):
        figure_size(2.0, columns=3)


def test_print_style_sizes_the_text_of_the_figure_it_draws_only():
    @print_style
    def plot():
        fig, ax = plt.subplots(figsize=figure_size(2.0))
        ax.plot([0, 10], [0, 100], label="a")
        ax.set(xlabel="x", title="title")
        ax.legend()
        return fig

    fig = plot()
    fig.canvas.draw()  # outside the style: the tick labels drawn now keep the sizes they were made with
    ax = fig.axes[0]
    assert {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()} == {FONT_PT}
    assert ax.get_legend().get_texts()[0].get_fontsize() == FONT_PT
    assert ax.xaxis.label.get_fontsize() == ax.title.get_fontsize() == LABEL_PT
    assert plt.rcParams["font.size"] == 10.0  # matplotlib's default, back after the plot
    assert plot.__name__ == "plot"


def test_training_curves_skip_missing_values():
    metrics = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": None, "AP": None},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "AP": None, "AP50": 0.4},
        {"epoch": 3, "train_loss": 0.3, "AP": None, "AP50": 0.6},
    ]
    fig = plot_training_curves(metrics)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax_loss, ax_ap = fig.axes
    lines = {line.get_label(): line for line in ax_loss.lines}
    assert set(lines) == {"train_loss", "val_loss"}
    assert_array_equal(lines["train_loss"].get_xdata(), [1, 2, 3])
    assert_array_equal(lines["val_loss"].get_xdata(), [2])
    assert [line.get_label() for line in ax_ap.lines] == ["AP50"]  # AP was always None
    assert_array_equal(ax_ap.lines[0].get_ydata(), [0.4, 0.6])


def test_training_curves_with_no_data_still_draw_two_panels():
    fig = plot_training_curves([{"epoch": 0}])
    assert len(fig.axes) == 2
    assert all(not ax.lines for ax in fig.axes)


DIGITS_AP = {str(c): round(0.05 + 0.09 * c, 3) for c in range(10)}


@pytest.mark.skipif(matplotlib.__version__ != FIXTURE_MATPLOTLIB,
                    reason=f"PNG fixtures drawn by matplotlib {FIXTURE_MATPLOTLIB}")
@pytest.mark.parametrize("models, title, dpi, fixture", [
    (False, None, 150, "per_class_ap_10.png"),
    (True, "two", 50, "per_class_ap_10_two_models_dpi50.png"),
])
def test_per_class_ap_bars_unchanged_for_ten_classes(tmp_path, models, title, dpi, fixture):
    # the fixtures are the bytes of the bar view drawn one column wide (redraw them when it changes on purpose)
    ap = DIGITS_AP
    if models:
        ap = {"dlde": DIGITS_AP, "sigmoid": {k: 1 - v for k, v in list(DIGITS_AP.items())[:-1]}}
    (path,) = save_figure(plot_per_class_ap(ap, title=title, dataset=SimpleNamespace(
        class_names=list(DIGITS_AP), frequencies=["r"] * 10)), tmp_path, "ap", formats=("png",), dpi=dpi)
    assert path.read_bytes() == (FIXTURES / fixture).read_bytes()


def test_per_class_ap_bars_up_to_max_classes():
    ap = {f"class_{c}": c / MAX_CLASS_BARS for c in range(MAX_CLASS_BARS)}
    fig = plot_per_class_ap({"a": ap, "b": ap})
    (ax,) = fig.axes
    assert_allclose(fig.get_size_inches(), [TEXT_WIDTH, 2.4])  # 120 bars: two columns
    assert [len(bars) for bars in ax.containers] == [MAX_CLASS_BARS, MAX_CLASS_BARS]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ap)
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {90.0}  # long names upright
    assert [ax.containers[k][0].get_hatch() for k in (0, 1)] == [None, "//"]  # the models read apart in grey
    digits = plot_per_class_ap({str(c): 0.5 for c in range(10)})
    assert_allclose(digits.get_size_inches(), [WIDTH, 2.4])  # ten bars: one column, names flat
    assert {t.get_rotation() for t in digits.axes[0].get_xticklabels()} == {0.0}


def _thousand_classes():
    """AP per class, names and LVIS buckets of 1,000 classes; class 7 is the best, 3 the worst."""
    rng = np.random.default_rng(0)
    names = [f"glyph_{c}" for c in range(1000)]
    names[7] = "mathematical_bold_italic_capital_a_with_a_long_name"
    letters = rng.choice(["r", "c", "f"], size=1000, p=[0.3, 0.45, 0.25])
    letters[:3] = ["r", "c", "f"]
    ap = {n: float(v) for n, v in zip(names, rng.uniform(0.05, 0.9, size=1000))}
    ap[names[7]], ap[names[3]] = 0.99, 0.0
    return ap, SimpleNamespace(class_names=names, frequencies=letters.tolist())


def test_per_class_ap_ranks_many_classes_in_a_bounded_figure():
    ap, dataset = _thousand_classes()
    start = time.perf_counter()
    fig = plot_per_class_ap(ap, dataset=dataset)
    fig.canvas.draw()
    assert time.perf_counter() - start < 2.0
    width, height = fig.get_size_inches()
    assert width == pytest.approx(3.4) and height < 4
    panel, strip = fig.axes
    curve = panel.lines[0]
    assert_array_equal(curve.get_xdata(), np.arange(1, 1001))
    assert_allclose(curve.get_ydata(), sorted(ap.values(), reverse=True))
    letters = np.array(dataset.frequencies)
    values = np.array(list(ap.values()))
    means = [line.get_ydata()[0] for line in panel.lines[1:]]  # all, then rare, common, frequent
    assert_allclose(means, [values.mean(), *(values[letters == b].mean() for b in "rcf")])
    assert len({line.get_linestyle() for line in panel.lines[1:]}) == 4  # the buckets read in grey too
    highest, lowest = (t.get_text() for t in panel.texts)
    assert highest.splitlines()[1] == "mathematical_bold_italic_ca… 0.99"
    assert lowest.splitlines()[1] == "glyph_3 0.00"
    rows = strip.collections  # one row of ticks per bucket
    assert [len(row.get_positions()) for row in rows] == [int(np.sum(letters == b)) for b in "rcf"]
    assert [row.get_lineoffset() for row in rows] == [2, 1, 0]  # rare on top
    assert dict(zip(strip.get_yticks(), (t.get_text() for t in strip.get_yticklabels()))) == {
        2: "rare", 1: "common", 0: "frequent"}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{name} ({np.sum(letters == b)})" for b, name in zip("rcf", ("rare", "common", "frequent"))] \
        + ["all"]


def test_per_class_ap_ranked_without_frequencies_and_for_two_models():
    ap, dataset = _thousand_classes()
    fig = plot_per_class_ap(ap)  # no dataset: no buckets
    (panel,) = fig.axes
    assert len(panel.lines) == 2 and not fig.legends
    missing = dict(list(ap.items())[:-10])  # sigmoid lacks 10 classes
    fig = plot_per_class_ap({"dlde": ap, "sigmoid": missing}, dataset=SimpleNamespace(
        class_names=dataset.class_names, frequencies=None))
    assert len(fig.axes) == 2 and fig.get_size_inches()[1] < 6
    assert [len(ax.lines[0].get_xdata()) for ax in fig.axes] == [1000, 990]
    assert fig.axes[1].get_title().startswith("sigmoid: mean AP ")


def test_angular_drift_one_line_per_class():
    steps = np.array([[5.0, np.nan, 1.0], [3.0, 2.0, 1.0]])  # (E=2, C=3)
    to_final = np.array([[8.0, np.nan, 2.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    fig = plot_angular_drift(steps, to_final, NAMES)
    ax_step, ax_final = fig.axes
    assert len(ax_step.lines) == 3 and len(ax_final.lines) == 3
    assert_array_equal(ax_step.lines[0].get_xdata(), [1, 2])
    assert_array_equal(ax_final.lines[0].get_xdata(), [0, 1, 2])
    assert_allclose(ax_step.lines[1].get_color(), class_colors(3)[1])


@pytest.mark.parametrize("num_classes, annotated", [(3, True), (13, False)])
def test_cosine_heatmaps_share_a_colorbar(num_classes, annotated):
    first = np.eye(num_classes)
    last = np.full((num_classes, num_classes), 0.2)
    first[0, :] = first[:, 0] = np.nan  # a class unseen at the first epoch
    fig = plot_cosine_heatmaps(first, last, [str(c) for c in range(num_classes)])
    assert len(fig.axes) == 3  # two heatmaps + one colorbar
    heat = fig.axes[:2]
    assert all(len(ax.images) == 1 for ax in heat)
    assert heat[0].images[0].get_clim() == heat[1].images[0].get_clim() == (-1.0, 1.0)
    n_finite = np.isfinite(first).sum() + np.isfinite(last).sum()
    assert len(heat[0].texts) + len(heat[1].texts) == (n_finite if annotated else 0)


def test_concentration_log_axis():
    kappa = np.array([[np.nan, 1.0, 0.0], [10.0, 5.0, 3.0], [100.0, 20.0, 9.0]])
    fig = plot_concentration(torch.tensor(kappa), NAMES)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 3


def test_embedding_2d_scatter_per_class_and_means():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    labels = np.repeat([0, 2], 15)  # class 1 absent
    mean_points = np.array([[0.0, 0.0], [np.nan, np.nan], [1.0, 1.0]])
    fig = plot_embedding_2d(points, labels, mean_points, NAMES)
    (ax,) = fig.axes
    assert len(ax.collections) == 3  # classes 0 and 2, plus the means
    assert len(ax.collections[-1].get_offsets()) == 2  # NaN mean skipped
    (legend,) = fig.legends  # beside the axes
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "car", "class mean"]


@pytest.mark.parametrize("arrows", [True, False])
def test_sphere_draws_wireframe_points_and_means(arrows):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(40, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=40)
    means = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.5]])  # zero mean skipped
    fig = plot_sphere(xyz, labels, means, NAMES, arrows=arrows)
    (ax,) = fig.axes
    assert ax.name == "3d"
    # wireframe + one scatter per class + means (quiver or star scatter)
    assert len(ax.collections) == 1 + 3 + 1
    if arrows:
        # a 3-D quiver draws 3 segments (shaft and two head lines) per arrow
        fig.canvas.draw()  # 3-D segments are projected at draw time
        assert len(ax.collections[-1].get_segments()) == 3 * 2


def test_cosine_histograms_overlay_in_unit_interval():
    own = np.array([0.9, 0.8, np.nan, 0.1])
    other = np.array([0.2, 0.85, 0.3, -0.5])
    fig = plot_cosine_histograms(own, other, bins=20)
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * 20
    assert ax.get_xlim() == (-1.0, 1.0)
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights[:20]) == 3 and sum(heights[20:]) == 4
    assert "66.7%" in ax.get_title()  # 2 of the 3 finite pairs have own > other


def _sample(rng, n_boxes=3, h=40, w=60):
    x1 = rng.uniform(0, w / 2, n_boxes)
    y1 = rng.uniform(0, h / 2, n_boxes)
    boxes = np.stack([x1, y1, x1 + 10, y1 + 8], axis=1)
    return {
        "image": torch.rand(3, h, w),
        "boxes": torch.tensor(boxes),
        "labels": torch.tensor(rng.integers(0, 3, n_boxes)),
        "scores": torch.tensor(np.linspace(0.9, 0.1, n_boxes)),
    }


def test_draw_detections_one_rectangle_per_kept_box():
    s = _sample(np.random.default_rng(2), n_boxes=4)  # scores 0.9, 0.63, 0.37, 0.1
    gt = np.array([[1.0, 1.0, 20.0, 20.0], [5.0, 5.0, 30.0, 25.0]])
    fig = draw_detections(s["image"], s["boxes"], s["labels"], s["scores"], NAMES,
                          gt_boxes=gt, score_thresh=0.5)
    (ax,) = fig.axes
    rects = _rectangles(ax)
    assert len(rects) == 2 + 2  # two GT, two detections above 0.5
    assert sum(r.get_linestyle() == "--" for r in rects) == 2
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 2
    assert texts[0] == f"{NAMES[int(s['labels'][0])]} 0.90"
    first_det = rects[2]
    assert_allclose(first_det.get_xy(), s["boxes"][0, :2].numpy())
    assert_allclose([first_det.get_width(), first_det.get_height()], [10.0, 8.0])


def test_draw_detections_chw_float_and_hwc_uint8_agree():
    hwc = np.random.default_rng(3).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    chw = torch.tensor(hwc).permute(2, 0, 1).float() / 255.0
    empty = np.zeros((0, 4))
    imgs = []
    for image in (hwc, chw):
        fig = draw_detections(image, empty, np.zeros(0, int), np.zeros(0), NAMES)
        (ax,) = fig.axes
        assert not _rectangles(ax)
        imgs.append(np.asarray(ax.images[0].get_array()))
    assert imgs[0].shape == (12, 16, 3)
    assert_allclose(imgs[0], imgs[1], atol=1e-6)


def test_draw_detections_rejects_bad_image():
    with pytest.raises(ValueError, match="image must be"):
        draw_detections(np.zeros((4, 5, 6)), np.zeros((0, 4)), [], [], NAMES)


def test_detection_grid_one_axis_per_sample():
    rng = np.random.default_rng(4)
    samples = [_sample(rng) for _ in range(5)]
    samples[1]["gt_boxes"] = np.array([[0.0, 0.0, 5.0, 5.0]])
    fig = detection_grid(samples, NAMES, cols=4)
    assert len(fig.axes) == 5
    assert [len(_rectangles(ax)) for ax in fig.axes] == [3, 4, 3, 3, 3]


def _figure_for_saving():
    fig = plot_cosine_heatmaps(np.eye(3), np.full((3, 3), 0.5), NAMES)
    fig.axes[0].set_title("déjà vu κ̂")  # non-ASCII text exercises PDF font embedding
    return fig


def test_save_figure_writes_identical_bytes_on_rerun(tmp_path):
    fig = _figure_for_saving()
    paths = save_figure(fig, tmp_path / "a" / "nested", "heat")
    assert paths == [tmp_path / "a" / "nested" / "heat.png", tmp_path / "a" / "nested" / "heat.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert not plt.fignum_exists(fig.number)  # closed
    again = save_figure(_figure_for_saving(), tmp_path / "b", "heat")
    for p, q in zip(paths, again):
        assert p.read_bytes() == q.read_bytes()
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def _png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG, in order."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8].decode("ascii"))
        at += 12 + length
    return chunks


def test_save_figure_png_holds_the_canvas_pixels_and_dpi_only(tmp_path):
    from PIL import Image

    fig, ax = plt.subplots(figsize=(3, 2), dpi=150)  # no layout engine: every draw is the same
    ax.plot([0, 1, 2], [1, 0, 2], marker="o")
    ax.set_title("déjà vu κ̂")
    fig.canvas.draw()
    canvas = np.asarray(fig.canvas.buffer_rgba()).copy()  # (300, 450, 4)
    (path,) = save_figure(fig, tmp_path, "heat", formats=("png",), dpi=150)
    with Image.open(path) as image:
        assert [round(d) for d in image.info["dpi"]] == [150, 150]  # stored as pixels per metre
        assert_array_equal(np.asarray(image), canvas)
    chunks = _png_chunks(path.read_bytes())
    assert chunks[:2] == ["IHDR", "pHYs"] and chunks[-1] == "IEND" and set(chunks[2:-1]) == {"IDAT"}


def test_save_figure_pdf_and_svg_carry_no_version_or_date_and_repeat(tmp_path):
    first = save_figure(_figure_for_saving(), tmp_path / "a", "heat", formats=("pdf", "svg"))
    again = save_figure(_figure_for_saving(), tmp_path / "b", "heat", formats=("pdf", "svg"))
    for p, q in zip(first, again):
        assert p.read_bytes() == q.read_bytes()  # the SVG ids too (svg.hashsalt)
    pdf, svg = (p.read_bytes() for p in first)
    for key in (b"/Creator", b"/Producer", b"/CreationDate", b"Matplotlib"):
        assert key not in pdf
    assert b"<dc:date>" not in svg and b"Matplotlib v" not in svg


def test_save_figure_ignores_save_settings_of_a_matplotlibrc(tmp_path):
    plain = save_figure(_figure_for_saving(), tmp_path / "plain", "heat", formats=("png", "pdf", "svg"))
    with matplotlib.rc_context({"savefig.bbox": "tight", "savefig.transparent": True, "pdf.compression": 0,
                                "pdf.fonttype": 42, "svg.hashsalt": None, "svg.fonttype": "none"}):
        other = save_figure(_figure_for_saving(), tmp_path / "rc", "heat", formats=("png", "pdf", "svg"))
    for p, q in zip(plain, other):
        assert p.read_bytes() == q.read_bytes()


def test_a_long_class_name_is_cut_at_the_image_and_does_not_shrink_the_grid():
    rng = np.random.default_rng(0)
    sample = {"image": rng.random((3, 96, 96)), "boxes": np.array([[60.0, 10, 90, 30]]), "labels": np.array([0]),
              "scores": np.array([0.9]), "gt_boxes": None}
    extents = []
    for name in ("a", "latin_small_letter_n_preceded_by_apostrophe_and_more"):
        fig = detection_grid([sample] * 4, [name], cols=2)
        fig.canvas.draw()  # the layout is made at draw time
        extents.append([tuple(np.round(ax.get_position().bounds, 4)) for ax in fig.axes])
        plt.close(fig)
    assert extents[0] == extents[1]  # the label is clipped to its image: the layout makes no room for it
