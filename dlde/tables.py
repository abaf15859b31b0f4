"""The one table writer: markdown tables, one cell of a mean and its interval, and table files.

Every table of dlde (the sweep tables of :mod:`dlde.reports.sweeps`, the protocols' tables of
:mod:`dlde.protocols.tables`, the pipeline's ``metrics.md`` and ``index.md``, the benchmarks') is
written by :func:`markdown_table`; a mean with its t-interval (:func:`dlde.analysis.stats.t_interval`)
by :func:`interval_cell`.

Every table *file* (``figures/metrics.md``, ``figures/ablations/<sweep>.md``, the benchmarks'
tables) is written by :func:`write_table_file`, which ends it with one provenance line naming the
commit of ``dlde/``, the command and the UTC date that produced it::

    <sub>commit 25dee26 · `.venv/bin/python -m dlde.pipeline --config figures.yaml` · 2026-11-30</sub>

:func:`split_provenance` separates that line from what the numbers made (so a test can rebuild the
rest byte for byte from the saved numbers); :func:`missing_provenance` names files without one.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlde.files import atomic_write_text
from dlde.kernels import SETTINGS as KERNEL_SETTINGS
from dlde.kernels import setting as kernel_setting

#: The folder whose last commit a table file names (relative to the checkout's root).
CODE_FOLDER = "dlde"
#: The provenance line of a table file (its last line): commit (``+changes`` when ``dlde/`` had
#: uncommitted changes; ``unknown`` outside a git checkout), command, UTC date.
PROVENANCE = re.compile(r"^<sub>commit (?P<commit>[0-9a-f]{4,40}(?:\+changes)?|unknown) · "
                        r"`(?P<command>[^`\n]+)` · (?P<date>\d{4}-\d{2}-\d{2})"
                        r"(?: · (?P<kernels>portable|native) kernels)?</sub>$")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header, the separator, one line per row (no trailing newline).

    Args:
        header: the column titles.
        rows: per row, its cells already formatted (as many as ``header``).
    """
    lines = [_line(header), "|" + "---|" * len(header)]
    lines += [_line(row) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def code_value(value: Any) -> str:
    """A parameter's value as a code span of a cell: a string JSON-quoted (```"digits"```), anything else as is."""
    return f"`{json.dumps(value)}`" if isinstance(value, str) else f"`{value}`"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def interval_cell(stat: Mapping[str, float], digits: int = 3, *, sd: bool = False, missing: str = "n/a") -> str:
    """``mean [low, high]`` of a :func:`dlde.analysis.stats.t_interval` (``mean ± sd [low, high]`` with ``sd``).

    Args:
        stat: ``mean``, ``low``, ``high`` (and ``sd`` when shown).
        digits: decimals of every number.
        sd: show the standard deviation after the mean.
        missing: the cell when the mean is NaN (no value).

    The parts that are NaN (a single value has no spread and no interval) are left out.
    """
    if not _finite(stat["mean"]):
        return missing
    cell = f"{stat['mean']:.{digits}f}"
    if sd and _finite(stat["sd"]):
        cell += f" ± {stat['sd']:.{digits}f}"
    if _finite(stat["low"]) and _finite(stat["high"]):
        cell += f" [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"
    return cell


# ------------------------------------------------------------------------------ table files
def code_commit(root: str | os.PathLike | None = None) -> str:
    """The last commit that changed ``dlde/`` in a checkout (``git log -1 --format=%h -- dlde``).

    Args:
        root: the checkout's root (default: the one holding this package).

    Returns:
        The short hash, with ``+changes`` when ``dlde/`` holds uncommitted (or untracked, not
        ignored) changes; ``unknown`` outside a git checkout or without git.
    """
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    try:
        commit = _git(root, "log", "-1", "--format=%h", "--", CODE_FOLDER)
        changed = _git(root, "status", "--porcelain", "--", CODE_FOLDER)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return commit + ("+changes" if changed else "")


def _git(root: Path, *arguments: str) -> str:
    """The stripped output of ``git -C root ...``; raises when git fails."""
    return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def command_line(argv: Sequence[str] | None = None, executable: str | None = None) -> str:
    """The running command as it was typed: ``<python> -m <module> ...`` or ``<python> <script> ...``.

    Args:
        argv: the arguments (default ``sys.argv``); ``argv[0]`` a module's file (run with ``-m``
            when it lies in a package: the dotted name, without ``__main__``) or a script.
        executable: the interpreter (default ``sys.executable``).

    Paths under the working folder are shown relative to it (``.venv/bin/python``,
    ``benchmarks/step_time.py``).
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv and argv[0] else None
    words = [_shown(executable or sys.executable or "python")]
    if program is not None and program.suffix == ".py" and (program.parent / "__init__.py").exists():
        parts = [] if program.stem == "__main__" else [program.stem]
        folder = program.resolve().parent
        while (folder / "__init__.py").exists():
            parts.insert(0, folder.name)
            folder = folder.parent
        words += ["-m", ".".join(parts)]
    elif program is not None:
        words.append(_shown(str(program)))
    return shlex.join(words + argv[1:]).replace("`", "'")


def _shown(path: str) -> str:
    """``path`` relative to the working folder when inside it, else as given."""
    try:
        return Path(path).absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def provenance_line(command: str | None = None, *, commit: str | None = None, date: str | None = None,
                    kernels: str | None = None) -> str:
    """The last line of a table file: ``<sub>commit C · `command` · YYYY-MM-DD · K kernels</sub>``.

    Args:
        command: what produced the table (default: :func:`command_line`).
        commit: default :func:`code_commit`.
        date: default today's UTC date.
        kernels: ``'portable'`` or ``'native'`` (:mod:`dlde.kernels`; default: this process's setting).
    """
    command = (command_line() if command is None else command).replace("`", "'").replace("\n", " ")
    commit = code_commit() if commit is None else commit
    date = datetime.now(timezone.utc).date().isoformat() if date is None else date
    kernels = kernel_setting() if kernels is None else kernels
    if kernels not in KERNEL_SETTINGS:
        raise ValueError(f"kernels must be one of {KERNEL_SETTINGS}, got {kernels!r}")
    return f"<sub>commit {commit} · `{command}` · {date} · {kernels} kernels</sub>"


def write_table_file(path: str | os.PathLike, text: str, *, command: str | None = None) -> Path:
    """Write a table file atomically: ``text``, an empty line, the :func:`provenance_line`.

    Args:
        path: e.g. ``figures/metrics.md``.
        text: the file's content (tables, headings, notes); trailing newlines are normalized to one.
        command: what produced it (default: the running command line).

    Returns:
        The path.
    """
    return atomic_write_text(path, text.rstrip("\n") + "\n\n" + provenance_line(command) + "\n")


def split_provenance(text: str) -> tuple[str, dict[str, str] | None]:
    """A table file's content and its provenance (``commit``, ``command``, ``date``; None without one).

    The content is what :func:`write_table_file` was given (ending with one newline) when the file
    has a provenance line, else ``text`` unchanged.
    """
    body, _, last = text.rstrip("\n").rpartition("\n")
    match = PROVENANCE.match(last)
    if match is None:
        return text, None
    return body.rstrip("\n") + "\n", match.groupdict()


def missing_provenance(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The table files among ``paths`` whose last line is not a provenance line (in order)."""
    return [Path(p) for p in paths if split_provenance(Path(p).read_text(encoding="utf-8"))[1] is None]
