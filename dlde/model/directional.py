"""The directional classification head of DLDENet."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .anchors import Assignment, assign_batch, check_thresholds
from .heads import ClassificationHead, HeadTower, SigmoidClassification, check_growth
from .losses import row_tiles
from .means import MeansConfig, TrackedMeans
from .priors import CLASSIFIER_INITS, balance, check_classifier_init

#: Smallest ``|w|`` of :meth:`DirectionalClassification.classify` (see there).
MIN_WEIGHT = 0.1
#: ``b`` of ``classifier_init='prior'``: just inside the clamp at -1 (:meth:`DirectionalClassification.prior_start`).
PRIOR_BIAS = -0.95
#: Largest ``w`` that :meth:`DirectionalClassification.prior_start` considers.
MAX_PRIOR_WEIGHT = 100.0
#: How the parameter ``weight`` gives ``w`` (:meth:`DirectionalClassification.scales`): ``'linear'``
#: (``w = |weight|``, the original) or ``'log'`` (``w = exp(weight)``: an optimizer step moves ``w``
#: by a share of itself, so ``w`` can learn its scale in a short schedule).
WEIGHT_PARAMS = ("linear", "log")


def cosine_probability(cosines: Tensor, weight: float | Tensor, bias: float | Tensor) -> Tensor:
    """``p = sigmoid(|w| (s + b)) / sigmoid(|w| (1 + b))`` of cosines ``s`` (any shape), with the
    bounds of :meth:`DirectionalClassification.classify` (``|w| >= MIN_WEIGHT``, ``b`` in [-1, 1]):
    the head's score of one class as a function of the cosine alone (1 at ``s = 1``)."""
    weight = torch.as_tensor(weight, dtype=cosines.dtype).abs().clamp(min=MIN_WEIGHT)
    bias = torch.as_tensor(bias, dtype=cosines.dtype).clamp(-1.0, 1.0)
    return torch.sigmoid(weight * (cosines + bias)) / torch.sigmoid(weight * (1 + bias))


class DirectionalClassification(ClassificationHead):
    """Scores anchors by the cosine between a unit embedding and tracked class means.

    Each anchor of each pyramid level gets an embedding on the unit sphere (:meth:`encode`).
    Every class ``c`` keeps a mean direction ``mean_c`` (:class:`dlde.model.means.TrackedMeans`),
    moved towards the embeddings of the anchors matched to ``c`` (:meth:`track`), never by
    gradient. The probability of class ``c`` (:meth:`classify`) is the scaled sigmoid

        p_c = sigmoid(|w_c| (s_c + b_c)) / sigmoid(|w_c| (1 + b_c)),   s_c = cos(embedding, mean_c),

    which is 1 when the embedding points exactly along the mean. The weight acts through its
    magnitude so ``p_c`` stays in [0, 1] whatever sign training gives it; a class whose mean is
    still zero (never tracked) scores 0.

    Args:
        in_channels: channels of each pyramid level.
        embedding_size: dimension ``d`` of the embeddings.
        anchors: anchors per location.
        features: channels inside the encoder tower.
        classes: number of classes ``C``.
        assignation_thresholds: ``{'object': float, 'background': float}`` IoU thresholds used to
            pick the anchors whose embeddings are tracked (copied, never modified).
        means_update: ``'batch'`` (one update per batch) or ``'manual'`` (accumulate, then
            ``tracked_means.update_means()``).
        means_lr: step of the ``'batch'`` update.
        convs: hidden convolutions of the encoder tower.
        group_norm: GroupNorm in the encoder tower.
        allow_low_quality_matches: track each annotation's best anchor even below the threshold.
        init_weight: initial ``w`` (7 gives p(cos=0) ~ 0.03 with the initial bias).
        init_bias: initial ``b``.
        means_init: starting means, ``'zeros'`` (the original: a class has no mean until first
            tracked), ``'orthogonal'`` or ``'random'`` (see :meth:`dlde.model.means.TrackedMeans.initialize`).
        classifier_init: ``'fixed'`` (``w``, ``b`` start at ``init_weight``, ``init_bias``) or
            ``'prior'`` (derived from the sigmoid head's prior and ``d`` so that the initial focal
            loss stays near the sigmoid head's whatever the vocabulary: :meth:`prior_start`; then
            ``init_weight`` and ``init_bias`` must be left at their defaults). It assumes random
            starting means (``'orthogonal'`` or ``'random'``).
        means_lr_schedule: ``'constant'`` (every step ``means_lr``), ``'count'`` (class ``c``
            steps by ``max(means_lr, 1 / n_c)``, ``n_c`` its tracked batches) or ``'seen'``
            (``max(means_lr, n_batch / n_seen)``, the running mean of its embeddings floored at
            ``means_lr``); ``'batch'`` updates only: see :class:`dlde.model.means.TrackedMeans`.
        center_momentum: momentum of the running center of the matched embeddings, taken off
            every embedding before it is scored or tracked (0: none; DINO uses 0.9).
        means_warmup: tracked batches during which the means stay at their start.
        weight_param: ``'linear'`` (``w = |weight|``) or ``'log'`` (``w = exp(weight)``), see
            :data:`WEIGHT_PARAMS`.
        anchor_terms: each anchor also predicts a shift ``t`` and a scale ``u`` of its own (two more
            outputs of the encoder) and is scored by a plain sigmoid, as OWL-ViT scores boxes:
            ``p_c = sigmoid(|w_c| (elu(u) + 1) (s_c + b_c + t))``. This gives back the objectness a
            linear head reads from its feature's norm, which a unit embedding has lost.
    """

    name = "dlde"
    tracks_means = True

    @dataclass(frozen=True)
    class Options:
        """Defaults of this head (the trainer's flat fields of the same names take these).

        ``embedding_size`` 128 and the means defaults (:class:`dlde.model.means.MeansConfig`) differ
        from the original's 512 / lr 0.1 / 'zeros': those are values that train here.
        """

        embedding_size: int = 128
        means_update: str = MeansConfig.update
        means_lr: float = MeansConfig.lr
        means_init: str = MeansConfig.init
        init_weight: float = 7.0
        init_bias: float = -0.5
        classifier_init: str = CLASSIFIER_INITS[0]  # "fixed"
        means_lr_schedule: str = MeansConfig.lr_schedule
        center_momentum: float = MeansConfig.center_momentum
        means_warmup: int = MeansConfig.warmup
        weight_param: str = WEIGHT_PARAMS[0]  # "linear"
        anchor_terms: bool = False

    @classmethod
    def build(cls, in_channels: int, anchors: int, features: int, classes: int, *, convs: int = 4,
              group_norm: bool = False, assignation_thresholds: Mapping[str, float] | None = None,
              allow_low_quality_matches: bool = True, **options) -> "DirectionalClassification":
        options = cls.check_options(options)
        embedding_size = options.pop("embedding_size", cls.Options.embedding_size)
        return cls(in_channels, embedding_size, anchors, features, classes, assignation_thresholds, convs=convs,
                   group_norm=group_norm, allow_low_quality_matches=allow_low_quality_matches, **options)

    def __init__(self, in_channels: int, embedding_size: int, anchors: int, features: int, classes: int,
                 assignation_thresholds: Mapping[str, float] | None = None,
                 means_update: str = Options.means_update, means_lr: float = Options.means_lr, *,
                 convs: int = 4, group_norm: bool = False, allow_low_quality_matches: bool = True,
                 init_weight: float = Options.init_weight, init_bias: float = Options.init_bias,
                 means_init: str = Options.means_init, classifier_init: str = Options.classifier_init,
                 means_lr_schedule: str = Options.means_lr_schedule,
                 center_momentum: float = Options.center_momentum, means_warmup: int = Options.means_warmup,
                 weight_param: str = Options.weight_param, anchor_terms: bool = Options.anchor_terms):
        super().__init__()
        if weight_param not in WEIGHT_PARAMS:
            raise ValueError(f"weight_param must be one of {', '.join(WEIGHT_PARAMS)}, got {weight_param!r}")
        self.embedding_size = embedding_size
        self.classes = classes
        self.assignation_thresholds = check_thresholds(assignation_thresholds)
        self.allow_low_quality_matches = allow_low_quality_matches
        self.tracker = TrackedMeans(classes, embedding_size, mode=means_update, lr=means_lr,
                                    lr_schedule=means_lr_schedule, center_momentum=center_momentum,
                                    warmup=means_warmup)
        self.tracker.initialize(means_init)
        self.means_init = means_init
        self.init_weight, self.init_bias = float(init_weight), float(init_bias)
        self.classifier_init = check_classifier_init(classifier_init)
        if self.classifier_init == "fixed":
            self.start_weight, self.start_bias = self.init_weight, self.init_bias
        elif (self.init_weight, self.init_bias) != (self.Options.init_weight, self.Options.init_bias):
            raise ValueError("classifier_init='prior' derives w and b itself; leave init_weight and init_bias "
                             f"at their defaults ({self.Options.init_weight}, {self.Options.init_bias})")
        else:
            self.start_weight, self.start_bias = self.prior_start(embedding_size)
        self.weight_param = weight_param
        if weight_param == "log" and self.start_weight < MIN_WEIGHT:
            raise ValueError(f"weight_param='log' needs a starting w >= {MIN_WEIGHT}, got {self.start_weight}")
        start = math.log(self.start_weight) if weight_param == "log" else self.start_weight
        self.weight = nn.Parameter(torch.full((classes,), start))
        self.bias = nn.Parameter(torch.full((classes,), self.start_bias))
        self.anchor_terms = bool(anchor_terms)
        # (d + 2 outputs per anchor with anchor terms: the embedding, then the shift and the scale)
        self.encoder = HeadTower(in_channels, embedding_size + 2 * self.anchor_terms, anchors, features, convs=convs,
                                 group_norm=group_norm)

    def options(self) -> dict:
        return {"embedding_size": self.embedding_size, "means_update": self.tracker.mode,
                "means_lr": self.tracker.lr, "means_init": self.means_init,
                "init_weight": self.init_weight, "init_bias": self.init_bias,
                "classifier_init": self.classifier_init, "means_lr_schedule": self.tracker.lr_schedule,
                "center_momentum": self.tracker.center_momentum, "means_warmup": self.tracker.warmup,
                "weight_param": self.weight_param, "anchor_terms": self.anchor_terms}

    @staticmethod
    def prior_start(embedding_size: int, prior: float = SigmoidClassification.Options.prior) -> tuple[float, float]:
        """``(w, b)`` of ``classifier_init='prior'``: the balanced start (:mod:`dlde.model.priors`:
        the expected focal losses of a positive and of a background pair are the sigmoid head's at
        ``prior`` times one factor ``ρ``) with the least ``ρ`` the head's form allows in ``d``
        dimensions.

        With random means the logit ``w (s + b)`` spreads by ``w / sqrt(d)`` and ``ρ`` grows with
        the spread, so the best start has the smallest ``w``. The form bounds ``w`` below: ``p = 1``
        at cosine 1 whatever ``w``, ``b``, and ``p(0) = sigmoid(w b) / sigmoid(w (1 + b)) >=
        2 sigmoid(-w)`` for ``b >= -1``, so a start near the prior needs ``w`` of about
        ``log(1 / prior)`` or more, and the smaller ``w``, the lower ``b`` must be. Hence ``b`` is
        set just inside the clamp (``PRIOR_BIAS`` = -0.95; at -1 the clamp gives it no gradient)
        and ``w`` is solved for the balance. At prior 0.01 (``d``: ``w``, ``ρ``): 16: 13.0, 2.5;
        32: 7.64, 1.49; 64: 6.29, 1.19; 128: 5.81, 1.08; 256: 5.61, 1.04; 512: 5.52, 1.02. With
        ``b = -1`` itself the least ``ρ`` at 32 dimensions would be 1.42: below about 64 dimensions
        no ``(w, b)`` of this head starts within 1.2x of the sigmoid head's loss, and below 16 none
        balances (``w`` is then the one of least ``ρ``: 61 and 37 at 8 dimensions). The original
        ``w = 7``, ``b = -0.5`` gives ``E[p]`` 0.055 / 0.036 at 32 / 128 dimensions, a positive
        loss 0.73 times the sigmoid head's and a background loss 2,500 / 130 times.

        Returns:
            ``(w, b)`` as floats (deterministic: a quadrature and a bisection, no random draw).
        """
        def probabilities(s: Tensor, weight: float) -> Tensor:
            return cosine_probability(s, weight, PRIOR_BIAS)

        weight, _ = balance(probabilities, embedding_size, prior, MIN_WEIGHT, MAX_PRIOR_WEIGHT)
        return weight, PRIOR_BIAS

    def class_directions(self) -> Tensor:
        return F.normalize(self.tracker.means, dim=1)

    @property
    def tracked_means(self) -> TrackedMeans:
        return self.tracker

    def encode(self, feature_map: Tensor) -> Tensor:
        """Unit embeddings of one level.

        Args:
            feature_map: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, H * W * anchors, d)`` unit vectors (a zero vector stays zero instead of NaN).
        """
        return self._encode(feature_map)[0]

    def _encode(self, feature_map: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(unit embeddings (B, H * W * anchors, d), anchor terms (B, H * W * anchors, 2) or None)``."""
        out = self.encoder(feature_map).float()
        embeddings = F.normalize(out[..., :self.embedding_size], dim=-1, eps=1e-12)
        return embeddings, (out[..., self.embedding_size:] if self.anchor_terms else None)

    def embed_raw(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Unit embeddings of all levels concatenated, before centering: ``(B, A, d)``."""
        return torch.cat([self.encode(x) for x in feature_maps], dim=1)

    def embed(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """The unit embeddings that are scored and tracked, all levels concatenated: ``(B, A, d)``
        (centered by the tracker's running center when ``center_momentum > 0``)."""
        return self.tracker.centered(self.embed_raw(feature_maps))

    def scales(self) -> Tensor:
        """``(C,)`` the scale ``w`` of every class as :meth:`classify` uses it (at least ``MIN_WEIGHT``)."""
        weight = self.weight.exp() if self.weight_param == "log" else self.weight.abs()
        return weight.clamp(min=MIN_WEIGHT)

    def assign(self, anchors: Tensor, annotations: Tensor) -> Assignment:
        """The anchor assignment used for tracking: ``anchors (B, A, 4)`` or ``(A, 4)``."""
        if anchors.dim() == 3:
            anchors = anchors[0]
        return assign_batch(anchors, annotations, self.assignation_thresholds,
                            allow_low_quality_matches=self.allow_low_quality_matches)

    def track(self, embeddings: Tensor, assignment: Assignment, *, raw: Tensor | None = None) -> None:
        """Update the means with the embeddings of anchors matched to an object.

        Args:
            embeddings: ``(B, A, d)`` unit embeddings (as scored: centered when the head centers).
            assignment: the batch's :class:`dlde.model.anchors.Assignment` (the detector's, computed
                once per step; :meth:`assign` makes one from anchors and annotations).
            raw: ``(B, A, d)`` the same before centering; they move the running center (none moves
                without them).
        """
        with torch.no_grad():
            objects = assignment.objects_mask  # (B, A)
            labels = assignment.assigned_annotations[..., 4][objects]  # (N,)
            self.tracker.update(embeddings[objects], labels, raw=None if raw is None else raw[objects])

    def classify(self, embeddings: Tensor, terms: Tensor | None = None) -> Tensor:
        """Class probabilities ``(..., C)`` of unit embeddings ``(..., d)``.

        With ``anchor_terms`` the anchors' own shift and scale ``terms (..., 2)`` enter a plain
        sigmoid (:meth:`_classify_with_terms`; without ``terms``, shift 0 and scale 1: the score of
        the class part alone). Otherwise:

        ``p_c = sigmoid(z_c) / sigmoid(|w_c| (1 + b_c))`` with ``z_c = |w_c| (cos_c + b_c)``, computed
        by :class:`CosineSigmoidRatio` (one matrix product, three in-place passes, a hand-written
        backward). Two bounds keep it finite and meaningful: ``|w| >= MIN_WEIGHT`` (at ``|w| = 0``
        the ratio is 1 for every class and cosine) and ``b`` in ``[-1, 1]``, so the cosine ``-b``
        where the logit changes sign stays inside the cosine's range and the denominator is at
        least 1/2 (a ``b`` below -1 made it 0/0 for large ``|w|``, a ``b`` far above 1 scores every
        embedding near 1).
        """
        with torch.autocast(embeddings.device.type, enabled=False):  # the cosine stays in fp32 under AMP
            if self.anchor_terms:
                return self._classify_with_terms(embeddings.float(), None if terms is None else terms.float())
            return self._classify(embeddings.float())

    def _classify_with_terms(self, embeddings: Tensor, terms: Tensor | None) -> Tensor:
        """``p_c = sigmoid(|w_c| (elu(u) + 1) (s_c + b_c + t))`` (OWL-ViT's form) for ``terms = (t, u)``
        per anchor; classes without a mean score 0. Autograd keeps a few ``(N, C)`` tensors."""
        initialized = self.tracker.initialized  # (C,)
        cosines = embeddings @ F.normalize(self.tracker.means, dim=1).t()  # (..., C)
        shift, scale = (0.0, 1.0) if terms is None else (terms[..., :1], F.elu(terms[..., 1:]) + 1)
        logits = (cosines + self.bias.clamp(-1.0, 1.0) + shift) * (self.scales() * scale)
        return torch.where(initialized, torch.sigmoid(logits), torch.zeros_like(logits))

    def _classify(self, embeddings: Tensor) -> Tensor:
        initialized = self.tracker.initialized  # (C,)
        weight = self.scales()
        bias = self.bias.clamp(-1.0, 1.0)
        # z_c = |w_c| (cos_c + b_c) in one matrix product; classes without a mean get z = -1e4 (p = 0).
        scale = torch.where(initialized, weight, torch.zeros_like(weight))
        shift = torch.where(initialized, weight * bias, torch.full_like(weight, -1e4))
        directions = F.normalize(self.tracker.means, dim=1) * scale[:, None]  # (C, d)
        flat = embeddings.reshape(-1, embeddings.shape[-1]).to(directions.dtype)
        probabilities = CosineSigmoidRatio.apply(flat, directions, shift, torch.sigmoid(weight * (1 + bias)))
        return probabilities.reshape(*embeddings.shape[:-1], -1)

    def forward(self, feature_maps: Sequence[Tensor], anchors: Tensor | None = None,
                annotations: Tensor | None = None, *, assignment: Assignment | None = None) -> Tensor:
        """Score the anchors, then (in training) track the batch.

        Scores use the means as they were before this batch: the labels of the batch never leak
        into its own scores.

        Args:
            feature_maps: one ``(B, in_channels, H_l, W_l)`` map per level.
            anchors, annotations: ``(B, A, 4)`` and ``(B, M, 5)``: the seed's way to track in
                training; not needed when ``assignment`` is given.
            assignment: the batch's anchor assignment (the detector computes it once per step).

        Returns:
            ``(B, A, C)`` probabilities.
        """
        encoded = [self._encode(x) for x in feature_maps]
        raw = torch.cat([embeddings for embeddings, _ in encoded], dim=1)  # (B, A, d)
        terms = torch.cat([terms for _, terms in encoded], dim=1) if self.anchor_terms else None  # (B, A, 2)
        embeddings = self.tracker.centered(raw)
        probabilities = self.classify(embeddings, terms)
        if self.training:
            if assignment is None:
                if anchors is None or annotations is None:
                    raise ValueError("DirectionalClassification needs the assignment (or anchors and annotations) "
                                     "in training mode to track the means")
                assignment = self.assign(anchors, annotations)
            self.track(embeddings, assignment, raw=raw)
        return probabilities

    # ------------------------------------------------------------------ class growth, imprinting
    def _base_rule(self, exclude: Tensor) -> tuple[Tensor, Tensor]:
        """``(w, b)`` of a new class: the mean ``w`` and ``b`` of the classes with a mean that are
        not in ``exclude (C,) bool`` (all classes' when none has a mean; the start values when none)."""
        donors = self.tracker.initialized & ~exclude
        if not donors.any():
            donors = ~exclude
        if not donors.any():
            start = math.log(self.start_weight) if self.weight_param == "log" else self.start_weight
            return self.weight.new_tensor(start), self.bias.new_tensor(self.start_bias)
        return self.weight.detach()[donors].mean(), self.bias.detach()[donors].mean()

    @torch.no_grad()
    def grow(self, k: int, *, generator: torch.Generator | None = None) -> None:
        """Add ``k`` classes without touching the existing ones (no random draw: ``generator`` is unused).

        Rule for the new classes: a zero mean (the class scores 0 until :meth:`imprint` or
        tracking sets it), and ``w``, ``b`` equal to the mean ``w`` and ``b`` of the existing
        classes with a mean, so an imprinted class is scored on the scale of the base classes.
        ``weight`` and ``bias`` become new Parameters: build the optimizer afterwards.
        """
        k = check_growth(k)
        weight, bias = self._base_rule(torch.zeros(self.classes, dtype=torch.bool, device=self.weight.device))
        self.tracker.grow(k)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), weight.expand(k)]))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), bias.expand(k)]))
        self.classes += k

    @torch.no_grad()
    def imprint(self, label: int, embeddings: Tensor) -> None:
        """Weight imprinting: the mean of class ``label`` becomes the normalized sum of
        ``embeddings (N, d)`` (the unit embeddings of the anchors matched to its boxes, as a
        tracked mean is formed), and its ``w``, ``b`` the mean ``w``, ``b`` of the other classes
        with a mean. No other class, parameter or buffer changes; no gradient step."""
        self.tracker.set_mean(label, embeddings)
        exclude = torch.zeros(self.classes, dtype=torch.bool, device=self.weight.device)
        exclude[int(label)] = True
        weight, bias = self._base_rule(exclude)
        self.weight[int(label)] = weight
        self.bias[int(label)] = bias

    def classifier_parameters(self) -> list[nn.Parameter]:
        """``w`` and ``b`` of every class (the means are tracked, never trained by gradient)."""
        return [self.weight, self.bias]


class CosineSigmoidRatio(torch.autograd.Function):
    """``p = min(sigmoid(shift + E D^T) / s, 1)`` for ``E (N, d)``, ``D (C, d)``, ``shift (C,)`` and
    ``s (C,)`` (:meth:`DirectionalClassification.classify`'s probabilities).

    The forward writes ``p`` over the product's output in place and keeps only ``p``; the backward
    uses ``dp/dz = p (1 - p s)`` (as ``sigmoid(z) = p s``) and ``dp/ds = -p / s``. Both work on
    row tiles (:func:`dlde.model.losses.row_tiles`): the only ``(N, C)`` allocation is ``p`` itself.
    The clamp only removes rounding above 1 (``s`` is ``sigmoid`` at the largest cosine, 1), so
    the backward differentiates the unclamped ratio.
    """

    @staticmethod
    def forward(ctx, embeddings, directions, shift, normalizer):
        probabilities = embeddings.new_empty(embeddings.shape[0], directions.shape[0])
        for rows in row_tiles(*probabilities.shape):
            torch.addmm(shift, embeddings[rows], directions.t(), out=probabilities[rows])
            probabilities[rows].sigmoid_().div_(normalizer).clamp_(max=1.0)
        ctx.save_for_backward(embeddings, directions, normalizer, probabilities)
        return probabilities

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        embeddings, directions, normalizer, probabilities = ctx.saved_tensors
        grad_embeddings = torch.empty_like(embeddings)
        grad_directions = torch.zeros_like(directions)
        grad_shift, grad_p_sum = torch.zeros_like(normalizer), torch.zeros_like(normalizer)
        for rows in row_tiles(*probabilities.shape):
            p = probabilities[rows]
            grad_p = grad[rows] * p  # dL/dp * p
            grad_p_sum += grad_p.sum(0)
            grad_z = p.mul(-normalizer).add_(1.0).mul_(grad_p)  # dL/dp * p (1 - p s)
            torch.mm(grad_z, directions, out=grad_embeddings[rows])
            grad_directions.addmm_(grad_z.t(), embeddings[rows])
            grad_shift += grad_z.sum(0)
        return grad_embeddings, grad_directions, grad_shift, -grad_p_sum / normalizer
