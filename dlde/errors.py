"""Refusals that name the setting to change, spelled for where the reader sets it.

A refused value is named differently in each place a user sets it: ``glyphs_classes`` in a
config or a Python call, ``--glyphs-classes`` at the command line, ``OVERRIDES_JSON`` or
``RUN_DIR`` in a notebook. A :class:`Refusal` keeps its message as a template whose settings are
:class:`Key` s, so whoever shows it spells them for its reader (:meth:`Refusal.spelled`); ``str``
spells them as keys (:func:`spell_key`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["ConfigError", "Key", "Refusal", "RunFolderTaken", "UNSET", "spell_key"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self):
        return "UNSET"


#: The value of a :class:`Key` that names a setting without suggesting a value for it.
UNSET: Any = _Unset()


@dataclass(frozen=True)
class Key:
    """A setting named in a message: a config key, with a value when the message suggests one
    (``Key("resume", True)`` reads ``resume=True`` in Python, ``--resume true`` at the command line)."""

    name: str
    value: Any = UNSET


#: ``spell(name, value)`` -> how a reader sets key ``name`` (to ``value``, unless it is :data:`UNSET`).
Speller = Callable[[str, Any], str]


def spell_key(name: str, value: Any = UNSET) -> str:
    """A key as a config or a Python call sets it: ``glyphs_classes``, ``allow_changed=['lr']``."""
    return name if value is UNSET else f"{name}={value!r}"


class Refusal(Exception):
    """A one-line refusal whose message names settings (:class:`Key` fields of ``template``).

    Args:
        template: the message, a :meth:`str.format` template; the dynamic text goes in fields.
        **fields: the template's fields: :class:`Key` s (spelled for the reader) or any value
            (inserted as it is, with the template's conversion, e.g. ``{got!r}``).
    """

    def __init__(self, template: str, **fields: Any):
        self.template, self.fields = template, dict(fields)
        self.speller: Speller = spell_key
        super().__init__(self.spelled(spell_key))

    @property
    def keys(self) -> tuple[str, ...]:
        """The names of the settings the message names, in the order of its fields."""
        return tuple(field.name for field in self.fields.values() if isinstance(field, Key))

    @property
    def key(self) -> str | None:
        """The first setting named (the one to change first), or None."""
        return self.keys[0] if self.keys else None

    def spelled(self, spell: Speller) -> str:
        """The message with every :class:`Key` spelled by ``spell``."""
        return self.template.format(**{name: spell(field.name, field.value) if isinstance(field, Key) else field
                                       for name, field in self.fields.items()})

    def respelled(self, spell: Speller) -> "Refusal":
        """The same refusal, whose ``str`` spells its keys with ``spell`` (e.g. a notebook's parameters)."""
        copy = type(self)(self.template, **self.fields)
        copy.speller = spell
        return copy

    def renamed(self, names: Mapping[str, str]) -> "Refusal":
        """The same refusal with the keys of ``names`` renamed (a dataset's ``classes`` becomes the
        trainer's ``glyphs_classes``); other keys are kept."""
        fields = {name: Key(names.get(field.name, field.name), field.value) if isinstance(field, Key) else field
                  for name, field in self.fields.items()}
        copy = type(self)(self.template, **fields)
        copy.speller = self.speller
        return copy

    def __str__(self) -> str:
        return self.spelled(self.speller)

    def __reduce__(self):  # pickled whole (torchrun shares a refusal of rank 0 with the other ranks)
        return _rebuild, (type(self), self.template, self.fields, self.speller)


def _rebuild(kind: type, template: str, fields: dict[str, Any], speller: Speller) -> Refusal:
    error = kind(template, **fields)
    error.speller = speller
    return error


class ConfigError(Refusal, ValueError):
    """A refused setting (a value out of range, of the wrong type, or beyond what the data holds)."""


class RunFolderTaken(Refusal, FileExistsError):
    """A run folder that holds another run, refused without a setting that continues or replaces it."""
