"""Training: the configuration and presets (:mod:`.config`), what a config builds (:mod:`.builders`),
the loop (:mod:`.loop`) with its batches (:mod:`.batches`), validation (:mod:`.validation`) and
reproducibility helpers (:mod:`.reproducibility`), the command line (:mod:`.cli`), run folders
(:mod:`.runs`) and the data-parallel helpers (:mod:`.distributed`).

``python -m dlde.train`` (and ``torchrun ... -m dlde.train``) runs :func:`main`; notebooks call
:func:`train`. Code that patches a module global (tests) must patch the module that uses it,
e.g. :mod:`dlde.train.loop` for ``validation_loss`` and ``make_loader``. This package re-exports
public names only; tests import a private one from the module that defines it.
"""
from dlde.data.registry import DATASETS

from .builders import build_datasets, build_model, default_data_root, lr_lambda
from .cli import main
from .config import AMP_MODES, CHOICES, NONFINITE, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig
from .loop import TrainResult, initialize_means, train
from .reproducibility import environment
from .runs import NUMBER_NEUTRAL_FIELDS, Run, RunFolder, load_run
from .validation import evaluate_model, validation_loss

__all__ = [
    "AMP_MODES", "CHOICES", "DATASETS", "NONFINITE", "NUMBER_NEUTRAL_FIELDS", "OPTIMIZERS", "PRESETS", "Run",
    "RunFolder", "SCHEDULES", "TrainConfig", "TrainResult", "build_datasets", "build_model", "default_data_root",
    "environment", "evaluate_model", "initialize_means", "load_run", "lr_lambda", "main", "train", "validation_loss",
]
