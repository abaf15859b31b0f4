"""Atomic file writes and tolerant JSON-lines reads: the leaf every layer of dlde writes through.

A write goes to a temporary file in the target's folder, is flushed to disk, then renamed over
the target (``os.replace``): a kill at any moment leaves the old file or the new one, never a
torn one. Temporary files an earlier kill left behind (``.<name>.*.tmp``) are removed first.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

# The permissions of a file created with open(): mkstemp's 0600 would hide results from other users.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(file)`` into a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), _MODE)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """Write ``json.dumps(value, indent=indent)`` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(value, indent=indent))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` of ``array`` to ``path`` atomically (the name is kept as given); returns the path."""
    return _atomic_write(path, lambda file: np.save(file, array))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` of ``obj`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda file: torch.save(obj, file))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line.

    A missing file gives none. A last line without its newline that is not JSON was torn by a
    writer that stopped mid-line: it is ignored. Any other line that is not JSON is an error.

    Raises:
        ValueError: a complete line is not JSON (the file and the line number are named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn last line
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
    return rows
