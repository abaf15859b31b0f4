"""Where a COCO-format dataset lies, as a training config names it: :class:`CocoOptions` (registered
as ``'coco'`` in :data:`dlde.data.registry.DATASETS`) and the :class:`CocoFiles` it gives.

Free of torch, like the other datasets' options, so that ``python -m dlde.train`` checks a
config's dataset before torch loads (:mod:`dlde.train.preflight`); the dataset itself is
:class:`dlde.data.coco.CocoDetection`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlde.errors import ConfigError, Key

__all__ = ["CocoFiles", "CocoOptions"]


@dataclass(frozen=True)
class CocoFiles:
    """The two splits of a COCO-format dataset on disk."""

    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path

    def split(self, split: str) -> tuple[Path, Path]:
        """``(images folder, annotation file)`` of ``split`` ('train' or 'val')."""
        if split == "train":
            return self.train_images, self.train_annotations
        return self.val_images, self.val_annotations


@dataclass(frozen=True)
class CocoOptions:
    """COCO-format files read where they lie, as a training config names them (``dataset='coco'``,
    registered in :data:`dlde.data.registry.DATASETS`): image folders and ``instances`` files of
    the training and the validation split, all four needed (LVIS v1 files load the same way)."""

    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None

    def __post_init__(self) -> None:
        if not all((self.train_images, self.train_annotations, self.val_images, self.val_annotations)):
            raise ConfigError("{dataset} needs {train_images}, {train_annotations}, {val_images} and "
                              "{val_annotations}", dataset=Key("dataset", "coco"), train_images=Key("train_images"),
                              train_annotations=Key("train_annotations"), val_images=Key("val_images"),
                              val_annotations=Key("val_annotations"))

    def default_root(self, base: str | Path) -> None:
        """None: nothing is generated."""
        return None

    def build(self, root: str | Path | None) -> CocoFiles:
        """The files as they are (``root`` is not used)."""
        return CocoFiles(Path(self.train_images), Path(self.train_annotations), Path(self.val_images),
                         Path(self.val_annotations))
