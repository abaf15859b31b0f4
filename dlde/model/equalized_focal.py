"""The state of the equalized focal loss (EFL; Li et al., CVPR 2022, ModelTC/EOD): per class, the
accumulated gradient magnitudes of its positive and of its negative pairs, and the focusing factor
and weight they give the class in the shared focal loss (:func:`dlde.model.losses.focal_loss_sum`)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

#: Default scale ``s`` of the focusing factor ``γ_j = γ_b + s (1 - g_j)`` (the paper's value).
EFL_SCALE = 8.0


class EqualizedFocal(nn.Module):
    """Per-class focusing of the focal loss from the balance of each class's gradients.

    With ``g_j`` the accumulated ratio of positive to negative gradient magnitude of class ``j``,
    clamped to ``[0, 1]``, class ``j`` is scored with the focal loss of focusing factor
    ``γ_j = γ_b + s (1 - g_j)``, every loss term of the class weighted by ``γ_j / γ_b``. A balanced
    class (``g_j = 1``, also every class of a fresh state) gets the plain focal loss; a rare class,
    whose negatives outweigh its few positives (``g_j`` near 0), gets ``γ_b + s``: its many easy
    negatives count less, and the class's loss more.

    The gradient magnitude of a pair is ``|dL/dp| p (1 - p)``, with ``p`` the head's probability:
    the gradient with respect to the logit of a sigmoid of that probability, for every head alike
    (DLDENet's ``p`` is a ratio of sigmoids). ``L`` is the loss node's own sum, before the
    positives normalizer and any loss scale of mixed precision, so the ratio of a step does not
    depend on them. The loss's backward adds each step's per-class sums (:meth:`accumulate`); the
    forward reads ``γ`` from the sums of the steps before (:meth:`focusing`).

    Like the tracked means, the state lives in buffers, saved with the model so a resumed run
    continues exactly: ``positive_gradients (C,)`` and ``negative_gradients (C,)``, float64.

    Args:
        classes: number of classes ``C``.
        gamma: the base focusing factor ``γ_b`` (the detector's ``focal_gamma``), positive.
        scale: ``s``, at least 0 (0 is the plain focal loss).
    """

    def __init__(self, classes: int, *, gamma: float, scale: float = EFL_SCALE):
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"the equalized focal loss weights a class by gamma_j / gamma_b and needs "
                             f"focal_gamma > 0, got {gamma}")
        if not 0 <= scale < float("inf"):
            raise ValueError(f"efl_scale must be a finite number >= 0, got {scale}")
        self.gamma = float(gamma)
        self.scale = float(scale)
        self.register_buffer("positive_gradients", torch.zeros(classes, dtype=torch.float64))
        self.register_buffer("negative_gradients", torch.zeros(classes, dtype=torch.float64))
        #: ``(2, C) -> (2, C)`` applied to a step's sums (positive, negative) before they are added,
        #: e.g. an all-reduce over processes (:func:`dlde.train.distributed.attach_equalized_focal_reducer`),
        #: so every process holds the same state; None in a single process.
        self.reducer: Callable[[Tensor], Tensor] | None = None

    def balance(self) -> Tensor:
        """``(C,)`` float64 ``g_j``: positive over negative gradient magnitude, clamped to ``[0, 1]``;
        1 for a class without any negative gradient yet (a fresh state is balanced)."""
        negative = self.negative_gradients
        ratio = self.positive_gradients / negative.clamp(min=torch.finfo(negative.dtype).tiny)
        return torch.where(negative > 0, ratio.clamp(0.0, 1.0), torch.ones_like(ratio))

    def focusing(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(γ (C,), weight (C,))`` in ``dtype``: ``γ_j = γ_b + s (1 - g_j)`` and ``γ_j / γ_b``."""
        gamma = self.gamma + self.scale * (1 - self.balance())
        return gamma.to(dtype), (gamma / self.gamma).to(dtype)

    @torch.no_grad()
    def accumulate(self, positive: Tensor, negative: Tensor) -> None:
        """Add a step's per-class gradient magnitudes ``positive (C,)`` and ``negative (C,)`` (through
        :attr:`reducer`, when set).

        Raises:
            FloatingPointError: the sums are not finite; nothing is changed.
        """
        sums = torch.stack([positive, negative]).to(self.positive_gradients)  # (2, C)
        if self.reducer is not None:
            sums = self.reducer(sums)
        if not torch.isfinite(sums).all():
            raise FloatingPointError("non-finite gradient magnitudes reached the equalized focal loss's "
                                     "statistics; they were refused")
        self.positive_gradients += sums[0]
        self.negative_gradients += sums[1]

    @torch.no_grad()
    def grow(self, k: int) -> None:
        """Add ``k`` classes, balanced (no gradient seen: the plain focal loss)."""
        for name in ("positive_gradients", "negative_gradients"):
            old = getattr(self, name)
            setattr(self, name, torch.cat([old, old.new_zeros(k)]))

    def extra_repr(self) -> str:
        return f"classes={self.positive_gradients.numel()}, gamma={self.gamma}, scale={self.scale}"
