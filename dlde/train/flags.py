"""The flags of ``python -m dlde.train``, free of torch: how a config key becomes a flag and back.

:mod:`.cli` builds the whole parser from these (every field, head option and dataset option);
:mod:`.preflight` builds the dataset flags alone, before torch loads. One spelling serves both, so
a value is parsed, and a refusal names its flag, the same way in each.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from dlde.errors import UNSET

PROG = "python -m dlde.train"


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block, no traceback)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag with its choices)\n")


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) as a bool."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def type_name(annotation: Any) -> str:
    """``'float'`` for ``float`` and for the string ``'float'`` (modules with postponed annotations)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def add_flag(parser, name: str, type_text: str, shown: str, choices: Sequence[Any] | None = None) -> None:
    """``--name`` (underscores as dashes) parsing a value of the type named ``type_text``."""
    flag = "--" + name.replace("_", "-")
    if type_text == "bool":
        parser.add_argument(flag, dest=name, type=parse_bool, default=None, metavar="BOOL", help=shown)
    elif "tuple" in type_text:
        kind = float if "float" in type_text else str if "str" in type_text else int
        parser.add_argument(flag, dest=name, type=kind, nargs="+", default=None, help=shown)
    else:
        kind = {"int": int, "float": float}.get(type_text.split(" |")[0], str)
        parser.add_argument(flag, dest=name, type=kind, default=None, choices=choices, help=shown)


def spell_flag(name: str, value: Any = UNSET) -> str:
    """A config key as the flag that sets it (:class:`dlde.errors.Refusal` spelled for the command
    line): ``--glyphs-classes``, ``--allow-changed lr``, ``--resume true``."""
    flag = "--" + name.replace("_", "-")
    if value is UNSET:
        return flag
    if isinstance(value, bool):
        return f"{flag} {'true' if value else 'false'}"
    if isinstance(value, (tuple, list)):
        return " ".join([flag, *map(str, value)])
    return f"{flag} {value}"
