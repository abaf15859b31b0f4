"""The focal prior of a cosine classifier: start values that put a cosine head's initial loss near
the sigmoid head's, whatever the vocabulary and the embedding size.

**Derivation.** The sigmoid head starts every (anchor, class) pair at ``p = π`` (the prior,
:func:`dlde.model.heads.prior_logit`), so its initial focal loss is ``FL(π, 1)`` per positive pair
and ``FL(π, 0)`` per background pair. A cosine head scores ``p = f(s)``, ``s`` the cosine between
an anchor's unit embedding ``e`` and a class direction ``m``. At the start ``m`` is uniform on the
unit sphere of ``R^d`` and independent of ``e`` (random prototypes, the means' ``'random'`` start,
and the ``'orthogonal'`` one, whose rows of a random orthonormal frame are uniform one by one). So
*whatever* the embeddings of the fresh encoder look like (they are far from isotropic: on random
64x64 images their mean resultant is about 0.2-0.3, where isotropic ones would give ~0.02), ``s``
has the density of one coordinate of a uniform unit vector:

    q_d(s) ∝ (1 - s²)^((d - 3) / 2)  on [-1, 1],    E[s] = 0,  E[s²] = 1 / d,

about ``N(0, 1/d)`` for large ``d``. The expected focal loss of a pair is
``E_pos = ∫ FL(f(s), 1) q_d(s) ds`` and ``E_bg = ∫ FL(f(s), 0) q_d(s) ds``, and the head's expected
initial loss is ``ρ_pos n_pos FL(π, 1) + ρ_bg n_bg FL(π, 0)`` with ``ρ = E / FL(π)``: at most
``max(ρ_pos, ρ_bg)`` times the sigmoid head's, whatever the share of background pairs. That share
grows with the vocabulary ``C`` and the anchors per object; ``C`` enters nothing else, since every
class starts alike.

Matching ``E[p] = π`` is not enough. A logit of slope ``a`` in ``s`` spreads by about
``a / sqrt(d)``, and the background loss grows like ``p³`` (``FL(p, 0) ≈ (1 - α) p³`` for small
``p``), so with a log-normal ``p``, ``E[p³] ≈ exp(3 a² / d) E[p]³``: at ``d = 32`` and the
directional head's smallest usable slope (~6) that is 15 times the sigmoid head's background loss,
and it is what swamped the first steps at 1,203 classes. A start is therefore *balanced*: one free
parameter of ``f`` is solved (:func:`balance`, a bisection) for ``ρ_pos = ρ_bg = ρ``. The
remaining ``ρ`` grows with the spread ``a / sqrt(d)``, about 1.08 / 1.17 / 1.3 / 1.46 at spreads
0.5 / 0.75 / 1 / 1.25 for a plain logistic; each head picks its slope (see
:meth:`dlde.DirectionalClassification.prior_start` and
:meth:`dlde.CosinePrototypeClassification.prior_start`).

The expectations are computed by quadrature in the angle ``θ = arccos s`` (density
``∝ sin^(d-2) θ``, midpoint rule), at the focal loss's default ``α``, ``γ``
(:func:`dlde.model.losses.focal_loss`). On a fresh detector (ResNet-18, 64x64 random images,
1,203 classes, 32-d) the mean focal loss over all (anchor, class) pairs, scored as positives and
as background, came within 1 % and 10 % of the quadrature's; the loss of a batch varies more
(its positives belong to a few classes, each at one random cosine), e.g. 1.41-1.59x the sigmoid
head's over four draws of the DLDENet head where the quadrature says 1.49x.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .losses import focal_loss

#: Nodes of :func:`cosine_quadrature`.
QUADRATURE_POINTS = 2048
#: Bisection steps of :func:`balance` (the interval shrinks by 2^-60).
BISECTION_STEPS = 60
#: Points of the search of :func:`balance` where no balance exists.
FALLBACK_POINTS = 101


def cosine_quadrature(d: int, points: int = QUADRATURE_POINTS) -> tuple[Tensor, Tensor]:
    """Nodes and weights for expectations over the cosine ``s`` between a fixed unit vector and a
    uniformly random one in ``R^d`` (``d >= 2``).

    Returns:
        ``(s (points,), weights (points,))`` in float64, the weights summing to 1: the midpoint
        rule in ``θ = arccos s`` with density ``∝ sin^(d-2) θ``.
    """
    if int(d) < 2:
        raise ValueError(f"the cosine of unit vectors needs d >= 2, got {d}")
    theta = (torch.arange(points, dtype=torch.float64) + 0.5) * (math.pi / points)
    weights = torch.softmax((int(d) - 2) * torch.log(torch.sin(theta)), dim=0)
    return torch.cos(theta), weights


def excess_losses(probabilities: Tensor, weights: Tensor, prior: float) -> tuple[Tensor, Tensor]:
    """``(ρ_pos, ρ_bg)``: the expected focal loss of a positive and of a background pair scored
    ``probabilities (..., points)`` at the quadrature ``weights (points,)``, over the sigmoid
    head's ``FL(prior, 1)`` and ``FL(prior, 0)``; shapes ``(...)``."""
    ones, zeros = torch.ones_like(probabilities), torch.zeros_like(probabilities)
    start = torch.full((2,), float(prior), dtype=torch.float64)
    reference = focal_loss(start, torch.tensor([1.0, 0.0], dtype=torch.float64))  # (2,)
    positive = (focal_loss(probabilities, ones).double() * weights).sum(-1) / reference[0]
    background = (focal_loss(probabilities, zeros).double() * weights).sum(-1) / reference[1]
    return positive, background


def balance(probabilities_of: Callable[[Tensor, float], Tensor], d: int, prior: float, low: float, high: float,
            *, steps: int = BISECTION_STEPS) -> tuple[float, float]:
    """The parameter ``x`` in ``[low, high]`` of a start whose positive and background pairs have
    the same excess loss ``ρ_pos = ρ_bg`` (see the module's derivation), found by bisection.

    Args:
        probabilities_of: ``(s (points,), x) -> p (points,)``, the head's initial score of a pair
            at cosine ``s`` when its free start parameter is ``x``; ``ρ_pos / ρ_bg`` must be
            monotone in ``x`` on ``[low, high]``.
        d: embedding size.
        prior: the sigmoid head's starting probability.
        low, high: the search interval.

    Returns:
        ``(x, ρ)`` with ``ρ = max(ρ_pos, ρ_bg)`` at ``x``. Where the interval holds no balance, the
        least ``ρ`` of :data:`FALLBACK_POINTS` evenly spaced ``x``.
    """
    s, weights = cosine_quadrature(d)

    def log_ratio(x: float) -> float:
        positive, background = excess_losses(probabilities_of(s, x), weights, prior)
        return float(torch.log(positive) - torch.log(background))

    def excess(x: float) -> float:
        return float(torch.stack(excess_losses(probabilities_of(s, x), weights, prior)).max())

    sign_low, sign_high = math.copysign(1.0, log_ratio(low)), math.copysign(1.0, log_ratio(high))
    if sign_low == sign_high:
        best = min(torch.linspace(low, high, FALLBACK_POINTS, dtype=torch.float64).tolist(), key=excess)
        return best, excess(best)
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if math.copysign(1.0, log_ratio(middle)) == sign_low:
            low = middle
        else:
            high = middle
    x = 0.5 * (low + high)
    return x, excess(x)


#: Values of the cosine heads' ``classifier_init`` option: ``'fixed'`` (the head's own start
#: values, the default) or ``'prior'`` (derived here from the prior and ``d``).
CLASSIFIER_INITS = ("fixed", "prior")


def check_classifier_init(value: str) -> str:
    """``value`` if it is one of :data:`CLASSIFIER_INITS` (a one-line error otherwise)."""
    if value not in CLASSIFIER_INITS:
        raise ValueError(f"unknown classifier_init {value!r}; options: {', '.join(CLASSIFIER_INITS)}")
    return value
