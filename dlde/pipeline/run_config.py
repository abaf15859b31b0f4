"""One training run's configuration: from the forms it is written in to the :class:`~dlde.train.TrainConfig`
``01_train.ipynb`` trains with, by one translation.

A run is written as the parameters of ``01_train.ipynb`` (upper case: ``PRESET``, ``MODEL``,
``EPOCHS``, ..., and ``OVERRIDES_JSON``, a JSON object of further TrainConfig fields and head
options), with the defaults of its parameters cell for those not given; a sweep entry of
``figures.yaml`` may also hold lower-case TrainConfig fields and head options beside them.
:func:`split_entry` separates the two kinds of key of an entry, :func:`run_parameters` folds the
lower-case ones into ``OVERRIDES_JSON`` (what is injected into the notebook), and
:func:`train_config` turns the parameters into the TrainConfig: the notebook calls it with its
``globals()``, the pipeline and the sweeps with the parameters they inject, so none can disagree.
:func:`train_run` trains it, a refusal spelled as the notebook's parameters (:func:`spell_parameter`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dlde.errors import UNSET, Refusal
from dlde.model.registry import all_head_options
from dlde.train import TrainConfig, TrainResult, train
from dlde.train.config import field_names

from .lock import TRAIN_NOTEBOOK, declared, notebook_defaults
from .notebook import project_path

__all__ = ["TRAIN_FIELDS", "overrides_of", "run_parameters", "spell_parameter", "split_entry", "train_config",
           "train_run"]

#: Parameters of ``01_train.ipynb`` that are :class:`~dlde.train.TrainConfig` fields; ``PRESET``
#: picks the preset and ``OVERRIDES_JSON`` sets any further field.
TRAIN_FIELDS = {"MODEL": "model", "EPOCHS": "epochs", "SEED": "seed", "MEANS_UPDATE": "means_update",
                "RESUME": "resume", "OVERWRITE": "overwrite", "RUN_DIR": "run_dir", "DATA_ROOT": "data_root"}
#: What :func:`train_config` reads of the parameters.
_READ = (*TRAIN_FIELDS, "PRESET", "OVERRIDES_JSON")


def spell_parameter(name: str, value: Any = UNSET) -> str:
    """A config key as ``01_train.ipynb`` sets it (a :class:`dlde.errors.Refusal` spelled for the
    notebook): its parameter (``RUN_DIR``, ``RESUME = True``), or a key of ``OVERRIDES_JSON``."""
    parameter = {field: parameter for parameter, field in TRAIN_FIELDS.items()}.get(name)
    if parameter is not None:
        return parameter if value is UNSET else f"{parameter} = {value!r}"
    if value is UNSET:
        return f'"{name}" in OVERRIDES_JSON'
    return f"OVERRIDES_JSON = '{json.dumps({name: list(value) if isinstance(value, tuple) else value})}'"


def split_entry(values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters of ``01_train.ipynb`` (upper case) and the TrainConfig fields or head options
    (lower case) of a figures.yaml entry, in their order.

    Raises:
        ValueError: a key that is neither (``where`` names the entry).
    """
    parameters_of_notebook = declared(TRAIN_NOTEBOOK)
    fields = set(field_names()) | set(all_head_options())
    parameters, overrides = {}, {}
    for key, value in values.items():
        if key in parameters_of_notebook:
            parameters[key] = value
        elif key in fields:
            overrides[key] = value
        else:
            raise ValueError(f"{where} has {key!r}, neither a parameter of {TRAIN_NOTEBOOK} "
                             f"{sorted(parameters_of_notebook)} nor a TrainConfig field or head option")
    return parameters, overrides


def run_parameters(parameters: Mapping[str, Any], fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``01_train.ipynb`` is given for ``parameters`` and further TrainConfig ``fields``: the fields
    join the keys of ``OVERRIDES_JSON`` (they win; written sorted), which is left as given when there
    are none of either."""
    values = dict(parameters)
    extra = json.loads(values.get("OVERRIDES_JSON", "{}")) | dict(fields or {})
    if extra:
        values["OVERRIDES_JSON"] = json.dumps(extra, sort_keys=True)
    return values


def overrides_of(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The further TrainConfig fields of a training step: its ``OVERRIDES_JSON`` (or the notebook's default)."""
    return json.loads(parameters.get("OVERRIDES_JSON", notebook_defaults(TRAIN_NOTEBOOK)["OVERRIDES_JSON"]))


def train_config(parameters: Mapping[str, Any]) -> TrainConfig:
    """The :class:`~dlde.train.TrainConfig` that ``01_train.ipynb`` trains with its parameters:
    :data:`TRAIN_FIELDS` (paths through :func:`dlde.pipeline.notebook.project_path`), then
    ``OVERRIDES_JSON``, over the preset ``PRESET``. The notebook, the pipeline and the sweeps all call
    it, so they cannot disagree.

    Args:
        parameters: the notebook's parameters by name; the notebook passes its ``globals()``, so its
            parameters cell is the one list of them. Those not given take the defaults of the
            committed parameters cell; names that are neither in :data:`TRAIN_FIELDS` nor
            ``PRESET`` / ``OVERRIDES_JSON`` are not read.

    Raises:
        ValueError: ``OVERRIDES_JSON`` is not a JSON object, or a key or value is invalid (a
            :class:`dlde.errors.ConfigError` naming the parameter to change).
    """
    if any(name not in parameters for name in _READ):
        parameters = notebook_defaults(TRAIN_NOTEBOOK) | dict(parameters)
    fields = {name: parameters[parameter] for parameter, name in TRAIN_FIELDS.items()}
    fields.update(run_dir=str(project_path(fields["run_dir"])), data_root=str(project_path(fields["data_root"])))
    text = parameters["OVERRIDES_JSON"]
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"OVERRIDES_JSON is not JSON ({error.msg}): {text!r}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"OVERRIDES_JSON must be a JSON object, got {text!r}")
    try:
        return TrainConfig.from_dict(fields | overrides, preset=parameters["PRESET"])
    except Refusal as error:
        raise error.respelled(spell_parameter) from None


def train_run(config: TrainConfig) -> TrainResult:
    """:func:`dlde.train.train` for ``01_train.ipynb``: a refused value or run folder names the
    notebook's parameters (:func:`spell_parameter`: ``RESUME``, ``OVERWRITE``, ``RUN_DIR``,
    ``OVERRIDES_JSON``), not the Python arguments."""
    try:
        return train(config)
    except Refusal as error:
        raise error.respelled(spell_parameter) from None
