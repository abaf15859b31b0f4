"""dlde: DLDENet, a one-stage detector that classifies by cosine to tracked class means."""
from .data.coco import CocoDetection, read_image
from .data.digits import DigitsConfig, DigitsPaths, default_digits_root, make_digits_dataset
from .data.glyphs import GlyphsConfig, default_glyphs_root, make_glyphs_dataset
from .data.transforms import DetectionTransform, collate
from .evaluation import coco_metrics, evaluate
from .model.anchors import Anchors, Assignment, assign_batch
from .model.backbone import ResNetFPN
from .model.boxes import BoxCoder
from .model.builders import build_detector, load_detector
from .model.checkpoints import atomic_save, load_checkpoint
from .model.compat import DLDENetWithTrackedMeans, SubModule
from .model.detector import RetinaNet, TrainingOutput
from .model.directional import DirectionalClassification
from .model.heads import ClassificationHead, HeadTower, Regression, SigmoidClassification
from .model.losses import detection_loss, focal_loss
from .model.means import TrackedMeans
from .model.prototypes import CosinePrototypeClassification
from .model.registry import HEADS

__all__ = [
    "Anchors", "Assignment", "assign_batch", "ResNetFPN", "BoxCoder", "DLDENetWithTrackedMeans",
    "RetinaNet", "atomic_save", "DirectionalClassification", "Regression", "SigmoidClassification",
    "SubModule", "detection_loss", "focal_loss", "TrackedMeans", "DigitsConfig", "DigitsPaths",
    "make_digits_dataset", "CocoDetection", "DetectionTransform", "collate", "coco_metrics", "evaluate",
    "load_checkpoint", "TrainingOutput", "ClassificationHead", "CosinePrototypeClassification", "HEADS",
    "build_detector", "load_detector", "default_digits_root", "read_image", "HeadTower",
    "GlyphsConfig", "default_glyphs_root", "make_glyphs_dataset",
]
