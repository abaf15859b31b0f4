"""Training: the configuration, presets and loop (:mod:`.loop`), reading a finished run folder
back (:mod:`.runs`) and the data-parallel helpers (:mod:`.distributed`).

``python -m dlde.train`` (and ``torchrun ... -m dlde.train``) runs :func:`main`; notebooks call
:func:`train`. The names of :mod:`dlde.train.loop` are re-exported here, so
``from dlde.train import TrainConfig, PRESETS, train`` works; code that patches a module global
of the loop (tests) must patch :mod:`dlde.train.loop`, where it is used.
"""
from .loop import (
    AMP_MODES,
    BOOKKEEPING,
    CHOICES,
    DATASETS,
    NONFINITE,
    OPTIMIZERS,
    PRESETS,
    RUN_FILES,
    SCHEDULES,
    TrainConfig,
    TrainResult,
    build_datasets,
    build_model,
    environment,
    evaluate_model,
    initialize_means,
    lr_lambda,
    main,
    train,
    validation_loss,
)
from .loop import _global_batches as _global_batches  # noqa: F401 (imported from dlde.train by the tests)
from .loop import _parser as _parser  # noqa: F401
from .loop import _steps_per_epoch as _steps_per_epoch  # noqa: F401

__all__ = [
    "AMP_MODES", "BOOKKEEPING", "CHOICES", "DATASETS", "NONFINITE", "OPTIMIZERS", "PRESETS", "RUN_FILES",
    "SCHEDULES", "TrainConfig", "TrainResult", "build_datasets", "build_model", "environment", "evaluate_model",
    "initialize_means", "lr_lambda", "main", "train", "validation_loss",
]
