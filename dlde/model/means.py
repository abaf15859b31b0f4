"""Tracked class means: one unit direction per class, updated from matched embeddings, never by gradient."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEANS_UPDATES = ("batch", "manual")
MEANS_INITS = ("zeros", "orthogonal", "random")
MEANS_LR_SCHEDULES = ("constant", "count", "seen")
# R̄ is clipped below 1 so that κ̂ = R̄(d − R̄²)/(1 − R̄²) stays finite for identical vectors.
_MAX_RESULTANT = 1.0 - 1e-7


@dataclass(frozen=True)
class MeansConfig:
    """Defaults of the tracked means, written once here (the heads and the trainer use them).

    They differ from the original's ('batch', lr 0.1, 'zeros') on purpose: with lr >= 0.01, or
    with means copied from a fresh encoder ('zeros' + an initialising pass), the class means
    collapsed together on the digits (see the README's ablations); orthonormal starting means
    moved at 0.003 per batch train stably.
    """

    update: str = "batch"
    lr: float = 0.003
    init: str = "orthogonal"
    lr_schedule: str = "constant"
    #: Momentum ``m`` of the running center of the matched embeddings (``c <- m c + (1 - m) batch
    #: mean``, DINO's 0.9); 0 tracks and scores the embeddings as they are (the original).
    center_momentum: float = 0.0
    #: Tracked batches during which the means stay at their start (the center still moves).
    warmup: int = 0


class TrackedMeans(nn.Module):
    """Running von Mises-Fisher mean directions of ``classes`` classes in ``embedding_size`` dims.

    The component a trainer drives (through ``model.tracked_means``), whatever head owns it:
    :meth:`update` tracks a batch, :meth:`update_means` applies what ``'manual'`` mode accumulated,
    :meth:`reset_statistics` / :meth:`snapshot` give the per-epoch means and concentration κ̂, and
    :attr:`reducer` reduces a batch's sums over processes (:mod:`dlde.train.distributed`).

    Like BatchNorm's running statistics the state lives in buffers and changes only under
    ``torch.no_grad()``:

    * ``'batch'``: each call to :meth:`update` is one step per class present in the batch:
      ``v = normalize(sum of the class's embeddings)``, then
      ``mean <- normalize((1 - lr) * mean + lr * v)``. A class whose mean is still zero takes
      ``v`` directly; absent classes keep their mean.
    * ``lr_schedule='count'`` (``'batch'`` mode only): class ``c`` steps by
      ``lr_c = max(lr, 1 / n_c)``, ``n_c`` the number of batches in which it was tracked, this one
      included (buffer ``batch_counts``, counted from the reduced counts so every process agrees):
      a running average of its batch directions at first (renormalized at every step; the first
      tracked batch replaces the starting mean, step 1), an exponential average with step ``lr``
      after ``1 / lr`` batches. A rare class, seen in a few batches, thus gets the average of what
      was seen instead of a mean that barely left its random start. It also gives up the spread-out
      start at a class's first batch, the start that kept the means apart on the digits (the
      README's ablations): measure it before making it a default.
    * ``lr_schedule='seen'`` (``'batch'`` mode only): class ``c`` steps by
      ``lr_c = max(lr, n_batch / n_seen)``, ``n_batch`` its embeddings in this batch and ``n_seen``
      all it was tracked with so far, this batch included (buffer ``seen_counts``): the running mean
      of every embedding seen, weighted by count, until the floor ``lr`` takes over (the first
      tracked batch replaces the start, step 1). Without centering this averages the embeddings of a
      still random network, which share one direction: measured, such fast means collapse.
    * ``'manual'``: :meth:`update` adds the per-class sums to ``embeddings_sums``;
      :meth:`update_means` sets every class with a non-zero sum to its normalized sum, keeps the
      previous mean of the others and resets the sums.

    Centering (``center_momentum > 0``, buffer ``center (d,)``): the embeddings of a freshly
    initialised encoder share one large common direction, so means averaged from them collapse
    together. A running center of the matched embeddings, ``c <- m c + (1 - m) mean(batch)``
    (DINO's centering; the first batch sets ``c``), is taken off every embedding before it is
    scored or tracked: :meth:`centered` gives ``normalize(e - c)``; :meth:`update` first moves
    ``c`` with the raw embeddings of the batch, then tracks them centered by the moved ``c``.

    Args:
        classes: number of classes.
        embedding_size: dimension ``d`` of the embeddings.
        mode: ``'batch'`` or ``'manual'``.
        lr: step of the ``'batch'`` update, in (0, 1] (the floor of ``'count'`` and ``'seen'``).
        lr_schedule: ``'constant'`` (every step is ``lr``), ``'count'`` (``max(lr, 1 / n_c)``) or
            ``'seen'`` (``max(lr, n_batch / n_seen)``).
        center_momentum: ``m`` of the running center, in [0, 1); 0: no centering.
        warmup: tracked batches with the means frozen at their start (``'batch'`` mode).

    The buffers of the options exist only with them (None otherwise): ``batch_counts (C,)`` with
    ``'count'``, ``seen_counts (C,)`` with ``'seen'``, ``center (d,)`` with centering and ``steps ()``
    with a warm-up, so the state of a tracker without them, and the keys of every checkpoint written
    without them, are those of the original.
    """

    def __init__(self, classes: int, embedding_size: int, *, mode: str = MeansConfig.update,
                 lr: float = MeansConfig.lr, lr_schedule: str = MeansConfig.lr_schedule,
                 center_momentum: float = MeansConfig.center_momentum, warmup: int = MeansConfig.warmup):
        super().__init__()
        if mode not in MEANS_UPDATES:
            raise ValueError(f"unsupported means update {mode!r}; options: {', '.join(MEANS_UPDATES)}")
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"means_lr must be in (0, 1], got {lr}")
        if lr_schedule not in MEANS_LR_SCHEDULES:
            raise ValueError(f"unknown means lr schedule {lr_schedule!r}; options: {', '.join(MEANS_LR_SCHEDULES)}")
        if lr_schedule != "constant" and mode != "batch":
            raise ValueError(f"means_lr_schedule {lr_schedule!r} sets the step of the 'batch' update; the {mode!r} "
                             "update averages what it accumulated already")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}")
        if int(warmup) < 0 or (int(warmup) > 0 and mode != "batch"):
            raise ValueError(f"means_warmup must be >= 0 (and only with the 'batch' update), got {warmup}")
        self.mode = mode
        self.lr = float(lr)
        self.lr_schedule = lr_schedule
        self.center_momentum = float(center_momentum)
        self.warmup = int(warmup)
        self.register_buffer("means", torch.zeros(classes, embedding_size))
        self.register_buffer("embeddings_sums", torch.zeros(classes, embedding_size))
        # Tracked batches per class, saved with the model (only when the schedule needs them).
        self.register_buffer("batch_counts", torch.zeros(classes, dtype=torch.long) if lr_schedule == "count" else None)
        # Embeddings tracked per class (the 'seen' schedule), the running center, tracked batches (warm-up).
        self.register_buffer("seen_counts", torch.zeros(classes, dtype=torch.long) if lr_schedule == "seen" else None)
        self.register_buffer("center", torch.zeros(embedding_size) if self.center_momentum > 0 else None)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long) if self.warmup > 0 else None)
        # Diagnostics (not saved): resultant and count of every tracked embedding since the last
        # reset_statistics(), from which the trainer estimates each class's vMF concentration.
        self.register_buffer("stat_sums", torch.zeros(classes, embedding_size), persistent=False)
        self.register_buffer("stat_counts", torch.zeros(classes, dtype=torch.long), persistent=False)
        # Sum of the raw (uncentered) tracked embeddings since the last reset: its norm over the count
        # is the length of their mean, near 1 when they all point one way (collapse-prone).
        self.register_buffer("stat_raw_sum", torch.zeros(embedding_size), persistent=False)
        #: ``(sums (C, d), counts (C,)) -> (sums, counts)`` applied before every update, e.g. an
        #: all-reduce over processes (:mod:`dlde.train.distributed`); None in a single process.
        self.reducer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    @property
    def initialized(self) -> Tensor:
        """``(C,)`` bool: classes whose mean has been set."""
        return self.means.norm(dim=1) > 0

    def centered(self, embeddings: Tensor) -> Tensor:
        """``normalize(embeddings - center)`` for ``embeddings (..., d)`` (differentiable; the center is
        a constant); the embeddings themselves without centering."""
        if self.center is None:
            return embeddings
        return F.normalize(embeddings - self.center.to(embeddings.dtype), dim=-1, eps=1e-12)

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor, *, raw: Tensor | None = None) -> None:
        """Track ``embeddings (N, d)`` of anchors matched to ``labels (N,)`` in ``[0, C)``.

        ``raw (N, d)``: the same embeddings before centering (:meth:`centered`). With centering they
        first move the center (its first batch sets it: an average started at its first value, not
        at zero), and what is tracked is ``normalize(raw - center)`` with the moved center, so a
        batch is tracked against the center it helped make (``embeddings`` are then not used).
        Without ``raw`` (or without centering) the center stays and ``embeddings`` are tracked.
        With a :attr:`reducer` set (distributed training), the raw sum and the per-class sums and
        counts of the batch are first reduced over all processes, so every process applies the
        same update from the global batch.

        Raises:
            ValueError: a label outside ``0..C-1``; nothing is changed.
            FloatingPointError: a non-finite embedding would reach the means; nothing is changed.
        """
        classes = self.means.shape[0]
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            bad = labels[(labels < 0) | (labels >= classes)].unique()[:5].tolist()
            raise ValueError(f"tracked labels must be classes 0..{classes - 1} of these {classes} means; got {bad}: "
                             "the means were not updated")
        center = None
        if self.center is not None and raw is not None:
            raw = raw.detach().to(self.means.dtype)
            raw_sum, raw_count = raw.sum(0, keepdim=True), torch.tensor([raw.shape[0]], device=raw.device)  # (1, d)
            if self.reducer is not None:
                raw_sum, raw_count = self.reducer(raw_sum, raw_count)
            center = self._moved_center(raw_sum[0], int(raw_count[0]))
            embeddings = F.normalize(raw - center, dim=-1, eps=1e-12)
        sums = torch.zeros_like(self.means).index_add_(0, labels, embeddings.detach().to(self.means.dtype))
        counts = torch.bincount(labels, minlength=classes)[:classes]  # (C,)
        if self.reducer is not None:
            sums, counts = self.reducer(sums, counts)
        if not (torch.isfinite(sums).all() and (center is None or torch.isfinite(center).all())):
            raise FloatingPointError("non-finite embeddings reached the tracked class means; the update "
                                     "was refused (check the inputs for NaN/Inf pixels)")
        self.stat_sums += sums
        self.stat_counts += counts
        self.stat_raw_sum += raw_sum[0] if center is not None else sums.sum(0)
        if center is not None:
            self.center.copy_(center)
        if self.mode == "manual":
            self.embeddings_sums += sums
        elif self.steps is not None and int(self.steps) < self.warmup:
            self.steps += 1  # warm-up: the means stay at their start
        else:
            self._step(sums, counts)

    def _moved_center(self, raw_sum: Tensor, count: int) -> Tensor:
        """The center after a batch of ``count`` raw embeddings summing to ``raw_sum (d,)``: their mean
        at the first batch (a center of zero norm has not been set), ``m c + (1 - m) mean`` after."""
        if count == 0:
            return self.center.clone()
        mean = raw_sum / count
        if float(self.center.norm()) == 0.0:
            return mean
        return self.center_momentum * self.center + (1 - self.center_momentum) * mean

    def _step(self, sums: Tensor, counts: Tensor) -> None:
        """One ``'batch'`` update of the classes present in ``counts (C,)`` towards ``sums (C, d)``."""
        present = counts > 0
        lr: float | Tensor = self.lr
        if self.batch_counts is not None:
            self.batch_counts += present  # from the reduced counts: every process agrees
            lr = self.batch_counts.clamp(min=1).to(self.means.dtype).reciprocal().clamp(min=self.lr)[:, None]  # (C, 1)
        elif self.seen_counts is not None:
            self.seen_counts += counts
            share = counts.to(self.means.dtype) / self.seen_counts.clamp(min=1).to(self.means.dtype)
            lr = share.clamp(min=self.lr)[:, None]  # (C, 1)
        step = (1 - lr) * self.means + lr * F.normalize(sums, dim=1)
        norms = step.norm(dim=1, keepdim=True)
        keep = (~present[:, None]) | (norms < 1e-12)
        self.means.copy_(torch.where(keep, self.means, step / norms.clamp(min=1e-12)))

    @torch.no_grad()
    def initialize(self, kind: str = MeansConfig.init, *, generator: torch.Generator | None = None) -> None:
        """Set the means before any tracking.

        ``'zeros'`` (the original behaviour): no class has a mean until it is first tracked.
        ``'orthogonal'``: random orthonormal directions (random unit vectors when ``C > d``).
        ``'random'``: independent random unit vectors. Spread-out starting means break the
        symmetry of a freshly initialised encoder, whose embeddings all point the same way:
        means copied from them would start (and tend to stay) nearly parallel.
        """
        if kind not in MEANS_INITS:
            raise ValueError(f"unknown means init {kind!r}; options: {', '.join(MEANS_INITS)}")
        classes, d = self.means.shape
        for counter in (self.batch_counts, self.seen_counts, self.center, self.steps):
            if counter is not None:
                counter.zero_()
        if kind == "zeros":
            self.means.zero_()
            return
        draws = torch.randn(d, classes, generator=generator, dtype=torch.float64)
        if kind == "orthogonal" and classes <= d:
            draws = torch.linalg.qr(draws).Q  # (d, C) orthonormal columns
        self.means.copy_(F.normalize(draws.t(), dim=1).to(self.means.dtype))

    @torch.no_grad()
    def grow(self, k: int) -> None:
        """Add ``k`` classes after the existing ones, with zero means (not initialized: a class
        scores 0 until it is imprinted or tracked) and zero sums and counts; existing rows are unchanged."""
        for name in ("means", "embeddings_sums", "stat_sums", "stat_counts", "batch_counts", "seen_counts"):
            old = getattr(self, name)
            if old is None:
                continue
            setattr(self, name, torch.cat([old, old.new_zeros((k, *old.shape[1:]))]))  # (C + k, ...)

    @torch.no_grad()
    def set_mean(self, label: int, embeddings: Tensor) -> None:
        """Set the mean of class ``label`` to the normalized sum of ``embeddings (N, d)`` (imprinting).

        With ``lr_schedule='count'`` the imprinted mean counts as one tracked batch, so the next
        batch of the class averages with it (step 1/2) instead of replacing it.

        Raises:
            ValueError: no embedding, a wrong shape, or a sum that is zero or not finite.
        """
        classes, d = self.means.shape
        if not 0 <= int(label) < classes:
            raise ValueError(f"label {label} is not a class of these means (0..{classes - 1})")
        if embeddings.dim() != 2 or embeddings.shape[1] != d or embeddings.shape[0] == 0:
            raise ValueError(f"imprinting needs embeddings (N >= 1, {d}), got {tuple(embeddings.shape)}")
        total = embeddings.detach().to(self.means.dtype).sum(dim=0)  # (d,)
        norm = total.norm()
        if not torch.isfinite(norm) or norm <= 1e-12:
            raise ValueError(f"the embeddings of class {label} sum to a zero or non-finite vector: no direction")
        self.means[int(label)] = total / norm
        if self.batch_counts is not None:
            self.batch_counts[int(label)] = 1

    @torch.no_grad()
    def imprint_sums(self, sums: Tensor, counts: Tensor, classes: Tensor | None = None) -> Tensor:
        """Set the mean of every class with ``counts > 0`` (and in ``classes (C,) bool``, default all)
        to its normalized sum in ``sums (C, d)`` (re-imprinting from a pass over a dataset).

        Returns:
            ``(C,)`` bool: the classes whose mean was set; the others keep theirs.
        """
        if sums.shape != self.means.shape or counts.shape != self.means.shape[:1]:
            raise ValueError(f"imprinting needs sums {tuple(self.means.shape)} and counts ({self.means.shape[0]},), "
                             f"got {tuple(sums.shape)} and {tuple(counts.shape)}")
        sums = sums.to(self.means)
        if not torch.isfinite(sums).all():
            raise FloatingPointError("non-finite embedding sums: the means were not re-imprinted")
        norms = sums.norm(dim=1)
        chosen = (counts.to(self.means.device) > 0) & (norms > 1e-12)
        if classes is not None:
            chosen &= classes.to(chosen.device)
        self.means.copy_(torch.where(chosen[:, None], sums / norms.clamp(min=1e-12)[:, None], self.means))
        return chosen

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Clear the diagnostic resultants ``stat_sums`` / ``stat_counts`` / ``stat_raw_sum``."""
        self.stat_sums.zero_()
        self.stat_counts.zero_()
        self.stat_raw_sum.zero_()

    @torch.no_grad()
    def snapshot(self) -> tuple[Tensor, Tensor]:
        """``(means (C, d), κ̂ (C,))`` on the CPU: the means now and the vMF concentration of the
        embeddings tracked since :meth:`reset_statistics` (:func:`concentration_from_sums`)."""
        kappa = concentration_from_sums(self.stat_sums.cpu(), self.stat_counts.cpu())
        return self.means.detach().cpu().clone(), torch.as_tensor(kappa)

    @torch.no_grad()
    def update_means(self) -> None:
        """``'manual'`` mode: move the means to the normalized accumulated sums and reset them."""
        if self.mode != "manual":
            return
        norms = self.embeddings_sums.norm(dim=1, keepdim=True)
        seen = norms > 0
        self.means.copy_(torch.where(seen, self.embeddings_sums / norms.clamp(min=1e-12), self.means))
        self.embeddings_sums.zero_()


def concentration_from_sums(sums: Any, counts: Any) -> np.ndarray:
    """κ̂ per class from accumulated resultants, as tracked during training (numpy, float64).

    Args:
        sums: (C, d) per-class sums of unit embeddings (tensor or array).
        counts: (C,) number of embeddings summed per class.

    Returns:
        (C,) κ̂ (:func:`kappa_from_resultant`); NaN for classes with fewer than 2 samples.
    """
    sums = np.asarray(sums.detach().cpu().numpy() if hasattr(sums, "detach") else sums, dtype=np.float64)
    counts = np.asarray(counts.detach().cpu().numpy() if hasattr(counts, "detach") else counts,
                        dtype=np.float64).astype(np.int64)
    r_bar = np.full(len(counts), np.nan)
    np.divide(np.linalg.norm(sums, axis=1), counts, out=r_bar, where=counts > 0)
    return kappa_from_resultant(np.minimum(r_bar, 1.0), counts, sums.shape[1])


def kappa_from_resultant(r_bar: np.ndarray, counts: np.ndarray, d: int) -> np.ndarray:
    """The vMF concentration estimate κ̂ ≈ R̄(d − R̄²)/(1 − R̄²) (Banerjee et al., JMLR 2005).

    R̄ is clipped to ``1 − 1e-7`` so identical vectors give a large finite κ̂; classes with fewer
    than 2 samples get NaN.
    """
    r = np.clip(r_bar, 0.0, _MAX_RESULTANT)
    kappa = r * (d - r**2) / (1.0 - r**2)
    kappa[counts < 2] = np.nan
    return kappa


def means_diagnostics(means: Tensor, start: Tensor, buckets: Sequence[str] | None = None) -> dict[str, float]:
    """How far tracked means moved and how spread out they are, for the per-epoch metrics.

    Args:
        means: ``(C, d)`` class means now (zero rows: classes without a mean, left out).
        start: ``(C, d)`` the means before training.
        buckets: label -> frequency bucket (``'r'``, ``'c'``, ``'f'``), or None.

    Returns:
        ``means_min_angle`` / ``means_median_angle``: the smallest and the median angle, in degrees,
        between two class means (small: the means collapse together); ``means_cos_to_start``: the
        mean cosine of a class mean to its start (1: it never moved), and per bucket
        ``means_cos_to_start_r`` etc.
    """
    means, start = means.detach().double(), start.detach().double()
    present = means.norm(dim=1) > 0
    directions = F.normalize(means[present], dim=1)
    row: dict[str, float] = {}
    if len(directions) >= 2:
        gram = directions @ directions.t()  # (K, K)
        upper = torch.triu_indices(len(directions), len(directions), offset=1)
        cosines = gram[upper[0], upper[1]].clamp(-1.0, 1.0)
        row["means_min_angle"] = float(torch.rad2deg(torch.arccos(cosines.max())))
        row["means_median_angle"] = float(torch.rad2deg(torch.arccos(cosines.median())))
    moved = (F.normalize(means, dim=1) * F.normalize(start, dim=1)).sum(1)  # (C,)
    both = present & (start.norm(dim=1) > 0)
    if both.any():
        row["means_cos_to_start"] = float(moved[both].mean())
    if buckets is not None:
        labels = np.asarray(list(buckets))
        for bucket in sorted(set(labels.tolist())):
            chosen = both & torch.from_numpy(labels == bucket)
            if chosen.any():
                row[f"means_cos_to_start_{bucket}"] = float(moved[chosen].mean())
    return row


def mean_embedding_norm(raw_sum: Tensor, count: int) -> float | None:
    """The length of the mean of ``count`` unit embeddings summing to ``raw_sum (d,)``: 1 when they
    all point one way (means averaged from them collapse), near 0 when they spread out; None
    without embeddings."""
    return float(raw_sum.double().norm() / count) if count > 0 else None
