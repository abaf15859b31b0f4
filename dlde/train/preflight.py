"""``python -m dlde.train`` checks the dataset it is asked for before torch loads.

A dataset's options are what a typo makes expensive (``--glyphs-classes 5000`` for 500 once filled
22 GB while the vocabulary was drawn), and they need nothing of torch to check. :func:`check_dataset`
reads the preset, ``--dataset`` and the dataset flags of a command line and runs the same check as
the config (:func:`dlde.train.data_checks.check_dataset_options`) on the same values: the preset's
dataset options (:data:`dlde.train.preset_data.PRESET_DATA`) under the flags. A refusal ends the
command at once with the error :func:`dlde.train.cli.main` would print; everything else (help, the
other flags, a preset or a dataset of no registry) is left to the full command line.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from dlde.data.registry import DATASETS
from dlde.errors import ConfigError

from .data_checks import check_dataset_options
from .flags import PROG, OneLineErrors, add_flag, spell_flag, type_name
from .preset_data import DEFAULT_PRESET, PRESET_DATA

#: The flags whose abbreviations the full parser would accept: a command that abbreviates one is
#: left to it (this parser takes no abbreviations, so it could read the command otherwise).
_CHOSEN = ("--preset", "--dataset")


def check_dataset(argv: Sequence[str]) -> None:
    """Refuse the dataset options of the command line ``argv`` (without the program), as
    :class:`~dlde.train.config.TrainConfig` would, without importing torch.

    Raises:
        SystemExit: exit status 2 with the one-line error naming the flag, when a dataset option is
            refused (or a dataset flag's value does not parse).
    """
    argv = list(argv)
    if any(word in ("-h", "--help") or _abbreviates(word) for word in argv):
        return
    parser = OneLineErrors(prog=PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--dataset", default=None)
    for options_class in DATASETS.values():
        for option in dataclasses.fields(options_class):
            add_flag(parser, option.name, type_name(option.type), "")
    args = vars(parser.parse_known_args(argv)[0])
    preset, dataset = args.pop("preset"), args.pop("dataset")
    if preset not in PRESET_DATA or (dataset is not None and dataset not in DATASETS):
        return
    preset_dataset, options = PRESET_DATA[preset]
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in args.items()
             if value is not None}
    try:
        check_dataset_options(dataset or preset_dataset, {**options, **given})
    except ConfigError as error:
        parser.exit(2, f"{PROG}: error: {error.spelled(spell_flag)}\n")


def _abbreviates(word: str) -> bool:
    """Whether ``word`` (``--pre`` or ``--pre=x``) is an abbreviation of a flag of :data:`_CHOSEN`."""
    flag = word.split("=", 1)[0]
    return len(flag) > 2 and any(chosen != flag and chosen.startswith(flag) for chosen in _CHOSEN)
