"""Tests for dlde.plots.tools.print_check (``python -m dlde.plots.tools print-check``): figures drawn at their
print width, text size there, series told apart by colour only, grey levels."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dlde.plots import embedding_plots, metric_plots, vocabulary_plots  # noqa: E402
from dlde.plots.plotting import BUCKET_COLORS, MIN_TEXT_PT, PRINT_WIDTHS, WIDTH, save_figure  # noqa: E402
from dlde.plots.tools import print_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_text_sizes_are_those_drawn():
    fig, (ax, hidden) = plt.subplots(1, 2)
    ax.set_title("title", fontsize=12)
    ax.tick_params(labelsize=5)
    ax.set_xlabel("x", fontsize=9)
    ax.text(0.5, 0.5, "   ", fontsize=3)  # blank: not text
    hidden.set_title("hidden", fontsize=2)
    hidden.axis("off")
    hidden.set_visible(False)
    sizes = print_check.text_sizes(fig)
    assert ("title", 12.0) in [(text, size) for size, text in sizes]
    assert min(size for size, _ in sizes) == 5.0  # the tick labels
    assert all(text.strip() for _, text in sizes) and "hidden" not in [text for _, text in sizes]


def test_colour_only_series_found_and_cleared_by_marker_or_hatch():
    fig, (lines, marked, bars) = plt.subplots(1, 3)
    lines.plot([0, 1], [0, 1], color="C0", marker="o", label="a")
    lines.plot([0, 1], [1, 0], color="C1", marker="o", label="b")
    lines.plot([0, 1], [1, 1], color="0.5", linestyle="--", label="reference")
    lines.legend()
    marked.plot([0, 1], [0, 1], color="C0", marker="o", label="c")
    marked.plot([0, 1], [1, 0], color="C1", marker="s", label="d")
    marked.legend()
    bars.hist([0, 1, 1], color="C0", alpha=0.6, label="known")
    bars.hist([0, 0, 1], color="C1", alpha=0.6, hatch="//", label="unknown")
    bars.legend()
    assert print_check.colour_only_series(fig) == [["a", "b"]]


def test_grey_levels_and_close_pairs():
    assert print_check.grey_level("black") == 0.0
    assert print_check.grey_level("white") == pytest.approx(1.0)
    assert print_check.grey_level("#00ff00") == pytest.approx(0.587)
    pairs = print_check.close_grey_pairs({"blue": "#0072B2", "green": "#009E73", "yellow": "#F0E442"})
    assert [(a, b) for a, b, _ in pairs] == [("blue", "green")]
    assert pairs[0][2] == pytest.approx(0.0734, abs=1e-3)
    assert print_check.close_grey_pairs({name: colour for name, colour in BUCKET_COLORS.values()}) == []


def test_a_figure_at_no_print_width_fails_and_is_read_at_one_column(tmp_path):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([0, 1], [0, 1], label="one")
    (path,) = save_figure(fig, tmp_path, "train_curves", formats=("png",), dpi=50)
    assert print_check.png_geometry(path) == (250, 150, 50.0)
    check = print_check.check_figure(path, tmp_path)
    assert check.drawn_by == "plot_training_curves" and check.width_in == 5.0 and check.print_in == WIDTH
    assert check.scale == pytest.approx(0.68) and check.smallest_pt == 7.0  # the sample's tick labels
    assert check.failures == ["drawn 5.00 in wide, at no print width (3.4 or 7 in)",
                              "text 4.8 pt at 3.4 in (6 pt when printed 4.3 in wide)"]
    assert print_check.check_figure(path, tmp_path, column_in=4.3).failures == []  # the width asked for


@pytest.mark.parametrize("columns", sorted(PRINT_WIDTHS))
def test_a_figure_drawn_at_a_print_width_is_read_at_it(tmp_path, columns):
    fig, ax = plt.subplots(figsize=(PRINT_WIDTHS[columns], 2))
    (path,) = save_figure(fig, tmp_path, "per_class_ap", formats=("png",), dpi=150)
    check = print_check.check_figure(path, tmp_path)
    assert print_check.print_columns(check.width_in) == columns and check.print_in == PRINT_WIDTHS[columns]
    assert check.scale == pytest.approx(1.0) and check.failures == []


def test_classes_in_colour_are_a_note_and_a_screenshot_is_width_only(tmp_path):
    check = print_check.FigureCheck("embeddings_umap", 3.4, 3.4, "plot_embedding_2d", 8.0,
                                    [[str(c) for c in range(10)], ["a", "b"]])
    assert check.failures == ["colour only: a, b"] and check.notes == ["10 classes in colour only"]
    screenshot = print_check.FigureCheck("jupyterlab", 19.4, 3.4, None, None, [], at_print_width=False)
    assert screenshot.failures == []  # not a figure of dlde: no print width to keep
    assert screenshot.notes == ["not a plot of dlde (no sample): width only"]


def test_every_committed_figure_has_a_sample():
    names = [p.relative_to(ROOT / "figures").with_suffix("").as_posix() for p in (ROOT / "figures").rglob("*.png")]
    assert len(names) > 30
    unmatched = [name for name in names if print_check.sample_for(name) is None]
    assert unmatched == ["jupyterlab"]  # the screenshot of the README


@pytest.mark.parametrize("pattern", list(print_check.SAMPLES))
def test_every_plot_is_drawn_at_a_print_width_and_reads_there(pattern):
    sample = print_check.SAMPLES[pattern]
    assert print_check.sample_for(sample.example) is sample  # what --drawn saves it as finds it again
    fig = sample.build()
    assert print_check.print_columns(fig.get_figwidth()) in PRINT_WIDTHS
    assert min(size for size, _ in print_check.text_sizes(fig)) >= MIN_TEXT_PT  # printed at its own size
    assert all(len(group) > print_check.MAX_SERIES for group in print_check.colour_only_series(fig))  # classes


def test_drawn_option_checks_the_figures_of_the_current_code(tmp_path, monkeypatch, capsys):
    samples = {pattern: print_check.SAMPLES[pattern] for pattern in (r"(sigmoid_)?train_curves", r"ablations/.*")}
    monkeypatch.setattr(print_check, "SAMPLES", samples)
    assert print_check.main(["--drawn", "--save", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "ablations/means_lr.png", "train_curves.png"]
    out = capsys.readouterr().out
    assert "| train_curves | plot_training_curves | 3.40 | 1 | 3.4 | 7.0 | 7.0 | passes |" in out
    assert "| ablations/means_lr | plot_sweep | 7.00 | 2 | 7 | 7.0 | 7.0 | passes |" in out
    assert out.rstrip().endswith("2 figures, 0 fail in print")


def test_figures_fixed_for_grey_tell_their_series_apart_without_colour():
    rng = np.random.default_rng(0)
    curve = {"bin_edges": np.linspace(0, 1, 11), "confidence": np.linspace(0.05, 0.95, 10),
             "accuracy": rng.uniform(0, 1, 10), "count": np.full(10, 3)}
    roc = {"fpr": np.linspace(0, 1, 50), "tpr": np.linspace(0, 1, 50) ** 0.5, "auroc": 0.6}
    figures = [
        metric_plots.plot_training_curves([{"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "AP": 0.1 * e,
                                            "AP50": 0.2 * e} for e in (1, 2, 3)]),
        metric_plots.plot_reliability({"dlde": curve, "sigmoid": curve, "prototypes": curve}),
        metric_plots.plot_roc({"dlde": roc, "sigmoid": roc, "prototypes": roc}),
        metric_plots.plot_score_histograms(rng.uniform(size=20), rng.uniform(size=20)),
        embedding_plots.plot_cosine_histograms(rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20)),
        metric_plots.plot_per_class_ap({model: {"cat": 0.5, "dog": 0.6} for model in ("dlde", "sigmoid", "protos")}),
    ]
    assert [print_check.colour_only_series(fig) for fig in figures] == [[]] * len(figures)


def test_one_column_figures_pass_at_one_column():
    rows = [{"classes": c, "head": head, "AP_mean": 0.5, "AP_low": 0.4, "AP_high": 0.6}
            for head in ("dlde", "retinanet", "prototypes") for c in (10, 100)]
    fig = vocabulary_plots.plot_against_classes(rows, ("AP",))
    assert fig.get_size_inches()[0] == WIDTH
    smallest = min(size for size, _ in print_check.text_sizes(fig))
    assert smallest * print_check.column_scale(WIDTH) >= print_check.MIN_TEXT_PT
    assert print_check.colour_only_series(fig) == []


@pytest.mark.parametrize("name, drawn_by", [("unknown_scores_over_seeds", "plot_unknown_scores"),
                                            ("unknown_scores_dlde_cosine", "plot_score_histograms"),
                                            ("sigmoid_inference", "detection_grid"),
                                            ("ablations/means_lr_collapse", "plot_collapse"),
                                            ("ablations/means_lr", "plot_sweep"),
                                            ("vocabulary/vocabulary_arms_screen", "plot_arms"),
                                            ("vocabulary/vocabulary_tracking", "plot_tracking"),
                                            ("ablations/vocabulary_screen", "plot_sweep")])
def test_file_names_find_the_function_that_drew_them(name, drawn_by):
    assert print_check.sample_for(name).drawn_by == drawn_by
