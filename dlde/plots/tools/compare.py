"""Whether two figure files show the same thing: same bytes, same pixels, or how much differs.

A PNG's bytes are its pixels and dpi compressed by zlib, so two PNGs with equal pixels can still
differ in their bytes (another zlib, another compression level, other metadata). A PDF records
coordinates to 1e-10 pt, so a rounding difference far below a pixel changes its bytes while the
figure looks the same. :func:`compare_figures` tells these cases apart:

- ``same bytes``;
- PNG: ``same pixels`` (the decoded arrays are equal; metadata or compression differ), or
  ``differs: x.x % of pixels``;
- PDF: ``same drawing`` (the same objects once the streams are decompressed and the metadata
  left out, every number within :data:`PDF_TOLERANCE` points), or ``differs``;
- any other file: ``differs``.

Command line (exit status 1 when a figure present in both folders differs)::

    python -m dlde.plots.tools compare figures/ other_clone/figures/
"""

from __future__ import annotations

import argparse
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Comparison", "FolderComparison", "compare_figures", "compare_folders", "main", "PDF_TOLERANCE",
           "FIGURE_SUFFIXES"]

#: Largest difference of a number (a coordinate in points, 1/72 inch) in two PDFs that still draw the same
#: figure: a thousandth of a point is 1/500 of a pixel at 150 dpi.
PDF_TOLERANCE = 1e-3
#: The files :func:`compare_folders` compares.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

_PDF_OBJECT = re.compile(rb"(\d+) 0 obj\s(.*?)(?:stream\r?\n(.*?)\r?\nendstream\s*)?endobj", re.S)
_PDF_LENGTH_REF = re.compile(rb"/Length (\d+) 0 R")
_PDF_LENGTH = re.compile(rb"/Length \d+(?: \d+ R)?")
_PDF_INFO_REF = re.compile(rb"/Info (\d+) 0 R")
_NUMBER = re.compile(rb"[-+]?(?:\d+\.\d*|\.\d+|\d+)")


@dataclass(frozen=True)
class Comparison:
    """The verdict on two files.

    Attributes:
        verdict: ``same bytes``, ``same pixels``, ``same drawing`` or ``differs``.
        detail: what else differs (dpi, image size, largest number difference), or "".
        fraction: the fraction of pixels that differ (PNG of equal size), else None.
    """

    verdict: str
    detail: str = ""
    fraction: float | None = None

    @property
    def same(self) -> bool:
        """Whether both files show the same figure (any verdict but ``differs``)."""
        return self.verdict != "differs"

    def __str__(self) -> str:
        text = self.verdict
        if self.fraction is not None:
            text += f": {_percent(self.fraction)} of pixels"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class FolderComparison:
    """The figure files of two folders.

    Attributes:
        compared: relative path -> :class:`Comparison`, for the files present in both, sorted.
        only_a: relative paths of the figure files found only in the first folder.
        only_b: those only in the second.
    """

    compared: dict[str, Comparison]
    only_a: list[str]
    only_b: list[str]

    @property
    def differing(self) -> list[str]:
        """Relative paths of the files present in both that differ."""
        return [name for name, result in self.compared.items() if not result.same]


def _percent(fraction: float) -> str:
    """``fraction`` as a percentage: one decimal, or two significant digits below 0.1 %."""
    return f"{100 * fraction:.1f} %" if fraction >= 1e-3 or fraction == 0 else f"{100 * fraction:.2g} %"


def compare_figures(a: str | Path, b: str | Path) -> Comparison:
    """Compares two figure files of the same format (chosen by the suffix of ``a``).

    Args:
        a: a PNG, PDF or other file.
        b: the file to compare it with.

    Returns:
        The :class:`Comparison` (see the module docstring for the verdicts).
    """
    data_a, data_b = Path(a).read_bytes(), Path(b).read_bytes()
    if data_a == data_b:
        return Comparison("same bytes")
    suffix = Path(a).suffix.lower()
    if suffix == ".png":
        return _compare_png(Path(a), Path(b))
    if suffix == ".pdf":
        return _compare_pdf(data_a, data_b)
    return Comparison("differs")


def _compare_png(a: Path, b: Path) -> Comparison:
    """Decoded pixels of two PNGs (as RGBA when their modes differ) and their dpi."""
    with Image.open(a) as image_a, Image.open(b) as image_b:
        dpi = [image.info.get("dpi") for image in (image_a, image_b)]
        if image_a.mode != image_b.mode:
            image_a, image_b = image_a.convert("RGBA"), image_b.convert("RGBA")
        pixels_a, pixels_b = np.asarray(image_a), np.asarray(image_b)  # (H, W[, channels])
    if pixels_a.shape != pixels_b.shape:
        size_a, size_b = (f"{p.shape[1]}x{p.shape[0]}" for p in (pixels_a, pixels_b))
        return Comparison("differs", f"size {size_a} vs {size_b}")
    detail = "" if dpi[0] == dpi[1] else f"dpi {_dpi(dpi[0])} vs {_dpi(dpi[1])}"
    changed = pixels_a != pixels_b
    if changed.ndim == 3:
        changed = changed.any(axis=2)  # (H, W): a pixel differs when any channel does
    if not changed.any():
        return Comparison("same pixels", detail or "metadata or compression differ")
    count = int(changed.sum())
    detail = f"{count:,} of {changed.size:,}" + (f"; {detail}" if detail else "")
    return Comparison("differs", detail, fraction=count / changed.size)


def _dpi(dpi: tuple[float, float] | None) -> str:
    """A PNG's dpi as read by Pillow, rounded (the file stores pixels per metre)."""
    return "none" if dpi is None else f"{round(dpi[0])}"


def _compare_pdf(a: bytes, b: bytes) -> Comparison:
    """Two PDFs object by object, streams decompressed, numbers within :data:`PDF_TOLERANCE`."""
    objects_a, objects_b = _pdf_objects(a), _pdf_objects(b)
    if not objects_a or objects_a.keys() != objects_b.keys():
        return Comparison("differs", "other objects")
    largest = 0.0
    for number, body in objects_a.items():
        other = objects_b[number]
        if body == other:
            continue
        values_a, values_b = _NUMBER.findall(body), _NUMBER.findall(other)
        if _NUMBER.split(body) != _NUMBER.split(other) or len(values_a) != len(values_b):
            return Comparison("differs", f"object {number}")
        gap = max(abs(float(x) - float(y)) for x, y in zip(values_a, values_b))
        if gap > PDF_TOLERANCE:
            return Comparison("differs", f"object {number}: numbers differ by up to {gap:.3g}")
        largest = max(largest, gap)
    detail = f"numbers differ by up to {largest:.2g} pt" if largest else "metadata or compression differ"
    return Comparison("same drawing", detail)


def _pdf_objects(data: bytes) -> dict[int, bytes]:
    """A PDF's objects, number -> body with its stream decompressed (FlateDecode), without the
    stream lengths that change with the compression and without the metadata (the objects holding
    them, and the /Info dictionary, are left out)."""
    objects, skipped = {}, {int(n) for n in _PDF_INFO_REF.findall(data)}
    for match in _PDF_OBJECT.finditer(data):
        head, stream = match.group(2), match.group(3)
        skipped.update(int(n) for n in _PDF_LENGTH_REF.findall(head))
        if stream is not None and b"/FlateDecode" in head:
            try:
                stream = zlib.decompress(stream)
            except zlib.error:
                pass  # compared as stored
        objects[int(match.group(1))] = _PDF_LENGTH.sub(b"/Length", head) + (stream or b"")
    return {number: body for number, body in objects.items() if number not in skipped}


def compare_folders(a: str | Path, b: str | Path) -> FolderComparison:
    """Compares every figure file (:data:`FIGURE_SUFFIXES`, subfolders included) found in both folders.

    Args:
        a: a folder of figures, e.g. ``figures``.
        b: another, e.g. the ``figures`` of another clone.

    Returns:
        The :class:`FolderComparison`, paths relative to the folders (``/``-separated).
    """
    names_a, names_b = (_figure_files(Path(folder)) for folder in (a, b))
    both = sorted(names_a & names_b)
    compared = {name: compare_figures(Path(a) / name, Path(b) / name) for name in both}
    return FolderComparison(compared, sorted(names_a - names_b), sorted(names_b - names_a))


def _figure_files(folder: Path) -> set[str]:
    """Relative paths of the figure files under ``folder``."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES}


def main(argv: Sequence[str] | None = None) -> int:
    """Prints one line per figure file of two folders and a count; returns 1 when one differs."""
    parser = argparse.ArgumentParser(prog="python -m dlde.plots.tools compare", description=__doc__.split("\n")[0])
    parser.add_argument("dir_a", help="a folder of figures")
    parser.add_argument("dir_b", help="the folder to compare it with")
    args = parser.parse_args(argv)
    result = compare_folders(args.dir_a, args.dir_b)
    width = max((len(name) for name in result.compared), default=0)
    for name, comparison in result.compared.items():
        print(f"{name:<{width}}  {comparison}")
    for folder, names in ((args.dir_a, result.only_a), (args.dir_b, result.only_b)):
        for name in names:
            print(f"{name:<{width}}  only in {folder}")
    verdicts = [comparison.verdict for comparison in result.compared.values()]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
    print(f"{len(verdicts)} figure files in both: {counts or 'none'}")
    return 1 if result.differing else 0

