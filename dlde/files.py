"""Atomic file writes and tolerant JSON-lines reads: the leaf every layer of dlde writes through.

A write goes to a temporary file in the target's folder, is flushed to disk, then renamed over
the target (``os.replace``): a kill at any moment leaves the old file or the new one, never a
torn one. Temporary files an earlier kill left behind (``.<name>.*.tmp``) are removed first.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

# The permissions of a file created with open(): mkstemp's 0600 would hide results from other users.
_UMASK = os.umask(0)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(file)`` into a temporary file next to ``path``, then rename it over ``path``; returns the
    path. A kill at any moment leaves the old file or the new one; an error leaves the old one.
    (Checkpoints: :func:`dlde.model.checkpoints.atomic_save`, which keeps this module free of torch.)"""
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
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars and arrays -> Python, paths -> strings, mapping
    keys -> strings, non-finite floats -> None (JSON has no NaN), a dataclass instance -> its
    ``to_dict()`` (its fields when it has none)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """Write ``json.dumps(value, indent=indent)`` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(value, indent=indent))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` of ``array`` to ``path`` atomically (the name is kept as given); returns the path."""
    return atomic_write(path, lambda file: np.save(file, array))


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


def _holder(path: Path) -> dict[str, Any] | None:
    """The ``{"pid", "host"}`` recorded in a lock file, or None when it is absent or torn."""
    try:
        holder = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder of a lock may still run: a process of another host counts as alive."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: A lock file without a readable holder is taken over only after this many seconds.
_TORN_GRACE_S = 10.0
#: The holder of a lock file that its taker is writing this instant.
_WRITING = {"pid": None, "host": None}


def _age(path: Path) -> float:
    """Seconds since ``path`` was modified (infinite when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def try_lock(path: str | os.PathLike) -> dict[str, Any] | None:
    """Take the lock file ``path`` for this process (created exclusively, holding its pid and host).

    A lock whose process has died on this host is taken over. Release it with :func:`release_lock`.

    Returns:
        None when the lock is now this process's; otherwise the live holder's ``{"pid", "host"}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _MODE)
        except FileExistsError:
            holder = lock_holder(path)
            if holder is not None:
                return None if holder == mine else holder
            path.unlink(missing_ok=True)  # a dead process's (or a stale torn) lock
            continue
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(mine))
        return None
    return _holder(path) or dict(_WRITING)


def lock_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The live holder ``{"pid", "host"}`` of the lock file ``path``, or None when it is free: absent,
    left by a process that died on this host, or unreadable for longer than :data:`_TORN_GRACE_S`. A
    lock younger than that which cannot be read yet is being written by its taker: it is held, by
    ``{"pid": None, "host": None}``. Reads only: the lock is neither taken nor removed."""
    path = Path(path)
    holder = _holder(path)
    if holder is None:
        return dict(_WRITING) if _age(path) < _TORN_GRACE_S else None
    return holder if _alive(holder) else None


def release_lock(path: str | os.PathLike) -> None:
    """Remove the lock file ``path`` if this process holds it."""
    path = Path(path)
    if _holder(path) == {"pid": os.getpid(), "host": socket.gethostname()}:
        path.unlink(missing_ok=True)
