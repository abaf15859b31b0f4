"""The documents' results tables, copied from the table files the pipeline and the benchmarks write,
and the documents' links, checked.

The documents are README.md and every markdown file under ``docs/`` beside it
(:func:`documents`). A table of a document that a file holds sits between two markers naming that
file, relative to the repository root (the README's folder) in every document, ``docs/*.md``
too::

    <!-- table: figures/metrics.md -->
    ...
    <!-- /table -->

``#k`` after the path picks the k-th table (1-based) of a file holding several
(``figures/few_shot_benchmark.md#2``). :func:`render` puts between the markers the file's table
verbatim and then its provenance line (:func:`dlde.tables.write_table_file`), each after
an empty line; an indented marker (a table inside a list item) indents the whole block.

A table made by hand from files (a pivot of one, a summary of several) sits between::

    <!-- derived: figures/ablations/means_lr.md figures/ablations/means_update.md -->
    ...
    <!-- /derived -->

It is not rewritten, but every number it shows must appear in one of its files
(:func:`unquoted_numbers`).

Markers name files from the root; markdown links and images are relative to the document that
holds them, as GitHub reads them (``../figures/metrics.md`` in ``docs/results.md``).
:func:`broken_links` lists the relative links and image paths that name no file, and the anchors
(``#a-heading``) that name no heading of their document.

::

    python -m dlde.pipeline.readme [--check] [--readme README.md]

rewrites every table block of every document from its file (``make figures``, ``make ablations``
and ``make vocabulary`` end with it); ``--check`` writes nothing and exits 1 naming each block that
differs. Both exit 1 when a derived table quotes a number none of its files holds, a link or image
names nothing, or a table file (:data:`TABLE_FILES`) has no provenance line, 2 on a missing file or
a broken marker (one line naming document, line and file); they warn, without changing the exit
status, when the table files of all documents name more than one commit of ``dlde/`` (a number in
one of them may come from other code).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dlde.files import atomic_write_text
from dlde.tables import missing_provenance, split_provenance

#: The repository's README (the one next to this package); its folder is the root of every marker.
README = Path(__file__).resolve().parents[2] / "README.md"
#: The folder (beside the README) whose markdown files are documents too.
DOCS = "docs"
#: The table files (relative to the root) that must name their commit, command and date, besides
#: every file a document's block names: every markdown file under ``figures/`` but the index.
TABLE_FILES = "figures/**/*.md"
NOT_TABLE_FILES = frozenset({"figures/index.md"})
REWRITE_COMMAND = ".venv/bin/python -m dlde.pipeline.readme"

OPEN = re.compile(r"^(?P<indent>[ \t]*)<!-- (?P<kind>table|derived): (?P<sources>\S.*?) -->[ \t]*$")
CLOSE = re.compile(r"^[ \t]*<!-- /(?P<kind>table|derived) -->[ \t]*$")
MARKER_LIKE = re.compile(r"^\s*<!--\s*/?\s*(table|derived)\b")  # a line that meant to be a marker
NUMBER = re.compile(r"(?:(?<![\w-])-)?\d+(?:,\d{3})*(?:\.\d+)?")  # the hyphen of glyphs-100 is no sign
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


class ReadmeError(ValueError):
    """A document's block that cannot be rendered: a broken marker or a missing or unfitting file."""


@dataclass(frozen=True)
class Block:
    """One marked block of a document."""

    kind: str  # "table" (rewritten from its file) or "derived" (checked against its files)
    sources: tuple[str, ...]  # as written in the marker (a table's with its "#k")
    start: int  # index of the opening marker's line
    end: int  # index of the closing marker's line
    indent: str  # the opening marker's indentation, given to every line of the block


def parse_blocks(lines: Sequence[str], name: str = "README.md") -> list[Block]:
    """The marked blocks of ``lines``, in order.

    Raises:
        ReadmeError: a marker that is malformed, unclosed, closed twice, or closed by the other kind.
    """
    blocks, opened = [], None
    for index, line in enumerate(lines):
        start, end = OPEN.match(line), CLOSE.match(line)
        if start is None and end is None:
            if MARKER_LIKE.search(line):
                raise ReadmeError(f"{name}:{index + 1}: malformed marker {line.strip()!r}: write "
                                  "'<!-- table: PATH[#k] -->', '<!-- derived: PATH ... -->' or '<!-- /table -->'")
            continue
        if opened is not None and start is not None:
            raise ReadmeError(f"{name}:{opened[0] + 1}: unclosed marker {lines[opened[0]].strip()!r}: another "
                              f"opens at line {index + 1} before its '<!-- /{opened[1].group('kind')} -->'")
        if start is not None:
            opened = (index, start)
            continue
        if opened is None:
            raise ReadmeError(f"{name}:{index + 1}: {line.strip()!r} closes no marker")
        first, match = opened
        if end.group("kind") != match.group("kind"):
            raise ReadmeError(f"{name}:{index + 1}: {line.strip()!r} closes '{lines[first].strip()}' "
                              f"(line {first + 1}); write '<!-- /{match.group('kind')} -->'")
        sources = tuple(match.group("sources").split())
        if match.group("kind") == "table" and len(sources) != 1:
            raise ReadmeError(f"{name}:{first + 1}: a table block names one file, not {len(sources)}")
        blocks.append(Block(match.group("kind"), sources, first, index, match.group("indent")))
        opened = None
    if opened is not None:
        raise ReadmeError(f"{name}:{opened[0] + 1}: unclosed marker {lines[opened[0]].strip()!r}: "
                          f"no '<!-- /{opened[1].group('kind')} -->' follows")
    return blocks


def markdown_tables(text: str) -> list[list[str]]:
    """The tables of a markdown text: runs of consecutive lines starting with ``|``."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            current.append(line.strip())
        elif current:
            tables.append(current)
            current = []
    return tables


def _read(root: Path, path: str, where: str) -> str:
    file = root / path
    if not file.is_file():
        raise ReadmeError(f"{where}: the table file {path} does not exist")
    return file.read_text(encoding="utf-8")


def block_lines(block: Block, root: Path, where: str) -> list[str]:
    """What a table block holds between its markers: the file's table and provenance line.

    Raises:
        ReadmeError: the file is missing, holds no table, or several without ``#k`` picking one.
    """
    path, _, pick = block.sources[0].partition("#")
    text = _read(root, path, where)
    body, provenance = split_provenance(text)
    tables = markdown_tables(body)
    if pick:
        if not pick.isdigit() or not 1 <= int(pick) <= len(tables):
            raise ReadmeError(f"{where}: {path} holds {len(tables)} table(s); #{pick} is not one of them")
        table = tables[int(pick) - 1]
    elif len(tables) != 1:
        raise ReadmeError(f"{where}: {path} holds {len(tables)} tables; pick one with {path}#k (1-based)")
    else:
        table = tables[0]
    lines = ["", *table] + (["", text.rstrip("\n").rpartition("\n")[2]] if provenance else []) + [""]
    return [block.indent + line if line else line for line in lines]


def unquoted_numbers(block: Block, lines: Sequence[str], root: Path, where: str) -> list[str]:
    """The numbers a derived block shows that none of its files holds (in order, each once)."""
    known: set[str] = set()
    for path in block.sources:
        known.update(NUMBER.findall(split_provenance(_read(root, path, where))[0]))
    shown = NUMBER.findall("\n".join(lines[block.start + 1:block.end]))
    return list(dict.fromkeys(number for number in shown if number not in known))


@dataclass(frozen=True)
class Report:
    """What :func:`render` found: the rewritten text and one line per finding."""

    text: str
    differing: list[str]  # table blocks whose content is not their file's
    unquoted: list[str]  # derived blocks quoting numbers none of their files holds
    sources: list[str]  # every file a block names (without "#k"), in order


def render(text: str, root: str | os.PathLike, name: str = "README.md") -> Report:
    """Rewrite every table block of ``text`` from its file; check every derived block.

    Args:
        text: the document (README.md or one of docs/).
        root: the folder the markers' paths are relative to: the repository root, for every document.
        name: the document's name in messages (``README.md``, ``docs/results.md``).

    Raises:
        ReadmeError: a broken marker or an unusable file (the message names line and file).
    """
    root, lines = Path(root), text.split("\n")
    blocks = parse_blocks(lines, name)
    out, done, differing, unquoted, sources = [], 0, [], [], []
    for block in blocks:
        where = f"{name}:{block.start + 1}"
        sources += [source.partition("#")[0] for source in block.sources]
        out += lines[done:block.start + 1]
        if block.kind == "table":
            content = block_lines(block, root, where)
            if content != lines[block.start + 1:block.end]:
                differing.append(f"{where}: the table differs from {block.sources[0]} (run {REWRITE_COMMAND})")
            out += content
        else:
            out += lines[block.start + 1:block.end]
            missing = unquoted_numbers(block, lines, root, where)
            if missing:
                unquoted.append(f"{where}: the table derived from {', '.join(block.sources)} shows "
                                f"{', '.join(missing)}, which none of them holds: update it by hand")
        done = block.end
    out += lines[done:]
    return Report("\n".join(out), differing, unquoted, list(dict.fromkeys(sources)))


def table_files(root: str | os.PathLike, named: Iterable[str] = ()) -> list[Path]:
    """The table files under ``root``: those of :data:`TABLE_FILES` and the ``named`` ones that exist."""
    root = Path(root)
    found = {p.relative_to(root).as_posix() for p in root.glob(TABLE_FILES)} - NOT_TABLE_FILES
    found |= {path for path in named if (root / path).is_file()}
    return [root / path for path in sorted(found)]


def table_commits(paths: Iterable[str | os.PathLike]) -> dict[str, list[Path]]:
    """The table files among ``paths`` grouped by the commit their provenance line names (files
    without one left out), the commit named by most files first."""
    commits: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        provenance = split_provenance(path.read_text(encoding="utf-8"))[1]
        if provenance is not None:
            commits.setdefault(provenance["commit"], []).append(path)
    return dict(sorted(commits.items(), key=lambda item: -len(item[1])))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(1-based line, line)`` of ``text`` outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a markdown text's headings (a repeated heading's as ``-1``, ``-2``, ...)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            anchor = heading_anchor(match.group("title"))
            counts[anchor] = counts.get(anchor, -1) + 1
            found.add(anchor if counts[anchor] == 0 else f"{anchor}-{counts[anchor]}")
    return found


def broken_links(text: str, path: str | os.PathLike, name: str | None = None) -> list[str]:
    """One line per relative link or image path of the document at ``path`` (holding ``text``)
    that names no file or folder, or whose ``#anchor`` names no heading of a markdown target."""
    path = Path(path)
    name = name or path.name
    broken = []
    for number, line in prose_lines(text):
        for match in LINK.finditer(CODE_SPAN.sub("``", line)):  # a link inside a code span is no link
            target = match.group("target")
            if EXTERNAL.match(target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file) if file else path
            if not resolved.exists():
                broken.append(f"{name}:{number}: {target} names no file ({resolved.as_posix()} does not exist)")
            elif anchor and resolved.suffix == ".md" and resolved.is_file():
                own = text if not file else resolved.read_text(encoding="utf-8")
                if anchor not in anchors(own):
                    broken.append(f"{name}:{number}: {target}: {resolved.name} has no heading #{anchor}")
    return broken


def documents(readme: str | os.PathLike = README) -> list[Path]:
    """The documents: ``readme`` and every markdown file under :data:`DOCS` beside it, sorted."""
    readme = Path(readme)
    return [readme, *sorted((readme.parent / DOCS).rglob("*.md"))]


def render_documents(readme: str | os.PathLike = README) -> dict[str, tuple[str, Report]]:
    """Each document's name (relative to the root) -> its text and :func:`render`'s report, with
    the markers resolved from the root (the README's folder).

    Raises:
        ReadmeError: a broken marker or an unusable file in any document.
        OSError: a document cannot be read.
    """
    root = Path(readme).parent
    rendered = {}
    for path in documents(readme):
        name = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        rendered[name] = (text, render(text, root, name))
    return rendered


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dlde.pipeline.readme [--check]``: the exit status (0 ok, 1 differing, 2 error)."""
    parser = argparse.ArgumentParser(prog="python -m dlde.pipeline.readme",
                                     description="Rewrite the results tables of README.md and docs/*.md from "
                                                 "their table files, and check the documents' links.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a table differs")
    parser.add_argument("--readme", default=str(README),
                        help="the README (default: the repository's); its folder is the root, docs/ beside it holds "
                             "the other documents")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    root = readme.parent
    try:
        rendered = render_documents(readme)
    except (ReadmeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    reports = [report for _, report in rendered.values()]
    files = table_files(root, [source for report in reports for source in report.sources])
    bare = [f"error: {path.relative_to(root).as_posix()} has no provenance line (commit, command, date): "
            "re-run what writes it" for path in missing_provenance(files)]
    links = [f"error: {line}" for name, (text, _) in rendered.items() for line in broken_links(text, root / name, name)]
    commits = table_commits(files)
    if len(commits) > 1:
        named = ", ".join(f"{commit} ({len(paths)} file{'s' * (len(paths) > 1)})" for commit, paths in commits.items())
        print(f"warning: the table files come from {len(commits)} commits of dlde/: {named}", file=sys.stderr)
    unquoted = [line for report in reports for line in report.unquoted]
    differing = [line for report in reports for line in report.differing]
    for line in bare + unquoted + links + (differing if args.check else []):
        print(line, file=sys.stderr)
    if not args.check:
        for name, (text, report) in rendered.items():
            if report.text != text:
                atomic_write_text(root / name, report.text)
                print(f"{name}: rewrote {len(report.differing)} table(s) from their files")
    return 1 if bare or unquoted or links or (args.check and differing) else 0


if __name__ == "__main__":
    raise SystemExit(main())
