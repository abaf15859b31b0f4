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
from dlde.lazy import public_names

__all__ = [
    "RetinaNet", "build_detector", "load_detector", "DLDENetWithTrackedMeans",
    "ResNetFPN", "ClassificationHead", "SigmoidClassification", "DirectionalClassification",
    "CosinePrototypeClassification", "TrackedMeans",
    "CocoDetection", "make_digits_dataset", "DigitsConfig", "make_glyphs_dataset", "GlyphsConfig",
    "evaluate",
]


# Each public name is imported from the module that defines it when first used (dlde.lazy).
__getattr__, __dir__ = public_names(__name__, {
    "CocoDetection": ".data.coco", "DigitsConfig": ".data.digits", "make_digits_dataset": ".data.digits",
    "GlyphsConfig": ".data.glyphs", "make_glyphs_dataset": ".data.glyphs", "evaluate": ".evaluation",
    "ResNetFPN": ".model.backbone", "build_detector": ".model.builders", "load_detector": ".model.builders",
    "DLDENetWithTrackedMeans": ".model.compat", "RetinaNet": ".model.detector",
    "DirectionalClassification": ".model.directional", "ClassificationHead": ".model.heads",
    "SigmoidClassification": ".model.heads", "TrackedMeans": ".model.means",
    "CosinePrototypeClassification": ".model.prototypes",
})
