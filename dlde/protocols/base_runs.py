"""The base runs of the few-shot protocol: trained once per head and base seed on the base digits, then reused.

The few-shot, unknown-object and retrieval protocols (:mod:`dlde.protocols.fewshot`,
:mod:`dlde.protocols.openset`, :mod:`dlde.protocols.retrieval`) measure base
models trained on the digits ``BASE_CLASSES`` only, several training seeds per head (the *base
seeds*, :data:`dlde.protocols.fewshot.BASE_SEEDS`), so their intervals cover another training
seed too. :func:`base_config` derives such a run's configuration from another run (or a preset),
:func:`ensure_base_run` trains it unless its folder (:func:`base_run_dir`) already holds it, and
:func:`prepare` returns the base models of several heads and base seeds with the ten-digit
datasets (:class:`BaseModels`), as notebooks 05 and 06 and ``python -m dlde.protocols.fewshot`` use them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlde.data.coco import CocoDetection
from dlde.train import TrainConfig, default_data_root, train
from dlde.train.reproducibility import rng_state, set_rng_state
from dlde.train.runs import RunFolder

from .fewshot import BASE_CLASSES, BASE_SEEDS, few_shot_datasets

__all__ = ["BaseModels", "base_config", "base_run_dir", "ensure_base_run", "prepare"]


def base_config(model: str, run_dir: str | Path, *, like=None, preset: str = "digits",
                base_classes: Sequence[int] = BASE_CLASSES, data_dir: str | Path | None = None,
                **overrides: Any) -> TrainConfig:
    """The :class:`dlde.train.TrainConfig` of a base run: a configuration restricted to ``base_classes``.

    Args:
        model: a head name of :data:`dlde.model.registry.HEADS`.
        run_dir: the run folder.
        like: a TrainConfig (or its dict, e.g. a run's ``config.json``) to copy everything else
            from, so the base runs get the budget of that run; None: the preset ``preset``.
        preset: a :data:`dlde.train.PRESETS` name (when ``like`` is None).
        base_classes: digits of the base training (the others never appear).
        data_dir: folder under which the base digits are generated, in a folder named after their
            settings (:func:`dlde.train.default_data_root`); None: next to ``like``'s data (its
            parent folder), else ``data``. Ignored when ``data_root`` is among ``overrides``.
        **overrides: further TrainConfig fields (``epochs``, ``seed``, ...).
    """
    values = {"model": model, "run_dir": str(run_dir), "digits_classes": tuple(int(c) for c in base_classes),
              "resume": False, "overwrite": False, **overrides}
    if like is not None:
        like = like.to_dict() if isinstance(like, TrainConfig) else dict(like)
        config = TrainConfig.from_dict({**like, **values})
    else:
        config = TrainConfig.from_dict(values, preset=preset)
    if "data_root" not in overrides:
        if data_dir is None:
            data_dir = Path(like["data_root"]).parent if like is not None and like.get("data_root") else Path("data")
        config = dataclasses.replace(config, data_root=str(default_data_root(config, data_dir)))
    return config


def ensure_base_run(config: TrainConfig) -> Path:
    """Train the base run of ``config`` unless its folder already holds it finished; return the folder.

    What the folder holds is asked of :class:`dlde.train.runs.RunFolder`: a finished run of the
    same configuration (fields outside :data:`dlde.train.runs.NUMBER_NEUTRAL_FIELDS` equal,
    ``config.epochs`` epochs written) is reused as it is; an unfinished one with a checkpoint is
    resumed; one stopped before its first epoch is started afresh; an empty folder is trained.
    Training leaves the process as it found it (:func:`_process_state_kept`), so what runs next
    gives the same numbers whether the run was trained here or read from the folder.

    Raises:
        ValueError: the folder holds a run of another configuration (the differing fields are named).
    """
    folder = RunFolder(config.run_dir)
    state = folder.state(config)
    if state == "changed":
        shown = ", ".join(f"{key}: {saved!r} -> {wanted!r}" for key, (saved, wanted)
                          in sorted(folder.config_changes(config).items()))
        raise ValueError(f"{folder.path} holds another run than the base run asked for ({shown}): "
                         "delete it or choose another base runs folder")
    if state in ("partial", "new"):  # a new run without a finished epoch replaces only its own files
        wanted = dataclasses.replace(config, resume=True) if state == "partial" else \
            dataclasses.replace(config, overwrite=folder.config_file.exists())
        with _process_state_kept():
            train(wanted)
    return folder.path


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Restore afterwards what training sets for the whole process: torch's intra-op thread count
    (``TrainConfig.threads``; it decides the last bits of CPU reductions) and the global random
    generators (seeded by the trainer)."""
    threads, generators = torch.get_num_threads(), rng_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_rng_state(generators)


def base_run_dir(base_runs_dir: str | Path, head: str, seed: int) -> Path:
    """The folder of the base run of ``head`` and base seed ``seed``.

    ``<base_runs_dir>/<head>`` for seed 0 and ``<base_runs_dir>/<head>,seed=<seed>`` for the others
    (the sweeps' naming): seed 0 keeps the folder of the protocol with one base model per head, so
    base runs cached before there were base seeds (trained with the seed of the copied run, 0 for the
    figures' ``dlde`` run) stay in use.
    """
    return Path(base_runs_dir) / (head if int(seed) == 0 else f"{head},seed={int(seed)}")


@dataclass
class BaseModels:
    """The base models of several heads and base seeds, with the ten-digit datasets.

    Attributes:
        models: base seed -> head -> base detector in eval mode (seeds in the order asked).
        concentrations: base seed -> head -> ``(C,)`` κ̂ of the tracked means at the end of training
            (the last row of the run's ``kappa_history.npy``; heads with tracked means only).
        base_names: the base class names in label order.
        train_set: the ten-digit training set (unflipped).
        val_set: the ten-digit validation set.
    """

    models: dict[int, dict[str, nn.Module]]
    concentrations: dict[int, dict[str, np.ndarray]]
    base_names: list[str]
    train_set: CocoDetection
    val_set: CocoDetection

    @property
    def seeds(self) -> list[int]:
        """The base seeds, in the order asked."""
        return list(self.models)


def prepare(like, base_runs_dir: str | Path, heads: Sequence[str] = ("dlde", "retinanet", "prototypes"), *,
            seeds: Sequence[int] = BASE_SEEDS, epochs: int | None = None, base_classes: Sequence[int] = BASE_CLASSES,
            preset: str = "digits", data_dir: str | Path | None = None, **overrides: Any) -> BaseModels:
    """Base models of every head and base seed (trained on ``base_classes`` if not cached) and the ten-digit datasets.

    Args:
        like: the TrainConfig (or ``config.json`` dict) the base runs copy, or None for the
            preset ``preset`` (see :func:`base_config`).
        base_runs_dir: folder holding one base run per head and seed (:func:`base_run_dir`).
        heads: head names.
        seeds: the base seeds: the training ``seed`` of each head's base runs (distinct).
        epochs: epochs of the base runs (None: those of ``like`` or the preset).
        base_classes: digits of the base training.
        preset: the preset when ``like`` is None.
        data_dir: see :func:`base_config`.
        **overrides: further TrainConfig fields of the base runs (not ``seed``).
    """
    seeds = [int(s) for s in seeds]
    if not heads or not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"prepare needs at least one head and distinct base seeds, got {list(heads)} and {seeds}")
    if "seed" in overrides:
        raise ValueError("the base runs' seeds are `seeds`, not a `seed` override")
    if epochs:
        overrides["epochs"] = int(epochs)
    models: dict[int, dict[str, nn.Module]] = {seed: {} for seed in seeds}
    concentrations: dict[int, dict[str, np.ndarray]] = {seed: {} for seed in seeds}
    names, config = None, None
    for seed in seeds:  # a few base seeds
        for head in heads:  # a few heads
            config = base_config(head, base_run_dir(base_runs_dir, head, seed), like=like, preset=preset,
                                 base_classes=base_classes, data_dir=data_dir, seed=seed, **overrides)
            run = RunFolder(ensure_base_run(config)).load()
            models[seed][head] = run.load_model()
            if run.kappa_history is not None and len(run.kappa_history):
                concentrations[seed][head] = np.asarray(run.kappa_history[-1], dtype=np.float64)
            if names is not None and run.class_names != names:
                raise ValueError(f"base runs disagree on the classes: {names} vs {run.class_names} ({run.run_dir})")
            names = run.class_names
    train_set, val_set = few_shot_datasets(config)
    return BaseModels(models, concentrations, list(names), train_set, val_set)
