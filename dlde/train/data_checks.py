"""Checks of config values that need no torch: a value against its type annotation
(:func:`check_type`) and a config's dataset options against the registered datasets
(:func:`check_dataset_options`).

:func:`dlde.train.checks.check_config` runs both when a :class:`~dlde.train.config.TrainConfig` is
made; ``python -m dlde.train`` runs the dataset check before torch loads (:mod:`.preflight`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping

import numpy as np

from dlde.data.registry import DATASETS, all_dataset_options, own_dataset_options
from dlde.errors import ConfigError, Key

from .flags import type_name


def check_dataset_options(dataset: str, options: Mapping[str, Any]) -> None:
    """Refuse ``options`` (a config's flat dataset options) for training on ``dataset``: an option
    of no registered dataset, or a value the dataset refuses (its types, then its own checks). The
    options of ``dataset`` are checked, and those of any other dataset set away from its defaults.

    Raises:
        ConfigError: naming the option.
    """
    unknown = sorted(set(options) - set(all_dataset_options()))
    if unknown:
        raise ConfigError("dataset_options has {unknown}, an option of no registered dataset; dataset options: "
                          "{known}", unknown=unknown, known=sorted(all_dataset_options()))
    for name, options_class in DATASETS.items():
        own = own_dataset_options(name, options)
        defaults = {f.name: f.default for f in dataclasses.fields(options_class)}
        if name != dataset and all(value == defaults[key] for key, value in own.items()):
            continue  # a dataset not trained on, at its defaults (old records hold every dataset's options)
        types = {f.name: f.type for f in dataclasses.fields(options_class)}
        for key, value in own.items():
            check_type(key, value, types[key])
        options_class(**own)


def check_type(name: str, value: Any, annotation: Any) -> None:
    """Refuse ``value`` unless it fits ``annotation`` (a type or its string: ``'int | None'``,
    ``'tuple[float, ...]'``); floats must be finite. Annotations it cannot read are not checked."""
    text = type_name(annotation)
    if not _fits(text, value):
        raise ConfigError("{name} must be of type {type}, got {got!r}", name=Key(name), type=text, got=value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise ConfigError("{name} must be a finite number, got {got}", name=Key(name), got=value)
    if isinstance(value, tuple) and any(isinstance(v, numbers.Real) and not math.isfinite(v) for v in value):
        raise ConfigError("{name} must hold finite numbers, got {got}", name=Key(name), got=list(value))


_SCALARS: dict[str, Callable[[Any], bool]] = {
    "None": lambda v: v is None,
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)),
    "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
}


def _fits(annotation: str, value: Any) -> bool:
    for option in _split(annotation, "|"):
        if option in _SCALARS:
            if _SCALARS[option](value):
                return True
        elif option.startswith("tuple[") and option.endswith("]"):
            items = _split(option[len("tuple["):-1], ",")
            if not isinstance(value, tuple):
                continue
            if len(items) == 2 and items[1] == "...":
                if all(_fits(items[0], v) for v in value):
                    return True
            elif len(items) == len(value) and all(_fits(item, v) for item, v in zip(items, value)):
                return True
        else:  # dict[...], Any, a class: not checked here
            return True
    return False


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets, each part stripped."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == separator and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return parts
