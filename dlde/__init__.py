"""dlde: DLDENet, a one-stage detector that classifies by cosine to tracked class means."""
from .anchors import Anchors, Assignment, assign_batch
from .backbone import ResNetFPN
from .boxes import BoxCoder
from .detector import DLDENetWithTrackedMeans, RetinaNet, atomic_save
from .directional import DirectionalClassification
from .heads import Regression, SigmoidClassification, SubModule
from .losses import detection_loss, focal_loss
from .means import TrackedMeans
from .digits import DigitsConfig, DigitsPaths, make_digits_dataset
from .coco import CocoDetection
from .transforms import DetectionTransform, collate
from .evaluation import coco_metrics, evaluate

__all__ = [
    "Anchors", "Assignment", "assign_batch", "ResNetFPN", "BoxCoder", "DLDENetWithTrackedMeans",
    "RetinaNet", "atomic_save", "DirectionalClassification", "Regression", "SigmoidClassification",
    "SubModule", "detection_loss", "focal_loss", "TrackedMeans", "DigitsConfig", "DigitsPaths",
    "make_digits_dataset", "CocoDetection", "DetectionTransform", "collate", "coco_metrics", "evaluate",
]
