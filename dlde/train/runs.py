"""Reading a run folder written by :func:`dlde.train.train` back into Python objects."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dlde.model.registry import load_detector


@dataclass
class Run:
    """A finished (or interrupted) training run.

    Attributes:
        run_dir: the folder.
        config: the training configuration as a dict (see :class:`dlde.train.TrainConfig`).
        class_names: label -> class name.
        category_ids: label -> dataset category id.
        metrics: one dict per finished epoch.
        means_history: ``(epochs + 1, C, d)`` class means (None for the sigmoid baseline).
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
        from .loop import TrainConfig, build_datasets
        return build_datasets(TrainConfig.from_dict(self.config))

    @property
    def last(self) -> dict[str, Any]:
        """Metrics of the last finished epoch ({} if none)."""
        return self.metrics[-1] if self.metrics else {}


def load_run(run_dir: str | Path) -> Run:
    """Load the record of a run folder (config, metrics and histories; not the model)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: is {run_dir} a dlde run folder?")
    record = json.loads(config_file.read_text())
    metrics_file = run_dir / "metrics.jsonl"
    metrics = ([json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
               if metrics_file.exists() else [])

    def optional(name):
        path = run_dir / name
        return np.load(path) if path.exists() else None

    return Run(run_dir, record["config"], record["class_names"], record["category_ids"], metrics,
               optional("means_history.npy"), optional("kappa_history.npy"))
