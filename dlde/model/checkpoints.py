"""Writing and reading checkpoints: atomic, plain data only, never non-finite."""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a torn one. Temporary
    files left by an earlier kill during a write (``.<name>.*.tmp``) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors naming the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated, not a torch file, or holding objects other than plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a readable dlde checkpoint (truncated, or not plain data): "
                         f"{reason[:200]}") from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: not a dlde checkpoint (a {type(checkpoint).__name__}, not a dict)")
    return dict(checkpoint)


def check_finite_state(state: Mapping[str, Any], what: str) -> None:
    """Refuse a state dict with NaN or infinite floating-point tensors (naming them)."""
    bad = [name for name, value in state.items()
           if isinstance(value, Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{what}: non-finite values in {shown}; refusing a model that would score nothing")
