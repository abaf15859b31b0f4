"""The few-shot protocol's results, typed: one :class:`FewShotRow` per adapted model, the
:class:`FewShotResult` of a run of the protocol, and per method and k a :class:`FewShotSummary`
(:func:`summarize`: the t-interval over draws, or over base seeds of each seed's mean over its
draws). ``to_dict`` gives each one's JSON (the keys ``novel_AP``, ``base_seed``, ... of
``results.json``) and ``from_dict`` reads it back, so a table can be rebuilt from a saved file.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dlde.analysis.stats import t_interval

from .methods import METHODS, FineTune

__all__ = ["SUMMARY_METRICS", "FewShotResult", "FewShotRow", "FewShotSummary", "interval_over", "summarize"]

#: The per-draw numbers :func:`summarize` gives an interval of.
SUMMARY_METRICS = ("novel_AP", "novel_AP50", "base_AP", "base_AP50", "seconds")

Interval = dict[str, float]  # a t-interval: mean, sd, low, high, n (dlde.analysis.stats.t_interval)
APs = dict[str, float]  # a model's COCO AP, AP50 (and AP75) on a group of classes


@dataclass(frozen=True)
class FewShotRow:
    """One base model grown by the novel classes and adapted by one method on one k-shot draw.

    Attributes:
        method: a key of :data:`dlde.protocols.fewshot.METHODS`.
        k: boxes per novel class.
        draw: index of the k-shot draw.
        steps, seconds: fine-tuning steps, and the seconds of the adaptation on this machine.
        novel_AP, novel_AP50: COCO AP of the novel classes.
        base_AP, base_AP50: COCO AP of the base classes after adding the novel ones.
        novel_per_class_AP: novel class name -> its AP.
        base_seed: the base seed of the base model (None: a run on one base model per head).
    """

    method: str
    k: int
    draw: int
    steps: int
    seconds: float
    novel_AP: float
    novel_AP50: float
    base_AP: float
    base_AP50: float
    novel_per_class_AP: dict[str, float]
    base_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON keys in order, ``base_seed`` first when there is one."""
        values = dataclasses.asdict(self)
        seed = values.pop("base_seed")
        return values if seed is None else {"base_seed": seed, **values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotRow:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class FewShotResult:
    """A run of the few-shot protocol (:func:`dlde.protocols.fewshot.run_protocol`, or
    :func:`~dlde.protocols.fewshot.run_over_base_seeds` over several base seeds).

    Attributes:
        before: head -> base AP and AP50 of its base model (the mean over base seeds with several).
        rows: one per method, k and draw (and base seed).
        settings: the fine-tuning settings.
        base_names, novel_names: the class names, in label order.
        eval_images: validation images evaluated.
        shots: the k values run; skipped_shots: those the rarest novel class has too few boxes for.
        draws: k-shot draws per k (and base seed).
        before_by_seed: base seed -> that seed's ``before`` (with AP75); None for one base model per head.
        base_seeds: the base seeds, in order; None for one base model per head.
    """

    before: dict[str, APs]
    rows: list[FewShotRow]
    settings: FineTune
    base_names: list[str]
    novel_names: list[str]
    eval_images: int
    shots: list[int]
    skipped_shots: list[int]
    draws: int
    before_by_seed: dict[int, dict[str, APs]] | None = None
    base_seeds: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON keys in order (``before_by_seed`` and ``base_seeds`` only over several base seeds)."""
        values = {"before": self.before, "rows": [row.to_dict() for row in self.rows],
                  "settings": dataclasses.asdict(self.settings), "base_names": self.base_names,
                  "novel_names": self.novel_names, "eval_images": self.eval_images, "shots": self.shots,
                  "skipped_shots": self.skipped_shots, "draws": self.draws}
        if self.base_seeds is not None:
            values |= {"before_by_seed": self.before_by_seed, "base_seeds": self.base_seeds}
        return values


@dataclass(frozen=True)
class FewShotSummary:
    """One method at one k (:func:`summarize`): an interval of each of :data:`SUMMARY_METRICS`, the
    steps, and the forgetting ``base_AP_drop`` (base AP before minus after, means).

    Attributes:
        method, k: what is summarized.
        draws: draws (per base seed).
        steps: fine-tuning steps.
        novel_AP, novel_AP50, base_AP, base_AP50, seconds: t-intervals (:func:`dlde.analysis.stats.t_interval`).
        base_AP_before: the base model's base AP.
        base_AP_drop: ``base_AP_before`` minus the mean base AP after (NaN when that is).
        base_seeds: the base seeds the intervals are over (None: over the draws of one base model).
    """

    method: str
    k: int
    draws: int
    steps: int
    novel_AP: Interval
    novel_AP50: Interval
    base_AP: Interval
    base_AP50: Interval
    seconds: Interval
    base_AP_before: float
    base_AP_drop: float
    base_seeds: int | None = None

    def metric(self, name: str) -> Interval:
        """The interval of a metric of :data:`SUMMARY_METRICS` by name."""
        if name not in SUMMARY_METRICS:
            raise ValueError(f"unknown few-shot metric {name!r}; options: {', '.join(SUMMARY_METRICS)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON keys in order (``base_seeds`` after ``steps`` when there are several)."""
        seeds = {} if self.base_seeds is None else {"base_seeds": self.base_seeds}
        return ({"method": self.method, "k": self.k, "draws": self.draws, "steps": self.steps} | seeds
                | {name: getattr(self, name) for name in SUMMARY_METRICS}
                | {"base_AP_before": self.base_AP_before, "base_AP_drop": self.base_AP_drop})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotSummary:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def interval_over(entries: Sequence[FewShotSummary]) -> str:
    """What the intervals of :func:`summarize` rows are over, for captions and titles: ``"3 base seeds
    × 5 draws"`` (the t-interval over the base seeds of each seed's mean over its 5 draws) or
    ``"5 draws"`` (one base seed)."""
    seeds = max((e.base_seeds or 1 for e in entries), default=1)
    draws = max((e.draws for e in entries), default=0)
    return f"{seeds} base seeds × {draws} draws" if seeds > 1 else f"{draws} draws"


def summarize(result: FewShotResult) -> list[FewShotSummary]:
    """One row per (method, k): :func:`dlde.analysis.stats.t_interval` of each metric, the steps, and the
    forgetting ``base_AP_drop`` (base AP before minus after, means).

    With rows of several base seeds (:func:`~dlde.protocols.fewshot.run_over_base_seeds`) the interval
    is over the base seeds of each seed's mean over its draws (``n`` = base seeds; the row gets
    ``base_seeds`` and ``draws`` per seed). Draws of one base seed share its model, so they are not
    independent replicates of a training: pooling all seed × draw pairs into one t-interval would
    count them as such and make it too narrow when the seeds differ; the two-stage mean is the
    standard analysis of draws nested in seeds (its variance holds the seed-to-seed variance plus the
    draw variance over the draws per seed). With one base seed (rows without ``base_seed``) the
    interval is over the draws.
    """
    table = []
    keys = sorted({(r.method, r.k) for r in result.rows}, key=lambda mk: (list(METHODS).index(mk[0]), mk[1]))
    for method, k in keys:
        rows = [r for r in result.rows if r.method == method and r.k == k]
        by_seed: dict[int, list[FewShotRow]] = {}
        for r in rows:  # the draws, grouped by base seed
            by_seed.setdefault(int(r.base_seed or 0), []).append(r)
        if len(by_seed) > 1:
            stats = {metric: t_interval([t_interval([getattr(r, metric) for r in v])["mean"]
                                         for v in by_seed.values()]) for metric in SUMMARY_METRICS}
        else:
            stats = {metric: t_interval([getattr(r, metric) for r in rows]) for metric in SUMMARY_METRICS}
        before = result.before[METHODS[method][0]]["AP"]
        after = stats["base_AP"]["mean"]
        table.append(FewShotSummary(method, k, max(len(v) for v in by_seed.values()), rows[0].steps, **stats,
                                    base_AP_before=before,
                                    base_AP_drop=before - after if math.isfinite(after) else math.nan,
                                    base_seeds=len(by_seed) if len(by_seed) > 1 else None))
    return table
