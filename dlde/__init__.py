"""dlde: DLDENet, a one-stage detector that classifies by cosine to tracked class means."""
from .anchors import Anchors, Assignment, assign_batch
from .backbone import ResNetFPN
from .boxes import BoxCoder
from .checkpoints import atomic_save, load_checkpoint
from .coco import CocoDetection, read_image
from .detector import DLDENetWithTrackedMeans, RetinaNet, TrainingOutput
from .digits import DigitsConfig, DigitsPaths, default_digits_root, make_digits_dataset
from .directional import DirectionalClassification
from .evaluation import coco_metrics, evaluate
from .heads import ClassificationHead, Regression, SigmoidClassification, SubModule
from .losses import detection_loss, focal_loss
from .means import TrackedMeans
from .models import HEADS, build_detector, load_detector
from .prototypes import CosinePrototypeClassification
from .transforms import DetectionTransform, collate

__all__ = [
    "Anchors", "Assignment", "assign_batch", "ResNetFPN", "BoxCoder", "DLDENetWithTrackedMeans",
    "RetinaNet", "atomic_save", "DirectionalClassification", "Regression", "SigmoidClassification",
    "SubModule", "detection_loss", "focal_loss", "TrackedMeans", "DigitsConfig", "DigitsPaths",
    "make_digits_dataset", "CocoDetection", "DetectionTransform", "collate", "coco_metrics", "evaluate",
    "load_checkpoint", "TrainingOutput", "ClassificationHead", "CosinePrototypeClassification", "HEADS",
    "build_detector", "load_detector", "default_digits_root", "read_image",
]
