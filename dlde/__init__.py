"""dlde: DLDENet, a one-stage detector that classifies by cosine to tracked class means.

The public API, what a user meets first; everything else is imported from the module that
defines it (``dlde.model.anchors.Anchors``, ``dlde.model.registry.head_factory``, ...).

Detectors
    :class:`RetinaNet` (an injected backbone and classification head), :func:`build_detector` (a
    detector by head name), :func:`load_detector` (any dlde checkpoint back as a detector) and
    :class:`DLDENetWithTrackedMeans` (the seed's entry point, with its positional arguments).
Parts to inject or inspect
    :class:`ResNetFPN` (the default backbone; any module following the protocol of
    :mod:`dlde.model.backbone` fits), :class:`ClassificationHead` (what a head provides) and the
    registered heads :class:`SigmoidClassification`, :class:`DirectionalClassification` and
    :class:`CosinePrototypeClassification`; :class:`TrackedMeans` (the tracked class means).
Data
    :class:`CocoDetection` (COCO-format files), :func:`make_digits_dataset` with
    :class:`DigitsConfig`, :func:`make_glyphs_dataset` with :class:`GlyphsConfig`.
Evaluation
    :func:`evaluate` (COCO or LVIS metrics of a model on a dataset).

Training is :mod:`dlde.train` (``from dlde.train import TrainConfig, train``; ``python -m
dlde.train``): the root does not import it, because that would load :mod:`dlde.kernels` before
``python -m dlde.kernels`` runs it as a script (Python warns about exactly that).
"""
import importlib

__all__ = [
    "RetinaNet", "build_detector", "load_detector", "DLDENetWithTrackedMeans",
    "ResNetFPN", "ClassificationHead", "SigmoidClassification", "DirectionalClassification",
    "CosinePrototypeClassification", "TrackedMeans",
    "CocoDetection", "make_digits_dataset", "DigitsConfig", "make_glyphs_dataset", "GlyphsConfig",
    "evaluate",
]


def __getattr__(name: str):
    """A public name of :data:`__all__`, imported from the module that defines it on first use (PEP
    562) and kept as an attribute. So ``import dlde``, which ``python -m dlde.train``
    runs first, loads neither torch nor the model: the command takes the portable kernels and checks
    its dataset before torch loads."""
    modules = {
        "CocoDetection": ".data.coco", "DigitsConfig": ".data.digits", "make_digits_dataset": ".data.digits",
        "GlyphsConfig": ".data.glyphs", "make_glyphs_dataset": ".data.glyphs", "evaluate": ".evaluation",
        "ResNetFPN": ".model.backbone", "build_detector": ".model.builders", "load_detector": ".model.builders",
        "DLDENetWithTrackedMeans": ".model.compat", "RetinaNet": ".model.detector",
        "DirectionalClassification": ".model.directional", "ClassificationHead": ".model.heads",
        "SigmoidClassification": ".model.heads", "TrackedMeans": ".model.means",
        "CosinePrototypeClassification": ".model.prototypes",
    }  # public name -> the module that defines it
    if name not in modules:
        raise AttributeError(f"module 'dlde' has no attribute {name!r}")
    value = getattr(importlib.import_module(modules[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
