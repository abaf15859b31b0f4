"""What a training run depends on: :class:`TrainConfig`, its allowed values and the named presets.

The head is named by ``model`` (a key of :data:`dlde.model.registry.HEADS`, read when a config is
made, so a head registered at run time is accepted) and configured by ``head_options``, one
mapping of head options. The config may hold options of several heads (a preset sets options
shared by several); the head built takes those its ``Options`` declare (:meth:`TrainConfig.own_head_options`).
The data are named and configured the same way: ``dataset`` (a key of
:data:`dlde.data.registry.DATASETS`) and ``dataset_options``; the dataset built takes those it
declares (:meth:`TrainConfig.dataset_settings`).
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from dlde.data.glyphs import GlyphsConfig
from dlde.data.registry import DatasetOptions, all_dataset_options, dataset_class, own_dataset_options
from dlde.data.sampling import GLYPHS_REPEAT_THRESHOLDS
from dlde.model.anchors import DEFAULT_THRESHOLDS
from dlde.model.detector import DEFAULT_FEATURES, RetinaNet
from dlde.model.losses import BOX_LOSSES, CLASSIFICATION_LOSSES
from dlde.model.registry import all_head_options, head_option_names

from .checks import check_config
from .distributed import DEFAULT_TIMEOUT_S
from .preset_data import PRESET_DATA

SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("adamw", "sgd")
NONFINITE = ("raise", "skip")
#: When the trainer re-imprints the tracked means from a pass over the training set
#: (:mod:`dlde.train.reimprint`): never, after the last epoch's training, or after every epoch's.
REIMPRINT_WHEN = ("off", "end", "epoch")
#: Mixed precision: ``'bf16'`` (CPU or GPU) or ``'fp16'`` (CUDA, with a gradient scaler).
AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Fields whose allowed values are listed by ``--help`` and checked by the config (the heads of
#: ``model`` and the datasets of ``dataset`` are those of the registries when the config is made).
CHOICES = {"schedule": SCHEDULES, "optimizer": OPTIMIZERS, "box_loss": BOX_LOSSES,
           "nonfinite": NONFINITE, "reimprint": REIMPRINT_WHEN, "classification_loss": CLASSIFICATION_LOSSES,
           "amp": tuple(AMP_MODES)}
_DETECTOR = inspect.signature(RetinaNet.__init__).parameters


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Unknown keys fail loudly (:meth:`from_dict`).

    Data: ``dataset`` names a dataset of :data:`dlde.data.registry.DATASETS` and ``dataset_options``
    sets its options, flat (``glyphs_classes``; unset ones take the dataset's defaults):
    ``'digits'`` generates the embedded digits (:class:`dlde.data.digits.DigitsOptions`,
    ``digits_*``), ``'glyphs'`` the embedded long-tailed large-vocabulary dataset
    (:class:`dlde.data.glyphs.GlyphsOptions`, ``glyphs_*``), both under ``data_root`` (None:
    ``data/<dataset>-<hash of its settings>``); ``'coco'`` reads ``train_images``/``train_annotations``
    and ``val_images``/``val_annotations`` (:class:`dlde.data.coco.CocoOptions`).
    Model: ``model`` names the head, ``head_options`` sets its options (unset ones take the
    defaults of the head's ``Options``).
    """

    run_dir: str = "runs/default"
    # data
    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None  # generated datasets: None derives data/<dataset>-<hash of its settings>
    min_size: int = 128
    max_size: int = 128
    flip_prob: float = 0.0
    repeat_threshold: float | None = None  # repeat-factor sampling's t (dlde.data.sampling); None: off
    # model: defaults come from the components (written once there)
    model: str = "dlde"
    head_options: dict[str, Any] = field(default_factory=dict)
    resnet: int = _DETECTOR["resnet"].default
    pretrained: bool = False  # the detector's default loads ImageNet weights; the trainer starts from scratch
    fpn_levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    pyramid_channels: int = DEFAULT_FEATURES["pyramid"]
    head_channels: int = DEFAULT_FEATURES["classification"]
    head_convs: int = _DETECTOR["head_convs"].default
    group_norm: bool = _DETECTOR["group_norm"].default
    anchor_sizes: tuple[float, ...] | None = None
    anchor_scales: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None
    init_means: bool = False
    init_batches: int | None = 25
    reimprint: str = "off"  # re-imprint the tracked means from the training set: "off", "end" or "epoch"
    reimprint_buckets: tuple[str, ...] | None = None  # only these frequency buckets ("r", "c", "f"); None: all
    reimprint_refit: int = 0  # after re-imprinting, steps that fit the head's scale and bias again (0: none; no
    # re-imprinting: nothing to refit)
    object_iou: float = DEFAULT_THRESHOLDS["object"]
    background_iou: float = DEFAULT_THRESHOLDS["background"]
    box_loss: str = _DETECTOR["box_loss"].default
    classification_loss: str = _DETECTOR["classification_loss"].default  # "focal" or "efl" (equalized focal)
    efl_scale: float = _DETECTOR["efl_scale"].default
    # optimisation
    epochs: int = 8
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    schedule: str = "cosine"
    step_milestones: tuple[float, ...] = (0.67, 0.89)
    grad_clip: float | None = 10.0
    amp: str = "off"  # mixed precision: "bf16" (CPU/GPU) or "fp16" (CUDA); cosine and means stay float32
    channels_last: bool = False  # model and images in channels-last memory format (faster convolutions on GPUs)
    sync_batchnorm: bool = False  # BatchNorm over the global batch under torchrun; a no-op in one process
    nonfinite: str = "raise"  # a NaN/Inf input or loss: "raise" (stop, state intact) or "skip" the step (counted)
    # bookkeeping
    seed: int = 0
    threads: int | None = None  # intra-op CPU threads; None: torch's default on this machine (recorded)
    device: str | None = None
    num_workers: int = 0
    dist_timeout_s: float = DEFAULT_TIMEOUT_S  # torchrun: how long a collective waits for a lost rank
    eval_every: int = 1
    eval_batch_size: int = 32
    resume: bool = False
    overwrite: bool = False  # start afresh in a run folder that holds another run (its run files are replaced)
    allow_changed: tuple[str, ...] = ()  # with resume: config fields or head options allowed to differ
    progress: bool = True
    max_train_batches: int | None = None

    def __post_init__(self):
        """Normalize (``amp`` recorded as a bool, lists as tuples) and check every value
        (:func:`dlde.train.checks.check_config`): a bad value fails here, naming its key, before any
        data is generated or any run folder claimed."""
        if isinstance(self.amp, bool):  # records written when amp was a bool (True meant CUDA float16)
            object.__setattr__(self, "amp", "fp16" if self.amp else "off")
        object.__setattr__(self, "head_options", dict(self.head_options))  # never shared with the caller
        object.__setattr__(self, "dataset_options", {key: tuple(value) if isinstance(value, list) else value
                                                     for key, value in self.dataset_options.items()})
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), list) and str(f.type).startswith("tuple"):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        check_config(self, CHOICES)

    def own_head_options(self) -> dict[str, Any]:
        """The entries of :attr:`head_options` that the head ``model`` declares: what it is built with."""
        return {name: self.head_options[name] for name in head_option_names(self.model) if name in self.head_options}

    def own_dataset_options(self, dataset: str | None = None) -> dict[str, Any]:
        """The entries of :attr:`dataset_options` that ``dataset`` (default: :attr:`dataset`) declares."""
        return own_dataset_options(self.dataset if dataset is None else dataset, self.dataset_options)

    def dataset_settings(self, dataset: str | None = None) -> DatasetOptions:
        """The options of ``dataset`` (default: :attr:`dataset`), unset ones at their defaults: what
        it is built with (``config.dataset_settings().build(root)``).

        Raises:
            ConfigError: an option is refused by the dataset (naming it).
        """
        name = self.dataset if dataset is None else dataset
        return dataset_class(name)(**self.own_dataset_options(name))

    def updated(self, values: Mapping[str, Any]) -> "TrainConfig":
        """A copy with ``values`` set.

        Keys are TrainConfig fields, options of any registered head or options of any registered
        dataset: flat (``means_lr``, ``glyphs_classes``, as in old ``config.json`` records,
        ``figures.yaml``, the notebooks and the flags) or in a nested ``head_options`` or
        ``dataset_options`` mapping; both are merged into :attr:`head_options` and
        :attr:`dataset_options`, the flat ones last. Lists become tuples.

        Raises:
            ValueError: a key is neither a field nor a head or dataset option (the lists are
                named), or a value is invalid.
        """
        names, heads, datasets = _FIELDS, all_head_options(), all_dataset_options()
        unknown = sorted(key for key in values if key not in names and key not in heads and key not in datasets)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}; "
                             f"head options: {sorted(heads)}; dataset options: {sorted(datasets)}")
        changes = {key: tuple(value) if isinstance(value, list) else value
                   for key, value in values.items() if key in names}
        head_options = {**self.head_options, **dict(changes.pop("head_options", None) or {}),
                        **{key: value for key, value in values.items() if key in heads and key not in names}}
        dataset_options = {**self.dataset_options, **dict(changes.pop("dataset_options", None) or {}),
                           **{key: value for key, value in values.items() if key in datasets and key not in names}}
        return dataclasses.replace(self, **changes, head_options=head_options, dataset_options=dataset_options)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, preset: str | None = None) -> "TrainConfig":
        """A config from a preset (default: the dataclass defaults) updated with ``values``
        (:meth:`updated`: flat head and dataset option names are routed into :attr:`head_options`
        and :attr:`dataset_options`)."""
        base = PRESETS[preset] if preset is not None else cls()
        return base.updated(values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists; :attr:`head_options` and :attr:`dataset_options` nested)."""
        values = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in dataclasses.asdict(self).items()}
        values["dataset_options"] = {key: list(value) if isinstance(value, tuple) else value
                                     for key, value in self.dataset_options.items()}
        return values


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def field_names() -> list[str]:
    """The keys of :class:`TrainConfig` besides the head options: its fields and, flat, the options
    of every registered dataset (``glyphs_classes``), as :meth:`TrainConfig.updated`, figures.yaml
    and the flags take them."""
    return [f.name for f in dataclasses.fields(TrainConfig)] + list(all_dataset_options())


def flatten(config: Any) -> dict[str, Any]:
    """A TrainConfig (or its dict) as one flat dict: the entries of ``head_options`` and
    ``dataset_options`` beside the fields, as the flags of ``python -m dlde.train`` and the names of
    sweep run folders show them."""
    values = dict(config) if isinstance(config, Mapping) else config.to_dict()
    return {**{key: value for key, value in values.items() if key not in ("head_options", "dataset_options")},
            **(values.get("dataset_options") or {}), **(values.get("head_options") or {})}


def _data(preset: str) -> dict[str, Any]:
    """The ``dataset`` and ``dataset_options`` of ``preset`` (:data:`dlde.train.preset_data.PRESET_DATA`)."""
    dataset, options = PRESET_DATA[preset]
    return {"dataset": dataset, "dataset_options": dict(options)}


#: DLDENet's running center of the matched embeddings (issue 25), the ``digits`` preset's since it was
#: measured there, not worse: on the headline's 5 seeds (16 epochs) AP 0.875 [0.870, 0.881] against
#: 0.872 [0.868, 0.876] without it (paired difference +0.003 [-0.002, 0.009]) and a lower validation
#: loss on every seed (0.126 against 0.133). The head's own default stays 0 (the original module's
#: tracking, docs/differences.md).
_CENTERED = {"center_momentum": 0.9}

#: Named presets. ``digits`` is the default of the paper figures: tuned to reach a high AP on
#: the embedded digits within minutes on a 2-core CPU (see benchmarks/digits_quality.py).
PRESETS: dict[str, TrainConfig] = {
    "digits": TrainConfig(
        run_dir="runs/digits", **_data("digits"), min_size=64, max_size=64,
        fpn_levels=(3, 4), pyramid_channels=64, head_channels=64, head_convs=2, group_norm=True,
        anchor_sizes=(12.0, 24.0), anchor_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)), anchor_ratios=(1.0,),
        head_options={"embedding_size": 32, "means_init": "orthogonal", "means_lr": 0.003, **_CENTERED}, epochs=16,
        batch_size=16, lr=2e-3, weight_decay=1e-4, box_loss="giou", eval_every=4),
    "tiny": TrainConfig(
        run_dir="runs/tiny", **_data("tiny"), min_size=64, max_size=64, fpn_levels=(3, 4),
        pyramid_channels=16, head_channels=16, head_convs=1, group_norm=True,
        anchor_sizes=(16.0, 32.0),
        anchor_scales=(1.0,), anchor_ratios=(1.0,), head_options={"embedding_size": 8}, epochs=2, batch_size=8,
        lr=2e-3, progress=False),
}


def _glyphs_preset(classes: int, epochs: int, embedding_size: int, init_weight: float,
                   **long_tail: Any) -> TrainConfig:
    """The ``digits`` preset's network and optimizer on the glyphs dataset of ``classes`` classes
    (default glyphs settings), one evaluation at the end, and DLDENet's embedding size and starting
    scale ``w`` for that vocabulary (measured by the retired ``vocabulary_levers`` sweep at commit
    2146dee, docs/changes.md): ``w`` barely moves in these short schedules (7.0 -> 7.0-7.4 at 1,000
    classes), so its start is the head's temperature. ``long_tail``: the long-tail levers a preset
    turns on (head options such as ``center_momentum`` go to ``head_options``, the others are fields:
    ``repeat_threshold``, ``classification_loss``, ``reimprint``)."""
    head_levers = {name: value for name, value in long_tail.items() if name in all_head_options()}
    fields = {name: value for name, value in long_tail.items() if name not in head_levers}
    return dataclasses.replace(
        PRESETS["digits"], run_dir=f"runs/glyphs-{classes}", **_data(f"glyphs-{classes}"),
        min_size=GlyphsConfig.canvas_size, max_size=GlyphsConfig.canvas_size,
        head_options={**PRESETS["digits"].head_options, "embedding_size": embedding_size, "init_weight": init_weight,
                      **head_levers},
        epochs=epochs, eval_every=epochs, **fields)


#: Sized for one thread of this 2-core CPU (measured while other jobs held a load of ~2.5):
#: glyphs-1000 has 4,436 training canvases, 0.57 s per batch of 16, 157 s per epoch, ~30 s of
#: evaluation: about 8.5 min for its 3 epochs; glyphs-100 has 431 canvases, ~15 s per epoch.
#: Embedding size and ``w``: at 100 classes 128-d and the original ``w`` 7 put DLDENet ahead of the
#: sigmoid head; at 1,000 classes 32-d and 128-d with ``w`` 7 do not detect, 256-d and ``w`` 14
#: detect best of the measured levers (issue 16; README "Large vocabularies").
#: glyphs-1000 also takes the best combination of issue 25's long-tail levers (3 seeds,
#: docs/large-vocabularies.md): centered tracking (momentum 0.9), repeat-factor sampling at the
#: threshold chosen for the glyphs (:data:`dlde.data.sampling.GLYPHS_REPEAT_THRESHOLDS`), and
#: re-imprinting the tracked means after the last epoch, then refitting the scale and bias for 150
#: steps (:func:`dlde.train.reimprint.refit_scores`: the re-imprinted means saturate the scores
#: otherwise; 3 seeds: the training loss 72-107 back to 0.64-0.69, AP 0.374 kept, APr 0.211 ->
#: 0.219). The sampler serves every head; centering, re-imprinting and the refit act on heads with
#: tracked means only. The loss is the plain focal loss: the tables of 8280800 were made when the
#: presets took the equalized focal loss too, which lowered both heads at 1,000 classes (3 seeds
#: each, without it: DLDENet AP 0.374 -> 0.401, APr 0.219 -> 0.248; the sigmoid head 0.371 -> 0.384).
#: glyphs-300 (1,333 canvases) is the check between the two: glyphs-1000's network, ``w`` and
#: levers, not tuned at 300 classes, and 6 epochs (500 steps, between glyphs-100's 431 and
#: glyphs-1000's 832). glyphs-100 takes re-imprinting and the refit only (not even the digits'
#: centering: re-imprinted after centered training its APr was 0.097 against 0.116): at 100 classes
#: centering, RFS and EFL leave DLDENet where it was and make its re-imprinting worse, while
#: re-imprinting with the refit lifts it on both draws of the classes (3 seeds each: AP 0.300 ->
#: 0.323, APr 0.050 -> 0.110; second draw 0.334 -> 0.352, 0.058 -> 0.108; the refit takes the
#: training loss of the re-imprinted model 0.18-0.31 -> 0.02-0.03 at an unchanged AP).
_REIMPRINT = {"reimprint": "end", "reimprint_refit": 150}
_LONG_TAIL = {**_CENTERED, **_REIMPRINT}
PRESETS["glyphs-100"] = _glyphs_preset(100, epochs=16, embedding_size=128, init_weight=7.0, center_momentum=0.0,
                                       **_REIMPRINT)
PRESETS["glyphs-300"] = _glyphs_preset(300, epochs=6, embedding_size=256, init_weight=14.0, **_LONG_TAIL,
                                       repeat_threshold=GLYPHS_REPEAT_THRESHOLDS[300])
PRESETS["glyphs-1000"] = _glyphs_preset(1000, epochs=3, embedding_size=256, init_weight=14.0, **_LONG_TAIL,
                                        repeat_threshold=GLYPHS_REPEAT_THRESHOLDS[1000])
