"""What a :class:`~dlde.train.config.TrainConfig` may hold, checked when it is made: before any data
is generated, any run folder claimed or any memory allocated.

Every refusal is a :class:`dlde.errors.ConfigError` of one line that names the key to change (a
config field, a head option or a dataset option), so the command line can name its flag and a
notebook its parameter. A field is checked against its type annotation (a field added later is
too), then against the rules below; the options of the head built against its ``Options`` types and
:data:`HEAD_OPTION_CHOICES` and :data:`HEAD_OPTION_INTERVALS`; the options of the dataset trained on,
and of any other dataset set away from its defaults, against the types of its options dataclass
(:data:`dlde.data.registry.DATASETS`) and then its own checks (:mod:`.data_checks`; the glyphs vocabulary bounds the
classes; nothing is generated).
The heads' constructors keep their own checks: the trainer builds the model before it claims a run folder.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import torch

from dlde.data.long_tail import BUCKETS
from dlde.data.registry import DATASETS, all_dataset_options
from dlde.errors import ConfigError, Key
from dlde.model.backbone import RESNET_CHANNELS, SUPPORTED_LEVELS
from dlde.model.directional import WEIGHT_PARAMS
from dlde.model.means import MEANS_INITS, MEANS_LR_SCHEDULES, MEANS_UPDATES
from dlde.model.priors import CLASSIFIER_INITS
from dlde.model.registry import HEADS, all_head_options

from .data_checks import check_dataset_options, check_type

#: Counts and sizes: at least one (None, where the type allows it, means "all" or "the default").
AT_LEAST_ONE = ("min_size", "max_size", "pyramid_channels", "head_channels", "init_batches",
                "epochs", "batch_size", "threads", "eval_every", "eval_batch_size", "max_train_batches")
#: Counts that may be zero: hidden convolutions of a head tower (0: the output convolution alone),
#: data-loading worker processes (0: load in the training process), refitting steps after
#: re-imprinting (0: none).
AT_LEAST_ZERO = ("head_convs", "num_workers", "reimprint_refit")
#: Numbers above zero (None, where the type allows it, means "off").
POSITIVE = ("lr", "grad_clip", "dist_timeout_s", "repeat_threshold", "efl_scale")
#: Numbers in an interval: ``(low, high, low included, high included)``.
INTERVALS = {"weight_decay": (0.0, math.inf, True, False), "warmup_fraction": (0.0, 1.0, True, False),
             "flip_prob": (0.0, 1.0, True, True), "object_iou": (0.0, 1.0, True, True),
             "background_iou": (0.0, 1.0, True, True)}
#: Ranges given as two fields: the first may not exceed the second.
ORDERED = (("min_size", "max_size"), ("background_iou", "object_iou"))
#: Head options beyond their ``Options`` types (and floats being finite): their least value, their
#: choices, or their interval as in :data:`INTERVALS`. The heads' constructors check the same when
#: the trainer builds the model, before it claims the run folder.
HEAD_OPTION_LEAST = {"embedding_size": 1}
HEAD_OPTION_CHOICES = {"means_update": MEANS_UPDATES, "means_init": MEANS_INITS,
                       "means_lr_schedule": MEANS_LR_SCHEDULES, "classifier_init": CLASSIFIER_INITS,
                       "weight_param": WEIGHT_PARAMS}
HEAD_OPTION_INTERVALS = {"means_lr": (0.0, 1.0, False, True), "cosine_scale": (0.0, math.inf, False, False),
                         "prior": (0.0, 1.0, False, False), "center_momentum": (0.0, 1.0, True, False),
                         "means_warmup": (0.0, math.inf, True, False)}

def check_config(config: Any, choices: Mapping[str, Sequence[Any]]) -> None:
    """Refuse ``config`` (a TrainConfig) at its first invalid value; ``choices``: field -> allowed values.

    Raises:
        ConfigError: naming the key (and the keys it depends on) with what is allowed.
    """
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for f in dataclasses.fields(config):
        check_type(f.name, values[f.name], f.type)
    for name, registry in (("model", HEADS), ("dataset", DATASETS)):
        if values[name] not in registry:
            raise ConfigError("{name} must be one of {allowed}; got {got!r}", name=Key(name),
                              allowed=", ".join(sorted(registry)), got=values[name])
    for name, allowed in choices.items():
        if values[name] not in allowed:
            raise ConfigError("{name} must be one of {allowed}; got {got!r}", name=Key(name),
                              allowed=", ".join(map(str, allowed)), got=values[name])
    _check_numbers(values)
    buckets = values["reimprint_buckets"]
    if buckets is not None and (not buckets or not set(buckets) <= set(BUCKETS)):
        raise ConfigError("{name} must name frequency buckets among {allowed} (rare, common, frequent); got {got}",
                          name=Key("reimprint_buckets"), allowed=", ".join(BUCKETS), got=list(buckets))
    _check_model(config)
    _check_head_options(config)
    check_dataset_options(config.dataset, config.dataset_options)
    _check_run(config)


def _check_numbers(values: Mapping[str, Any]) -> None:
    for name in AT_LEAST_ONE + AT_LEAST_ZERO:
        least = 1 if name in AT_LEAST_ONE else 0
        if values[name] is not None and values[name] < least:
            raise ConfigError("{name} must be >= {least}, got {got}", name=Key(name), least=least, got=values[name])
    for name in POSITIVE:
        if values[name] is not None and not values[name] > 0:
            raise ConfigError("{name} must be > 0, got {got}", name=Key(name), got=values[name])
    for name, interval in INTERVALS.items():
        _check_interval(name, values[name], interval)
    for low, high in ORDERED:
        if values[low] > values[high]:
            raise ConfigError("{low} {low_value} exceeds {high} {high_value}; need {low} <= {high}", low=Key(low),
                              high=Key(high), low_value=values[low], high_value=values[high])
    if not all(0.0 <= m <= 1.0 for m in values["step_milestones"]):
        raise ConfigError("{milestones} are fractions of the training, each in [0, 1]; got {got}",
                          milestones=Key("step_milestones"), got=list(values["step_milestones"]))


def _check_interval(name: str, value: Any, interval: tuple[float, float, bool, bool]) -> None:
    if value is None:
        return
    low, high, low_closed, high_closed = interval
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    if not (above and below):
        shown = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        raise ConfigError("{name} must be in {shown}, got {got}", name=Key(name), shown=shown, got=value)


def _check_model(config: Any) -> None:
    if config.resnet not in RESNET_CHANNELS:
        raise ConfigError("{resnet} must be one of {allowed}, got {got}", resnet=Key("resnet"),
                          allowed=", ".join(map(str, RESNET_CHANNELS)), got=config.resnet)
    levels = list(config.fpn_levels)
    if not levels or levels != sorted(set(levels)) or not set(levels) <= set(SUPPORTED_LEVELS):
        raise ConfigError("{levels} must be distinct pyramid levels of {supported}, ascending; got {got}",
                          levels=Key("fpn_levels"), supported=list(SUPPORTED_LEVELS), got=levels)
    for name in ("anchor_sizes", "anchor_scales", "anchor_ratios"):
        value = getattr(config, name)
        if value is not None and (not value or min(value) <= 0):
            raise ConfigError("{name} must be positive numbers (at least one), got {got}", name=Key(name),
                              got=list(value))
    # One anchor size per level is checked when the model is built (still before the claim): a config
    # may be updated one of the two at a time.

def _check_head_options(config: Any) -> None:
    unknown = sorted(set(config.head_options) - set(all_head_options()))
    if unknown:
        raise ConfigError("head_options has {unknown}, an option of no registered head; head options: {known}",
                          unknown=unknown, known=sorted(all_head_options()))
    types = {f.name: f.type for f in dataclasses.fields(HEADS[config.model].Options)}
    for name, value in config.own_head_options().items():
        check_type(name, value, types[name])
        if name in HEAD_OPTION_LEAST and value < HEAD_OPTION_LEAST[name]:
            raise ConfigError("{name} must be >= {least}, got {got}", name=Key(name), least=HEAD_OPTION_LEAST[name],
                              got=value)
        if name in HEAD_OPTION_CHOICES and value not in HEAD_OPTION_CHOICES[name]:
            raise ConfigError("{name} must be one of {allowed}; got {got!r}", name=Key(name),
                              allowed=", ".join(HEAD_OPTION_CHOICES[name]), got=value)
        if name in HEAD_OPTION_INTERVALS:
            _check_interval(name, value, HEAD_OPTION_INTERVALS[name])

def _check_run(config: Any) -> None:
    if not config.run_dir:
        raise ConfigError("{run_dir} must name a folder, got {got!r}", run_dir=Key("run_dir"), got=config.run_dir)
    if config.device is not None:
        try:
            torch.device(config.device)
        except (RuntimeError, ValueError):
            raise ConfigError("{device} must name a torch device ('cpu', 'cuda', 'cuda:1'), got {got!r}",
                              device=Key("device"), got=config.device) from None
    if config.resume and config.overwrite:
        raise ConfigError("{resume} and {overwrite} exclude each other: continue the run, or replace it",
                          resume=Key("resume"), overwrite=Key("overwrite"))
    names = {f.name for f in dataclasses.fields(config)} | set(all_head_options()) | set(all_dataset_options())
    unknown = sorted(set(config.allow_changed) - names)
    if unknown:
        raise ConfigError("{allow_changed} names unknown fields {unknown}", allow_changed=Key("allow_changed"),
                          unknown=unknown)

