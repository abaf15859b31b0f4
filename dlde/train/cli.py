"""``python -m dlde.train`` (and ``torchrun ... -m dlde.train``): every :class:`TrainConfig` field and
every option of every registered head and dataset is a flag.

The head flags and the ``--model`` choices come from :data:`dlde.model.registry.HEADS`, the dataset
flags and the ``--dataset`` choices from :data:`dlde.data.registry.DATASETS`, when the parser is
built, so a head or a dataset registered at run time is trainable and configurable from the shell.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Sequence

from dlde.data.registry import DATASETS, dataset_class
from dlde.errors import Refusal
from dlde.kernels import NATIVE_FLAG
from dlde.model.registry import HEADS, all_head_options, head_class

from . import distributed
from .config import CHOICES, PRESETS, TrainConfig, flatten
from .flags import PROG, OneLineErrors, add_flag, spell_flag, type_name
from .loop import TrainResult, train
from .preset_data import DEFAULT_PRESET


def _parser(preset: str = DEFAULT_PRESET) -> argparse.ArgumentParser:
    """The CLI: every :class:`TrainConfig` field, head option and dataset option is a flag; ``--help``
    shows the defaults of ``preset``."""
    parser = OneLineErrors(
        prog=PROG, description="Train a detector (DLDENet, the sigmoid baseline, learned cosine prototypes or "
        "any registered head). Every flag overrides the preset; --help shows the defaults of the preset given "
        "with --preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset, help="starting configuration")
    parser.add_argument(NATIVE_FLAG, action="store_true", default=None,
                        help="let each numeric library take this CPU's fastest code path instead of the portable "
                             "AVX2 setting (dlde.kernels; the numbers then depend on the CPU)")
    base = PRESETS[preset]
    choices = {**CHOICES, "model": tuple(sorted(HEADS)), "dataset": tuple(sorted(DATASETS))}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("head_options", "dataset_options"):
            add_flag(parser, f.name, type_name(f.type), f"preset {preset}: {getattr(base, f.name)}",
                      choices.get(f.name))
    group = parser.add_argument_group("head options", "options of the heads (--model); a head takes those it has")
    for name, default in all_head_options().items():
        owners = [head for head in sorted(HEADS) if name in _option_types(head)]
        value = base.head_options.get(name, f"the head's default ({default})")
        add_flag(group, name, _option_types(owners[0])[name],
                  f"option of {', '.join(owners)}; preset {preset}: {value}")
    group = parser.add_argument_group("dataset options", "options of the datasets (--dataset)")
    for dataset in DATASETS:
        for option in dataclasses.fields(dataset_class(dataset)):
            value = base.dataset_options.get(option.name, f"the dataset's default ({option.default})")
            add_flag(group, option.name, type_name(option.type), f"option of {dataset}; preset {preset}: {value}")
    return parser


def _option_types(head: str) -> dict[str, str]:
    """Option name -> type name of head ``head``'s ``Options``."""
    return {f.name: type_name(f.type) for f in dataclasses.fields(head_class(head).Options)}


def arguments(config: TrainConfig, preset: str) -> list[str]:
    """The arguments of ``python -m dlde.train`` that give ``config``: ``--preset`` plus a flag for
    every field, head option and dataset option that differs from the preset.

    Raises:
        ValueError: a value no flag can express (None where the preset has one, or a head or
            dataset option of the preset that ``config`` lacks).
    """
    base, values = flatten(PRESETS[preset]), flatten(config)
    for kind in ("head_options", "dataset_options"):
        missing = sorted(set(getattr(PRESETS[preset], kind)) - set(getattr(config, kind)))
        if missing:
            raise ValueError(f"{kind.replace('_', ' ')} {missing} of preset {preset!r} cannot be unset by a flag")
    words = ["--preset", preset]
    for name, value in values.items():
        if name in base and value == base[name]:
            continue
        if value is None:
            raise ValueError(f"{name}=None cannot be passed over preset {preset!r} ({base.get(name)!r})")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag, "true" if value else "false"]
        elif isinstance(value, (tuple, list)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m dlde.train``: bad values and refused runs end with a one-line error (exit 2) that
    names the flags to change (:func:`spell_flag`)."""
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    preset_args, _ = preset_parser.parse_known_args(argv)
    parser = _parser(preset_args.preset)
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    args.pop(NATIVE_FLAG[2:].replace("-", "_"))  # acted on before the import (dlde.train.__main__)
    overrides = {key: value for key, value in args.items() if value is not None}
    try:
        config = TrainConfig.from_dict(overrides, preset=preset)
        result = train(config)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as error:
        context = distributed.context_from_environment()
        where = f" (rank {context.rank} of {context.world_size})" if context.distributed else ""
        message = error.spelled(spell_flag) if isinstance(error, Refusal) else str(error)
        parser.exit(2, f"{parser.prog}{where}: error: {message}\n")
    if distributed.context_from_environment().is_main:
        print(json.dumps({key: value for key, value in result.metrics[-1].items() if key != "per_class_AP"},
                         indent=1))
    return result
