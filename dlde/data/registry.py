"""Dataset names -> datasets: the registry of the data, as :data:`dlde.model.registry.HEADS` is the
registry of the heads.

A dataset is one frozen dataclass of its options plus one entry in :data:`DATASETS`. The class

* declares the options with their defaults. Its field names are the keys a user sets: in a
  training config (``glyphs_classes``), at the command line (``--glyphs-classes``), in figures.yaml
  and in a notebook's ``OVERRIDES_JSON``; so they are unique across datasets (prefix them with the
  dataset's name);
* checks them in ``__post_init__``, refusing a bad value with a :class:`dlde.errors.ConfigError`
  that names the option (nothing is generated yet);
* writes (or reuses) the dataset's COCO-format files with ``build(root)`` and returns them: an
  object whose ``split('train')`` and ``split('val')`` give ``(images folder, annotation file)``
  (:class:`~dlde.data.generated.GeneratedPaths`, :class:`~dlde.data.coco.CocoFiles`);
* names with ``default_root(base)`` the folder under ``base`` that ``build`` writes to when the
  config names none, after a hash of the options so that two settings never share a folder (None
  for a dataset read where it lies).

The trainer (``dataset='name'``, the options in ``TrainConfig.dataset_options``), its command line,
the run folders and the notebooks then know the dataset by name and can set each of its options.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Protocol

from .coco_files import CocoOptions
from .digits import DigitsOptions
from .glyphs import GlyphsOptions

__all__ = ["DATASETS", "DatasetFiles", "DatasetOptions", "all_dataset_options", "dataset_class",
           "dataset_option_names", "own_dataset_options"]


class DatasetFiles(Protocol):
    """The COCO-format files of a dataset's two splits."""

    def split(self, split: str) -> tuple[Path, Path]:
        """``(images folder, annotation file)`` of ``split`` ('train' or 'val')."""


class DatasetOptions(Protocol):
    """A registered dataset: a frozen dataclass of its options (see the module docstring)."""

    def build(self, root: Path | None) -> DatasetFiles:
        """The dataset's files, generated into ``root`` if needed."""

    def default_root(self, base: str | Path) -> Path | None:
        """The folder under ``base`` that :meth:`build` writes to when none is named."""


#: dataset name -> the dataclass of its options.
DATASETS: dict[str, type[DatasetOptions]] = {
    "digits": DigitsOptions,
    "glyphs": GlyphsOptions,
    "coco": CocoOptions,
}


def dataset_class(name: str) -> type[DatasetOptions]:
    """The options dataclass of the dataset registered as ``name`` (a clear error listing the names otherwise)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}") from None


def dataset_option_names(name: str) -> list[str]:
    """The option names of dataset ``name``."""
    return [option.name for option in dataclasses.fields(dataset_class(name))]


def own_dataset_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` (flat dataset options, as a training config holds them) that
    dataset ``name`` declares."""
    return {key: options[key] for key in dataset_option_names(name) if key in options}


def all_dataset_options() -> dict[str, Any]:
    """Every option of every registered dataset with its default: what the trainer's config and CLI
    accept as dataset options.

    Raises:
        ValueError: two datasets declare an option of one name (a key would not say which is meant).
    """
    options: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for name, dataset in DATASETS.items():
        for option in dataclasses.fields(dataset):
            if option.name in owners:
                raise ValueError(f"datasets {owners[option.name]!r} and {name!r} both declare option "
                                 f"{option.name!r}; prefix the option names of a dataset with its name")
            owners[option.name] = name
            options[option.name] = option.default
    return options
