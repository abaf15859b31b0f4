"""Tests for dlde.plots.tools.compare (``python -m dlde.plots.tools compare``): a figure's pixels (PNG) or
drawing (PDF) compared, not only its bytes."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from dlde.plots.tools import cli  # noqa: E402
from dlde.plots.tools.compare import PDF_TOLERANCE, compare_figures, compare_folders, main  # noqa: E402


def _pixels(height=10, width=20):
    """(H, W, 4) uint8 RGBA pixels, all different from their neighbours."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)


def _png(path, pixels, *, text=None, dpi=(150, 150), compress_level=6):
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.fromarray(pixels, "RGBA").save(path, pnginfo=info, dpi=dpi, compress_level=compress_level)
    return path


def test_identical_files_are_the_same_bytes(tmp_path):
    a = _png(tmp_path / "a.png", _pixels())
    b = _png(tmp_path / "b.png", _pixels())
    result = compare_figures(a, b)
    assert result.verdict == "same bytes" and result.same and str(result) == "same bytes"


def test_same_pixels_with_other_metadata_and_compression(tmp_path):
    a = _png(tmp_path / "a.png", _pixels())
    b = _png(tmp_path / "b.png", _pixels(), text={"Software": "Matplotlib version3.11.2"}, compress_level=1)
    assert a.read_bytes() != b.read_bytes()
    result = compare_figures(a, b)
    assert result.verdict == "same pixels" and result.same and result.fraction is None
    assert str(result) == "same pixels (metadata or compression differ)"


def test_same_pixels_at_another_dpi_says_so(tmp_path):
    a = _png(tmp_path / "a.png", _pixels())
    b = _png(tmp_path / "b.png", _pixels(), dpi=(100, 100))
    assert str(compare_figures(a, b)) == "same pixels (dpi 150 vs 100)"


@pytest.mark.parametrize("changed, percent", [([(3, 4, 0)], "0.5 %"), ([(0, 0, 3), (9, 19, 1)], "1.0 %")])
def test_changed_pixels_give_their_percentage(tmp_path, changed, percent):
    pixels = _pixels()  # 200 pixels
    other = pixels.copy()
    for y, x, channel in changed:
        other[y, x, channel] ^= 1  # one channel of one pixel, alpha included
    result = compare_figures(_png(tmp_path / "a.png", pixels), _png(tmp_path / "b.png", other))
    assert not result.same and result.fraction == pytest.approx(len(changed) / 200)
    assert str(result) == f"differs: {percent} of pixels ({len(changed)} of 200)"


def test_a_single_pixel_of_a_large_image_is_not_rounded_away(tmp_path):
    pixels = np.zeros((100, 200, 4), dtype=np.uint8)
    other = pixels.copy()
    other[50, 50] = 255
    result = compare_figures(_png(tmp_path / "a.png", pixels), _png(tmp_path / "b.png", other))
    assert str(result) == "differs: 0.005 % of pixels (1 of 20,000)"


def test_other_size_or_mode(tmp_path):
    a = _png(tmp_path / "a.png", _pixels())
    assert str(compare_figures(a, _png(tmp_path / "b.png", _pixels(10, 21)))) == "differs (size 20x10 vs 21x10)"
    rgb = tmp_path / "rgb.png"
    opaque = _pixels()
    opaque[..., 3] = 255
    Image.fromarray(opaque[..., :3], "RGB").save(rgb, dpi=(150, 150))
    assert compare_figures(_png(tmp_path / "opaque.png", opaque), rgb).verdict == "same pixels"


def _pdf(path, shift=0.0, creator=None):
    fig = Figure(figsize=(2, 2))
    ax = fig.add_subplot()
    ax.plot([0.0, 1.0, 2.0], [0.0, 1.0 + shift, 0.5])
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    fig.savefig(path, format="pdf", metadata={"CreationDate": None, "Creator": creator})
    return path


def test_pdf_same_drawing_within_tolerance_and_differs_beyond(tmp_path):
    a = _pdf(tmp_path / "a.pdf")
    assert compare_figures(a, _pdf(tmp_path / "same.pdf")).verdict == "same bytes"
    tiny = compare_figures(a, _pdf(tmp_path / "tiny.pdf", shift=1e-5))  # 1e-5 data units: 6e-4 pt
    assert tiny.verdict == "same drawing" and tiny.detail.startswith("numbers differ by up to")
    visible = compare_figures(a, _pdf(tmp_path / "visible.pdf", shift=0.05))  # 2.8 pt
    assert visible.verdict == "differs" and not visible.same and "numbers differ by up to" in visible.detail
    gap = float(visible.detail.rsplit(" ", 1)[1])
    assert gap > PDF_TOLERANCE


def test_pdf_metadata_only_is_the_same_drawing(tmp_path):
    result = compare_figures(_pdf(tmp_path / "a.pdf"), _pdf(tmp_path / "b.pdf", creator="someone else"))
    assert str(result) == "same drawing (metadata or compression differ)"


def test_other_files_are_same_bytes_or_differ(tmp_path):
    (tmp_path / "a.svg").write_text("<svg/>")
    (tmp_path / "b.svg").write_text("<svg />")
    assert compare_figures(tmp_path / "a.svg", tmp_path / "b.svg").verdict == "differs"


def _folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b, a / "ablations", b / "ablations"):
        folder.mkdir(exist_ok=True)
    pixels = _pixels()
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    _png(a / "same.png", pixels)
    _png(b / "same.png", pixels, compress_level=9)
    _png(a / "ablations" / "sweep.png", pixels)
    _png(b / "ablations" / "sweep.png", changed)
    _png(a / "only_a.png", pixels)
    (a / "notes.md").write_text("not a figure")
    (b / "notes.md").write_text("other text")
    return a, b


def test_compare_folders_pairs_files_by_relative_path(tmp_path):
    a, b = _folders(tmp_path)
    result = compare_folders(a, b)
    assert list(result.compared) == ["ablations/sweep.png", "same.png"]
    assert result.compared["same.png"].verdict == "same pixels"
    assert result.differing == ["ablations/sweep.png"]
    assert result.only_a == ["only_a.png"] and result.only_b == []
    with pytest.raises(NotADirectoryError):
        compare_folders(a, tmp_path / "missing")


def test_command_line_prints_one_line_per_file_and_fails_on_a_difference(tmp_path, capsys):
    a, b = _folders(tmp_path)
    assert main([str(a), str(b)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ablations/sweep.png", "differs:", "0.5", "%", "of", "pixels", "(1", "of", "200)"]
    assert lines[1].startswith("same.png") and lines[1].endswith("same pixels (metadata or compression differ)")
    assert lines[2].startswith("only_a.png") and lines[2].endswith(f"only in {a}")
    assert lines[3] == "2 figure files in both: 1 differs, 1 same pixels"
    (b / "ablations" / "sweep.png").write_bytes((a / "ablations" / "sweep.png").read_bytes())
    assert main([str(a), str(b)]) == 0


def test_the_tools_command_runs_compare_and_names_its_commands(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        _png(folder / "x.png", _pixels())
    assert cli.main(["compare", str(a), str(b)]) == 0
    assert "x.png  same bytes" in capsys.readouterr().out
    assert cli.main(["nothing"]) == 2 and cli.main([]) == 2
    assert "{compare,print-check}" in capsys.readouterr().err
