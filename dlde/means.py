"""Tracked class means: one unit direction per class, updated from matched embeddings, never by gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MEANS_UPDATES = ("batch", "manual")
MEANS_INITS = ("zeros", "orthogonal", "random")


class TrackedMeans(nn.Module):
    """Running von Mises-Fisher mean directions of ``classes`` classes in ``embedding_size`` dims.

    Like BatchNorm's running statistics the state lives in buffers and changes only under
    ``torch.no_grad()``:

    * ``'batch'``: each call to :meth:`update` is one step per class present in the batch:
      ``v = normalize(sum of the class's embeddings)``, then
      ``mean <- normalize((1 - lr) * mean + lr * v)``. A class whose mean is still zero takes
      ``v`` directly; absent classes keep their mean.
    * ``'manual'``: :meth:`update` adds the per-class sums to ``embeddings_sums``;
      :meth:`update_means` sets every class with a non-zero sum to its normalized sum, keeps the
      previous mean of the others and resets the sums.

    Args:
        classes: number of classes.
        embedding_size: dimension ``d`` of the embeddings.
        mode: ``'batch'`` or ``'manual'``.
        lr: step of the ``'batch'`` update, in (0, 1].
    """

    def __init__(self, classes: int, embedding_size: int, *, mode: str = "batch", lr: float = 0.1):
        super().__init__()
        if mode not in MEANS_UPDATES:
            raise ValueError(f"unsupported means update {mode!r}; options: {', '.join(MEANS_UPDATES)}")
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"means_lr must be in (0, 1], got {lr}")
        self.mode = mode
        self.lr = float(lr)
        self.register_buffer("means", torch.zeros(classes, embedding_size))
        self.register_buffer("embeddings_sums", torch.zeros(classes, embedding_size))
        # Diagnostics (not saved): resultant and count of every tracked embedding since the last
        # reset_statistics(), from which the trainer estimates each class's vMF concentration.
        self.register_buffer("stat_sums", torch.zeros(classes, embedding_size), persistent=False)
        self.register_buffer("stat_counts", torch.zeros(classes, dtype=torch.long), persistent=False)

    @property
    def initialized(self) -> Tensor:
        """``(C,)`` bool: classes whose mean has been set."""
        return self.means.norm(dim=1) > 0

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Track ``embeddings (N, d)`` of anchors matched to ``labels (N,)`` in ``[0, C)``."""
        classes = self.means.shape[0]
        labels = labels.long()
        sums = torch.zeros_like(self.means).index_add_(0, labels, embeddings.detach().to(self.means.dtype))
        counts = torch.bincount(labels, minlength=classes)[:classes]  # (C,)
        self.stat_sums += sums
        self.stat_counts += counts
        if self.mode == "manual":
            self.embeddings_sums += sums
            return
        present = counts > 0
        step = (1 - self.lr) * self.means + self.lr * F.normalize(sums, dim=1)
        norms = step.norm(dim=1, keepdim=True)
        keep = (~present[:, None]) | (norms < 1e-12)
        self.means.copy_(torch.where(keep, self.means, step / norms.clamp(min=1e-12)))

    @torch.no_grad()
    def initialize(self, kind: str = "zeros", *, generator: torch.Generator | None = None) -> None:
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
        if kind == "zeros":
            self.means.zero_()
            return
        draws = torch.randn(d, classes, generator=generator, dtype=torch.float64)
        if kind == "orthogonal" and classes <= d:
            draws = torch.linalg.qr(draws).Q  # (d, C) orthonormal columns
        self.means.copy_(F.normalize(draws.t(), dim=1).to(self.means.dtype))

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Clear the diagnostic resultants ``stat_sums`` / ``stat_counts``."""
        self.stat_sums.zero_()
        self.stat_counts.zero_()

    @torch.no_grad()
    def update_means(self) -> None:
        """``'manual'`` mode: move the means to the normalized accumulated sums and reset them."""
        if self.mode != "manual":
            return
        norms = self.embeddings_sums.norm(dim=1, keepdim=True)
        seen = norms > 0
        self.means.copy_(torch.where(seen, self.embeddings_sums / norms.clamp(min=1e-12), self.means))
        self.embeddings_sums.zero_()
