"""Writing and reading checkpoints: atomic, plain data only, never non-finite."""
from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from dlde.files import atomic_write

#: What ``torch.load(..., weights_only=True)`` reads back: scalars, tensors, dtypes, devices ...
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
#: ... and these containers of them (exact types: a subclass such as a namedtuple is refused on load).
_PLAIN_SEQUENCES = (list, tuple, set, torch.Size)
_PLAIN_MAPPINGS = (dict, OrderedDict)


def _first_non_plain(value: Any, where: str) -> tuple[str, Any] | None:
    """``(path, value)`` of the first value inside ``value`` that is not plain data, or None."""
    if type(value) in _PLAIN_SCALARS or isinstance(value, Tensor):
        return None
    if type(value) in _PLAIN_SEQUENCES:
        for key, item in enumerate(value):
            found = _first_non_plain(item, f"{where}[{key}]")
            if found is not None:
                return found
        return None
    if type(value) in _PLAIN_MAPPINGS:
        for key, item in value.items():
            found = _first_non_plain(key, f"{where} (a key)") or _first_non_plain(item, f"{where}[{key!r}]")
            if found is not None:
                return found
        return None
    return where, value


def check_plain_data(obj: Any, what: str) -> None:
    """Refuse ``obj`` unless ``torch.load(..., weights_only=True)`` can read it back: tensors,
    numbers, strings, bytes, None, dtypes and devices, in lists, tuples, sets and dicts.

    Raises:
        ValueError: one line naming ``what``, the path of the first other value (e.g.
            ``checkpoint['note']``) and its type.
    """
    found = _first_non_plain(obj, "checkpoint")
    if found is None:
        return
    where, value = found
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    hint = "; convert numpy values with torch.from_numpy(...) or .item()" if kind.__module__ == "numpy" else ""
    raise ValueError(f"{what}: {where} is of type {name}, not plain data (tensors, numbers, strings, None, and "
                     f"lists, tuples, sets and dicts of them), so torch.load(weights_only=True) could not read "
                     f"the file back{hint}")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``
    (:func:`dlde.files.atomic_write`): a kill at any moment leaves the old file or the new one.

    Raises:
        ValueError: ``obj`` holds something other than plain data (:func:`check_plain_data`);
            nothing is written.
    """
    check_plain_data(obj, f"{path} was not written")
    return atomic_write(path, lambda file: torch.save(obj, file))


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


def state_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """How the state dict ``found`` fails to fit a model whose state is ``expected``, in one line
    (shapes first, then missing and unexpected keys, at most five of each), or None.
    """
    def shape(value: Any) -> str:
        return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    shapes = [f"{key} has shape {shape(found[key])} in the checkpoint but {shape(value)} in the model"
              for key, value in expected.items() if key in found and shape(found[key]) != shape(value)]
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    parts = shapes[:5] + ([f"and {len(shapes) - 5} more shapes"] if len(shapes) > 5 else [])
    parts += [f"missing: {listed(missing)}"] if missing else []
    parts += [f"unexpected: {listed(unexpected)}"] if unexpected else []
    return "; ".join(parts) or None


#: Head options stored flat in checkpoints written before heads were injectable.
_LEGACY_DLDE_KEYS = ("embedding_size", "means_update", "means_lr", "means_init")


@dataclass(frozen=True)
class ModelRecord:
    """What a model checkpoint holds, whatever its layout.

    Attributes:
        source: the file (or ``"checkpoint"`` for a dict), for messages.
        params: the detector's constructor arguments (without the head and ``device``).
        head: the head's registry name.
        head_options: the head's options.
        state: the state dict (checked finite).
    """

    source: str
    params: dict[str, Any]
    head: str
    head_options: dict[str, Any]
    state: Mapping[str, Any]


def read_model_record(checkpoint: str | os.PathLike | Mapping[str, Any]) -> ModelRecord:
    """Read a model checkpoint (a path or the loaded dict) in any layout dlde has written.

    Today's layout is ``{'model': state, 'hyperparameters': {'model': {..., 'head': {'name',
    'options'}}}}``. Checkpoints from before heads were injectable stored DLDENet's head options
    flat among the detector's arguments (``embedding_size`` marks them) and the sigmoid head not
    at all.

    Raises:
        ValueError: not a dlde checkpoint, or non-finite weights.
    """
    source = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    try:
        params = dict(checkpoint["hyperparameters"]["model"])
        state = checkpoint["model"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source}: not a dlde checkpoint: expected keys 'model' and "
                         "'hyperparameters' -> 'model'") from error
    check_finite_state(state, source)
    params.pop("device", None)
    head = params.pop("head", None)
    if head is not None:
        name, options = head["name"], dict(head["options"])
    elif "embedding_size" in params:  # an old DLDENet checkpoint
        name, options = "dlde", {key: params.pop(key) for key in _LEGACY_DLDE_KEYS if key in params}
    else:
        name, options = "retinanet", {}
    return ModelRecord(source, params, name, options, state)
