"""Run folders: the one owner of what a folder written by :func:`dlde.train.train` holds.

A run folder holds everything a run produces (:attr:`RunFolder.FILES`):

* ``config.json``: the training config, the dataset's class names and category ids, and the
  environment that decides the numbers besides the config;
* ``metrics.jsonl``: one JSON object per finished epoch;
* ``checkpoint.pt``: model, optimizer, schedule and RNG state after the last finished epoch;
* ``means_history.npy`` ``(epochs + 1, C, d)`` and ``kappa_history.npy`` ``(epochs + 1, C)``:
  tracked class means and their vMF concentration per epoch (heads with tracked means only).

:class:`RunFolder` answers "is this the same run, and is it finished?" for the trainer, the
pipeline, the sweeps and the few-shot base runs, and writes the files atomically. The trainer
checks a folder without writing (:meth:`RunFolder.check_claim`), then claims it undoably
(:class:`Claim`): a start that fails before its first epoch is saved leaves the folder as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from dlde.data.registry import all_dataset_options
from dlde.errors import ConfigError, Key, RunFolderTaken
from dlde.files import atomic_save_npy, atomic_write_json, atomic_write_text, read_jsonl
from dlde.model.builders import load_detector
from dlde.model.checkpoints import atomic_save
from dlde.model.registry import HEADS

from .builders import build_datasets
from .config import TrainConfig, flatten

#: The one list of TrainConfig fields that never change a run's numbers: free to differ between
#: a run and its resumption, ignored when runs are compared and their folders named. ``threads``
#: is not here: the intra-op thread count changes how float reductions are split.
NUMBER_NEUTRAL_FIELDS: tuple[str, ...] = (
    "run_dir", "resume", "overwrite", "progress", "allow_changed", "device", "num_workers", "eval_batch_size",
    "dist_timeout_s", "data_root")
#: TrainConfig fields that act on tracked class means only: inert, and no part of a run's identity,
#: for a head without them (``ClassificationHead.tracks_means``), as another head's options are.
TRACKED_MEANS_FIELDS: tuple[str, ...] = ("reimprint", "reimprint_buckets", "reimprint_refit")
#: The defaults of the config's own fields (not its head and dataset options, resolved apart),
#: which a record written before a field existed ran with.
_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)
                   if f.default is not MISSING and f.name not in NUMBER_NEUTRAL_FIELDS}


@dataclass
class Run:
    """A finished (or interrupted) training run.

    Attributes:
        run_dir: the folder.
        config: the training configuration as a dict (see :class:`dlde.train.TrainConfig`).
        class_names: label -> class name.
        category_ids: label -> dataset category id.
        metrics: one dict per finished epoch.
        means_history: ``(epochs + 1, C, d)`` class means (None for heads without tracked means).
        kappa_history: ``(epochs + 1, C)`` vMF concentration of the tracked embeddings (or None).
    """

    run_dir: Path
    config: dict[str, Any]
    class_names: list[str]
    category_ids: list[int]
    metrics: list[dict[str, Any]]
    means_history: np.ndarray | None
    kappa_history: np.ndarray | None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def load_model(self, device=None) -> nn.Module:
        """The model of the last saved epoch, in eval mode."""
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"{self.checkpoint} does not exist: the run has not finished an epoch")
        return load_detector(self.checkpoint, device=device).eval()

    def datasets(self):
        """``(train, val)`` datasets of the run's configuration."""
        return build_datasets(TrainConfig.from_dict(self.config))

    @property
    def last(self) -> dict[str, Any]:
        """Metrics of the last finished epoch ({} if none)."""
        return self.metrics[-1] if self.metrics else {}


def run_identity(config: Any) -> dict[str, Any]:
    """What decides the numbers of a run of ``config`` (a TrainConfig or its dict, flat head and
    dataset option names or nested ``head_options`` and ``dataset_options``), as one flat dict.

    The head's options are resolved against its ``Options`` defaults (an option left unset and
    the same option set to its default are one run); options of other heads, the fields of
    :data:`NUMBER_NEUTRAL_FIELDS` and, for a head without tracked means, those of
    :data:`TRACKED_MEANS_FIELDS` are left out. The options of every registered dataset are
    resolved against their defaults too, and kept: they were fields of the config, and a run's
    identity names its folder in the sweeps. So are the config's own fields: a record written
    before a field existed ran with the field's default (a field is added with the default that
    keeps the old behaviour), so a preset that sets it otherwise names another run. ``amp``
    recorded as a bool (older records) becomes its mode.
    """
    flat = {key: list(value) if isinstance(value, tuple) else value
            for key, value in flatten(config).items() if key not in NUMBER_NEUTRAL_FIELDS}
    for name, default in _FIELD_DEFAULTS.items():
        flat.setdefault(name, list(default) if isinstance(default, tuple) else default)
    for name, default in all_dataset_options().items():
        flat.setdefault(name, list(default) if isinstance(default, tuple) else default)
    if isinstance(flat.get("amp"), bool):  # recorded when amp was a bool (True meant CUDA float16)
        flat["amp"] = "fp16" if flat["amp"] else "off"
    head = HEADS.get(flat.get("model"))
    if head is not None:
        own = {f.name: f.default for f in fields(head.Options)}
        others = {f.name for other in HEADS.values() for f in fields(other.Options)} - set(own)
        flat = {key: value for key, value in flat.items() if key not in others}
        flat.update({name: flat.get(name, default) for name, default in own.items()})
        if not head.tracks_means:
            flat = {key: value for key, value in flat.items() if key not in TRACKED_MEANS_FIELDS}
    if flat.get("reimprint", "off") == "off":  # the refit follows a re-imprinting: without one it does nothing
        flat.pop("reimprint_refit", None)
    return flat


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``{field: (saved, new)}`` (:meth:`RunFolder.config_changes`) as ``field: saved -> new, ...``, sorted by field."""
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changes.items()))


class RunFolder:
    """One run folder: its identity and completion, its files, and their atomic writes.

    Args:
        path: the folder (it need not exist yet).
    """

    #: The files a run writes into its folder; any of them present means the folder holds a run.
    FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "means_history.npy", "kappa_history.npy")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.checkpoint_file = self.path / "checkpoint.pt"

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---------------------------------------------------------------------------------- reading
    def holds_run(self) -> bool:
        """Whether any of :attr:`FILES` is present."""
        return any((self.path / name).exists() for name in self.FILES)

    def record(self) -> dict[str, Any] | None:
        """The parsed ``config.json`` (None if absent).

        Raises:
            ValueError: it is not a dlde run record (not JSON, or without a ``config`` mapping).
        """
        try:
            text = self.config_file.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if not isinstance(record, dict) or not isinstance(record["config"], dict):
                raise TypeError("no 'config' mapping")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.config_file}: not a dlde run record ({error})") from None
        return record

    def saved_config(self, record: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The saved training config (None without ``config.json``); ``amp`` recorded as a bool
        (older records) becomes its mode. ``record``: the already read :meth:`record`, to read the
        file once."""
        if record is None:
            record = self.record()
        if record is None:
            return None
        saved = dict(record["config"])
        if isinstance(saved.get("amp"), bool):
            saved["amp"] = "fp16" if saved["amp"] else "off"
        return saved

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``, one per finished epoch (:func:`dlde.files.read_jsonl`)."""
        return read_jsonl(self.metrics_file)

    def finished_epochs(self) -> int:
        """The epoch of the last row of ``metrics.jsonl``; 0 when it is missing or unreadable."""
        try:
            rows = self.metrics()
        except (OSError, ValueError):
            return 0
        return int(rows[-1].get("epoch", 0)) if rows else 0

    def is_finished(self) -> bool:
        """Whether the folder holds a run with every epoch of its own saved config written (whatever
        config asked for it; :meth:`is_complete` also checks the config)."""
        try:
            saved = self.saved_config()
        except ValueError:
            return False
        return saved is not None and self.finished_epochs() >= int(saved["epochs"])

    def config_changes(self, config: Any, record: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
        """``{field: (saved, new)}`` for every field of :func:`run_identity` whose saved value
        differs from ``config``'s (a field the saved record lacks had its default); ``record`` as in
        :meth:`saved_config`.

        Raises:
            FileNotFoundError: the folder has no ``config.json``.
            ValueError: ``config.json`` is not a dlde run record.
        """
        saved = self.saved_config(record)
        if saved is None:
            raise FileNotFoundError(f"{self.config_file} not found: {self.path} holds no run record")
        old, new = run_identity(saved), run_identity(config)
        return {key: (old[key], value) for key, value in new.items() if key in old and old[key] != value}

    def state(self, config: Any) -> str:
        """What the folder holds for ``config`` (a TrainConfig or its dict).

        Returns:
            ``"complete"`` (same config, last epoch written), ``"partial"`` (same config and a
            checkpoint to resume from), ``"changed"`` (another config, or an unreadable record)
            or ``"new"``.
        """
        if not self.config_file.exists():
            return "new"
        try:
            if self.config_changes(config):
                return "changed"
        except ValueError:
            return "changed"
        if self.finished_epochs() >= int(run_identity(config)["epochs"]):
            return "complete"
        return "partial" if self.checkpoint_file.exists() else "new"

    def is_complete(self, config: Any) -> bool:
        """Whether the folder holds the finished run of ``config``."""
        return self.state(config) == "complete"

    def load(self) -> Run:
        """The record of the run (config, metrics and histories; not the model)."""
        record = self.record()
        if record is None:
            raise FileNotFoundError(f"{self.config_file} not found: is {self.path} a dlde run folder?")
        return Run(self.path, record["config"], record["class_names"], record["category_ids"], self.metrics(),
                   self._optional_array("means_history.npy"), self._optional_array("kappa_history.npy"))

    def _optional_array(self, name: str) -> np.ndarray | None:
        path = self.path / name
        return np.load(path) if path.exists() else None

    # ---------------------------------------------------------------------------------- claiming
    def check_claim(self, config) -> dict[str, Any] | None:
        """What :meth:`claim` would do for ``config``, writing nothing: the record it would return
        (with the change it would record), or None for a run that starts afresh.

        Raises:
            RunFolderTaken: the folder holds a run and neither resume nor overwrite is set, or
                resume is set and the run has no ``config.json``.
            ConfigError: resuming with a changed config that ``allow_changed`` does not cover.
            ValueError: resuming a folder whose ``config.json`` is not a run record.
        """
        present = [name for name in self.FILES if (self.path / name).exists()]
        if not present or config.overwrite:
            return None
        if not config.resume:
            raise RunFolderTaken("run folder {path} already holds a run ({present}): pass {resume} to continue "
                                 "it, {overwrite} to replace it, or choose another {run_dir}", path=str(self.path),
                                 present=", ".join(present), resume=Key("resume", True),
                                 overwrite=Key("overwrite", True), run_dir=Key("run_dir"))
        record = self.record()
        if record is None:
            raise RunFolderTaken("cannot resume {path}: it has no config.json, so its run is unknown; pass "
                                 "{overwrite} to start afresh", path=str(self.path), overwrite=Key("overwrite", True))
        changed = self.config_changes(config, record)
        refused = sorted(set(changed) - set(config.allow_changed))
        if refused:
            raise ConfigError("cannot resume {path} with a different config ({changes}); resume with the saved "
                              "values, or allow the change explicitly with {allow}", path=str(self.path),
                              changes=describe_changes({key: changed[key] for key in refused}),
                              allow=Key("allow_changed", refused))
        if changed:
            record = {**record, "config": config.to_dict(), "resumed_with_changes": [
                *record.get("resumed_with_changes", []),
                {"changed": {key: {"from": old, "to": new} for key, (old, new) in changed.items()},
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]}
        return record

    def claim(self, config) -> dict[str, Any] | None:
        """Make sure the folder belongs to the run of ``config`` (a TrainConfig); return the saved
        record when resuming, None when the run starts afresh.

        A folder holding another run's files is refused unless ``config.resume`` (same config;
        fields in ``config.allow_changed`` may differ and are recorded in ``config.json`` under
        ``resumed_with_changes``) or ``config.overwrite`` (the run's own :attr:`FILES` are removed;
        other files are left alone). :meth:`claim_until_saved` claims it undoably.

        Raises:
            As :meth:`check_claim`, before anything is written.
        """
        claim = self.claim_until_saved(config)
        claim.keep()
        return claim.record

    def claim_until_saved(self, config) -> "Claim":
        """:meth:`claim`, undoably: the returned :class:`Claim` keeps what the folder held (hard
        links of the run's files, which later atomic writes leave untouched), so a start that fails
        before it saves anything can put the folder back as it found it (:meth:`Claim.undo`)."""
        record = self.check_claim(config)
        missing = [folder for folder in (self.path, *self.path.parents) if not folder.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        claim = Claim(self, record, missing)
        try:
            for name in self.FILES:
                claim.preserve(name)
            if config.overwrite:
                for name in self.FILES:
                    (self.path / name).unlink(missing_ok=True)
            elif record is not None and record != self.record():  # resumed with changes: record them
                self.write_record(record)
        except BaseException:
            claim.undo()
            raise
        return claim

    # ---------------------------------------------------------------------------------- writing
    def write_record(self, record: Mapping[str, Any]) -> None:
        """``config.json`` (indented JSON), atomically."""
        atomic_write_json(self.config_file, record)

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``metrics.jsonl``: one JSON object per row, atomically."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(row) + "\n" for row in rows))

    def write_histories(self, means: Sequence[np.ndarray], kappas: Sequence[np.ndarray]) -> None:
        """``means_history.npy`` ``(epochs + 1, C, d)`` and ``kappa_history.npy`` ``(epochs + 1, C)``
        from one array per epoch, atomically; nothing when there are none (no tracked means)."""
        if len(means):
            atomic_save_npy(self.path / "means_history.npy", np.stack(means))
            atomic_save_npy(self.path / "kappa_history.npy", np.stack(kappas))

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """``checkpoint.pt`` (``torch.save`` of plain data, checked before writing), atomically."""
        atomic_save(state, self.checkpoint_file)


class Claim:
    """A run folder claimed by one start of a run (:meth:`RunFolder.claim_until_saved`): until
    :meth:`keep`, :meth:`undo` puts back what the folder held before the claim.

    Attributes:
        folder: the run folder.
        record: the saved record when resuming (as :meth:`RunFolder.claim` returns it), else None.
    """

    #: Suffix of the hidden hard link that keeps a run file as the claim found it.
    BACKUP = ".before-claim"

    def __init__(self, folder: RunFolder, record: dict[str, Any] | None, created: Sequence[Path]):
        self.folder, self.record = folder, record
        self._created = list(created)  # folders the claim made, deepest first
        self._kept: dict[str, Path] = {}  # run file -> the link that holds it as it was
        self._open = True

    def preserve(self, name: str) -> None:
        """Keep run file ``name`` as it is now, if present (a hard link; a copy where links fail)."""
        path, backup = self.folder.path / name, self.folder.path / f".{name}{self.BACKUP}"
        if not path.exists():
            return
        backup.unlink(missing_ok=True)  # left by a start that was killed before it kept or undid its claim
        try:
            os.link(path, backup)
        except OSError:
            shutil.copy2(path, backup)
        self._kept[name] = backup

    def keep(self) -> None:
        """The start saved its first epoch (or had nothing to train): the claim stands."""
        for backup in self._kept.values():
            backup.unlink(missing_ok=True)
        self._open = False

    def undo(self) -> None:
        """Put the folder back as the claim found it: the run files it held restored, those this
        start wrote removed, the folders the claim made removed when empty. Other files are never
        touched. A no-op after :meth:`keep`."""
        if not self._open:
            return
        for name in self.folder.FILES:
            path = self.folder.path / name
            if name in self._kept:
                backup = self._kept[name]
                if path.exists() and os.path.samefile(backup, path):  # never rewritten: rename would keep both
                    backup.unlink()
                else:
                    os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was written there
                break
        self._open = False


def load_run(run_dir: str | Path) -> Run:
    """Load the record of a run folder (config, metrics and histories; not the model)."""
    return RunFolder(run_dir).load()
