"""Folders of generated datasets: their layout, the manifest that proves who wrote them, and the
rules for writing into them (one owner for the digits and the glyphs generators).

A generated dataset lives under ``root``::

    dlde_<kind>.json              # manifest: generator, format version, arguments, "complete"
    train/000001.png ...
    val/000001.png ...
    annotations/instances_train.json
    annotations/instances_val.json

A generator writes only into a missing or empty folder, or into one holding its own manifest
written with the same arguments; it never deletes a file. The manifest is written first
(``"complete": false``, claiming the folder) and last (``"complete": true``), both atomically
(:mod:`dlde.files`), so an interrupted generation leaves a folder that is provably the
generator's and is written again by the next call with the same arguments.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlde.errors import ConfigError, Key
from dlde.files import atomic_write_text

__all__ = ["GeneratedPaths", "Generator", "at_least", "checked_arguments", "int_range"]

SPLITS = ("train", "val")


@dataclass(frozen=True)
class GeneratedPaths:
    """Where a generated dataset lives on disk."""

    root: Path
    train_images_dir: Path
    val_images_dir: Path
    train_annotations: Path
    val_annotations: Path

    @classmethod
    def under(cls, root: Path):
        """The layout of a dataset in ``root`` (see the module docstring)."""
        return cls(
            root=root,
            train_images_dir=root / "train",
            val_images_dir=root / "val",
            train_annotations=root / "annotations" / "instances_train.json",
            val_annotations=root / "annotations" / "instances_val.json",
        )

    def split(self, split: str) -> tuple[Path, Path]:
        """``(images folder, annotation file)`` of ``split`` ('train' or 'val')."""
        if split == "train":
            return self.train_images_dir, self.train_annotations
        return self.val_images_dir, self.val_annotations

    def files_present(self, train_images: int, val_images: int) -> bool:
        """Whether both annotation files and the images ``000001.png ...`` of both splits exist."""
        if not (self.train_annotations.is_file() and self.val_annotations.is_file()):
            return False
        return all(
            (folder / f"{image_id:06d}.png").is_file()
            for folder, count in ((self.train_images_dir, train_images), (self.val_images_dir, val_images))
            for image_id in range(1, count + 1)
        )


@dataclass(frozen=True)
class Generator:
    """What identifies one generator's folders, and the ownership rules they follow.

    Attributes:
        kind: Short name, in messages and folder names (``'digits'``).
        identifier: Stored in every manifest and checked on reuse (not a module path).
        format_version: Version of the written files; part of a folder's key.
        default_root: The function that derives a folder from the arguments, named in messages.
    """

    kind: str
    identifier: str
    format_version: int
    default_root: str

    @property
    def manifest_name(self) -> str:
        """File name of the manifest: ``dlde_<kind>.json``."""
        return f"dlde_{self.kind}.json"

    def key(self, args: dict) -> str:
        """A short hash of the arguments (and of the file format): equal arguments give equal
        keys, different arguments different ones."""
        text = json.dumps({"format_version": self.format_version, "args": args}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def folder(self, base: str | Path, args: dict) -> Path:
        """``Path(base) / f"{kind}-{key}"``: the folder of a dataset of ``args``."""
        return Path(base) / f"{self.kind}-{self.key(args)}"

    def config(self, config_class: type, params: dict[str, Any], caller: str):
        """``config_class(**params)`` (omitted fields: defaults), naming unknown parameters."""
        names = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"{caller}: unknown {self.kind} parameter(s) {unknown}; known: {sorted(names)}")
        return config_class(**params)

    def needs_writing(self, paths: GeneratedPaths, args: dict, image_counts: tuple[int, int], *,
                      legacy: Callable[[Path], dict | None] | None = None) -> bool:
        """Whether the dataset of ``args`` must be (re)written into ``paths.root``: False when a
        complete dataset of these arguments is in place.

        Raises:
            ValueError: When the generator may not write there (see :meth:`claimed`).
        """
        stored = self.claimed(paths.root, args, legacy=legacy)
        return stored is None or not stored.get("complete") or not paths.files_present(*image_counts)

    def claimed(self, root: Path, args: dict, *, legacy: Callable[[Path], dict | None] | None = None) -> dict | None:
        """Checks that the generator may write the dataset of ``args`` into ``root``.

        Args:
            root: The dataset folder.
            args: The generation arguments, as JSON-ready values.
            legacy: Reads the manifest an older format left in ``root`` (as a current manifest),
                or returns ``None`` when there is none.

        Returns:
            The stored manifest when ``root`` holds one with the same arguments, ``None`` when
            ``root`` is missing or empty.

        Raises:
            ValueError: When ``root`` is not a folder, is not empty and holds no manifest, holds
                an unreadable manifest, or holds a dataset of other arguments.
        """
        if not root.exists():
            return None
        if not root.is_dir():
            raise ValueError(f"{self.kind} data_root {root} exists and is not a folder")
        manifest_path = root / self.manifest_name
        if manifest_path.exists():
            stored = self._read_manifest(manifest_path)
        else:
            stored = legacy(root) if legacy is not None else None
            if stored is None:
                # A claim interrupted mid-write leaves only our temporary manifest: still empty.
                if not all(self._is_claim_leftover(entry.name) for entry in root.iterdir()):
                    raise ValueError(
                        f"{self.kind} data_root {root} is not empty and holds no {self.manifest_name}: "
                        "refusing to write generated data into a folder it did not create; "
                        "pick an empty or new data_root"
                    )
                return None
        if stored["args"] != args:
            have = stored["args"]
            changed = ", ".join(
                f"{name}={have.get(name)!r} (wanted {args.get(name)!r})"
                for name in sorted(set(have) | set(args))
                if have.get(name) != args.get(name)
            )
            what = "a dataset" if stored.get("complete") else "an incomplete dataset"
            raise ValueError(
                f"{self.kind} data_root {root} holds {what} generated with other arguments: {changed}; "
                f"pick another data_root (e.g. {self.default_root}) instead of regenerating over it"
            )
        return stored

    def write(self, paths: GeneratedPaths, args: dict, record: dict,
              write_split: Callable[[str, Path], dict]) -> None:
        """Writes a whole dataset: the claiming manifest first, then each split's images (by
        ``write_split(split, images_dir)``, which returns the split's COCO dict) and annotation
        file, and the complete manifest last.

        Args:
            paths: Where to write.
            args: The generation arguments (JSON-ready).
            record: Further manifest entries (after ``args``).
            write_split: Writes the images of a split and returns its COCO annotations.
        """
        manifest = {
            "generator": self.identifier,
            "format_version": self.format_version,
            "complete": False,
            "args": args,
            **record,
        }
        # Claim the folder before writing into it: an interrupted run leaves a folder that is
        # provably ours, so the next call with the same arguments may write it again.
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.root / self.manifest_name, json.dumps(manifest, indent=1))
        for folder in (paths.train_images_dir, paths.val_images_dir, paths.train_annotations.parent):
            folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            images_dir, annotation_file = paths.split(split)
            atomic_write_text(annotation_file, json.dumps(write_split(split, images_dir)))
        # Marked complete last: a complete manifest means every file is in place.
        atomic_write_text(paths.root / self.manifest_name, json.dumps({**manifest, "complete": True}, indent=1))

    def _read_manifest(self, path: Path) -> dict:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable {self.kind} manifest ({err}); pick another data_root") from None
        if (
            not isinstance(stored, dict)
            or stored.get("generator") != self.identifier
            or not isinstance(stored.get("args"), dict)
        ):
            raise ValueError(f"{path}: not a {self.kind} manifest; pick another data_root")
        if stored.get("format_version") != self.format_version:
            raise ValueError(
                f"{path}: {self.kind} format version {stored.get('format_version')!r}, this dlde writes "
                f"{self.format_version}; pick another data_root"
            )
        return stored

    def _is_claim_leftover(self, name: str) -> bool:
        """What a claim killed while writing the manifest leaves: dlde.files' temporary file, or
        an older dlde's."""
        patterns = (f".{self.manifest_name}.*.tmp", f"{self.manifest_name}.tmp")
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def int_range(name: str, value, *, minimum: int) -> tuple[int, int]:
    """``value`` as an inclusive integer range ``(lo, hi)`` with ``minimum <= lo <= hi``.

    Raises:
        ConfigError: naming ``name`` (a :class:`dlde.errors.Key`), when ``value`` is no such pair.
    """
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError("{name} must be a pair (lo, hi) of integers, got {got!r}", name=Key(name),
                          got=value) from None
    if not minimum <= lo <= hi:
        raise ConfigError("{name} must satisfy {minimum} <= lo <= hi, got {got!r}", name=Key(name), minimum=minimum,
                          got=value)
    return lo, hi


def at_least(options: Any, least: Mapping[str, int]) -> None:
    """Refuse the first field of ``options`` (a dataset's options) below its least value in ``least``.

    Raises:
        ConfigError: naming the field.
    """
    for name, low in least.items():
        if getattr(options, name) < low:
            raise ConfigError("{name} must be >= {least}, got {got}", name=Key(name), least=low,
                              got=getattr(options, name))


def checked_arguments(config_class: type, options: Any, arguments: Mapping[str, str]) -> dict[str, Any]:
    """The generator arguments of a dataset's ``options`` (``arguments``: option -> argument),
    checked by the generator's ``config_class`` (nothing is generated).

    Raises:
        ConfigError: the generator's refusal, naming the option instead of its argument
            (``glyphs_classes``, not ``classes``).
    """
    values = {argument: getattr(options, name) for name, argument in arguments.items()}
    try:
        config_class(**values)
    except ConfigError as error:
        raise error.renamed({argument: name for name, argument in arguments.items()}) from None
    return values
