"""Tracked class means: one unit direction per class, updated from matched embeddings, never by gradient."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEANS_UPDATES = ("batch", "manual")
MEANS_INITS = ("zeros", "orthogonal", "random")
MEANS_LR_SCHEDULES = ("constant", "count")
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
    * ``'manual'``: :meth:`update` adds the per-class sums to ``embeddings_sums``;
      :meth:`update_means` sets every class with a non-zero sum to its normalized sum, keeps the
      previous mean of the others and resets the sums.

    Args:
        classes: number of classes.
        embedding_size: dimension ``d`` of the embeddings.
        mode: ``'batch'`` or ``'manual'``.
        lr: step of the ``'batch'`` update, in (0, 1].
        lr_schedule: ``'constant'`` (every step is ``lr``) or ``'count'`` (``max(lr, 1 / n_c)``).

    The ``(C,)`` long buffer ``batch_counts`` exists only with ``lr_schedule='count'`` (it is None
    otherwise): the state of a ``'constant'`` tracker, and so the keys of every checkpoint written
    without the option, are those of the original.
    """

    def __init__(self, classes: int, embedding_size: int, *, mode: str = MeansConfig.update,
                 lr: float = MeansConfig.lr, lr_schedule: str = MeansConfig.lr_schedule):
        super().__init__()
        if mode not in MEANS_UPDATES:
            raise ValueError(f"unsupported means update {mode!r}; options: {', '.join(MEANS_UPDATES)}")
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"means_lr must be in (0, 1], got {lr}")
        if lr_schedule not in MEANS_LR_SCHEDULES:
            raise ValueError(f"unknown means lr schedule {lr_schedule!r}; options: {', '.join(MEANS_LR_SCHEDULES)}")
        if lr_schedule == "count" and mode != "batch":
            raise ValueError(f"means_lr_schedule 'count' sets the step of the 'batch' update; the {mode!r} update "
                             "averages what it accumulated already")
        self.mode = mode
        self.lr = float(lr)
        self.lr_schedule = lr_schedule
        self.register_buffer("means", torch.zeros(classes, embedding_size))
        self.register_buffer("embeddings_sums", torch.zeros(classes, embedding_size))
        # Tracked batches per class, saved with the model (only when the schedule needs them).
        self.register_buffer("batch_counts", torch.zeros(classes, dtype=torch.long) if lr_schedule == "count" else None)
        # Diagnostics (not saved): resultant and count of every tracked embedding since the last
        # reset_statistics(), from which the trainer estimates each class's vMF concentration.
        self.register_buffer("stat_sums", torch.zeros(classes, embedding_size), persistent=False)
        self.register_buffer("stat_counts", torch.zeros(classes, dtype=torch.long), persistent=False)
        #: ``(sums (C, d), counts (C,)) -> (sums, counts)`` applied before every update, e.g. an
        #: all-reduce over processes (:mod:`dlde.train.distributed`); None in a single process.
        self.reducer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    @property
    def initialized(self) -> Tensor:
        """``(C,)`` bool: classes whose mean has been set."""
        return self.means.norm(dim=1) > 0

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Track ``embeddings (N, d)`` of anchors matched to ``labels (N,)`` in ``[0, C)``.

        With a :attr:`reducer` set (distributed training), the per-class sums and counts of the
        batch are first reduced over all processes, so every process applies the same update
        from the global batch.

        Raises:
            FloatingPointError: a non-finite embedding would reach the means; nothing is changed.
        """
        classes = self.means.shape[0]
        labels = labels.long()
        sums = torch.zeros_like(self.means).index_add_(0, labels, embeddings.detach().to(self.means.dtype))
        counts = torch.bincount(labels, minlength=classes)[:classes]  # (C,)
        if self.reducer is not None:
            sums, counts = self.reducer(sums, counts)
        if not torch.isfinite(sums).all():
            raise FloatingPointError("non-finite embeddings reached the tracked class means; the update "
                                     "was refused (check the inputs for NaN/Inf pixels)")
        self.stat_sums += sums
        self.stat_counts += counts
        if self.mode == "manual":
            self.embeddings_sums += sums
            return
        present = counts > 0
        lr: float | Tensor = self.lr
        if self.batch_counts is not None:
            self.batch_counts += present  # from the reduced counts: every process agrees
            lr = self.batch_counts.clamp(min=1).to(self.means.dtype).reciprocal().clamp(min=self.lr)[:, None]  # (C, 1)
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
        if self.batch_counts is not None:
            self.batch_counts.zero_()
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
        for name in ("means", "embeddings_sums", "stat_sums", "stat_counts", "batch_counts"):
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
    def reset_statistics(self) -> None:
        """Clear the diagnostic resultants ``stat_sums`` / ``stat_counts``."""
        self.stat_sums.zero_()
        self.stat_counts.zero_()

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
