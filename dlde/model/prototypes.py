"""Learned cosine prototypes (TFA-style): the cosine classifier without tracked means.

It isolates what the tracked means add from what the cosine classifier adds: the same unit
embedding as DLDENet's head, but one *learned* prototype per class, trained by gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import ClassificationHead, HeadTower, SigmoidClassification, check_growth, prior_logit
from .priors import CLASSIFIER_INITS, balance, check_classifier_init

#: Largest spread ``scale / sqrt(d)`` of the initial logits under ``classifier_init='prior'``
#: (:meth:`CosinePrototypeClassification.prior_start`).
PRIOR_SPREAD = 1.0
#: Bounds of the bias search of :meth:`CosinePrototypeClassification.prior_start` (logits of
#: probability 0 and 1 in float32).
PRIOR_BIAS_BOUND = 50.0


class CosinePrototypeClassification(ClassificationHead):
    """Scores ``p_c = sigmoid(s * cos(e, w_c) + b_c)`` with a learned prototype ``w_c`` per class.

    Every anchor gets a unit embedding ``e`` (as in :class:`dlde.DirectionalClassification`);
    ``w_c`` is renormalised at every forward (Wang et al., TFA, ICML 2020), ``s`` is a fixed or
    learned scale and ``b_c`` starts at ``-log((1 - prior) / prior)``, so every class begins near
    probability ``prior`` (at cosine 0; ``classifier_init='prior'`` takes the spread of the cosines
    into account, :meth:`prior_start`). Trained with the sigmoid focal loss like the baseline.

    Args:
        in_channels: channels of each pyramid level.
        anchors: anchors per location.
        features: channels inside the encoder tower.
        classes: number of classes ``C``.
        embedding_size: dimension ``d`` of the embeddings.
        scale: the cosine scale ``s`` (TFA uses 20).
        learn_scale: learn ``s`` (through its logarithm) instead of keeping it fixed.
        prior: initial class probability.
        classifier_init: ``'fixed'`` (scale ``cosine_scale``, bias at the prior's logit) or
            ``'prior'`` (scale at most ``sqrt(d)`` and a bias that keep the initial focal loss near
            the sigmoid head's whatever the vocabulary: :meth:`prior_start`).
        convs, group_norm: the encoder tower.
    """

    name = "prototypes"

    @dataclass(frozen=True)
    class Options:
        embedding_size: int = 128
        cosine_scale: float = 20.0
        learn_scale: bool = False
        prior: float = SigmoidClassification.Options.prior
        classifier_init: str = CLASSIFIER_INITS[0]  # "fixed"

    def __init__(self, in_channels: int, anchors: int, features: int, classes: int, *,
                 embedding_size: int = Options.embedding_size, cosine_scale: float = Options.cosine_scale,
                 learn_scale: bool = Options.learn_scale, prior: float = Options.prior,
                 classifier_init: str = Options.classifier_init, convs: int = 4, group_norm: bool = False):
        super().__init__()
        if int(embedding_size) < 2:
            raise ValueError(f"embedding_size must be at least 2, got {embedding_size}")
        if not cosine_scale > 0:
            raise ValueError(f"cosine_scale must be positive, got {cosine_scale}")
        self.classes, self.embedding_size = int(classes), int(embedding_size)
        self.learn_scale, self.prior = bool(learn_scale), float(prior)
        self.classifier_init = check_classifier_init(classifier_init)
        if self.classifier_init == "prior":
            cosine_scale, self.start_bias = self.prior_start(self.embedding_size, cosine_scale, self.prior)
        else:
            self.start_bias = prior_logit(prior)
        self.encoder = HeadTower(in_channels, self.embedding_size, anchors, features, convs=convs,
                                 group_norm=group_norm)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(self.classes, self.embedding_size), dim=1))
        self.bias = nn.Parameter(torch.full((self.classes,), self.start_bias))
        log_scale = torch.tensor(math.log(cosine_scale))
        if self.learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def options(self) -> dict:
        return {"embedding_size": self.embedding_size, "cosine_scale": float(self.scale.detach()),
                "learn_scale": self.learn_scale, "prior": self.prior, "classifier_init": self.classifier_init}

    @staticmethod
    def prior_start(embedding_size: int, cosine_scale: float = Options.cosine_scale,
                    prior: float = Options.prior) -> tuple[float, float]:
        """``(scale, bias)`` of ``classifier_init='prior'``: a balanced start (:mod:`dlde.model.priors`:
        the expected focal losses of a positive and of a background pair are the sigmoid head's at
        ``prior`` times one factor ``ρ``).

        With random prototypes the logit ``scale * s + b`` spreads by ``scale / sqrt(d)``, and ``ρ``
        of the balanced bias depends on that spread alone: about 1.08 / 1.17 / 1.3 / 1.45 at spreads
        0.5 / 0.75 / 1 / 1.25. The scale is also the classifier's temperature for the whole training
        (unless ``learn_scale``; TFA uses 20), so it is not shrunk further than a spread of
        ``PRIOR_SPREAD`` (1) needs: ``scale = min(cosine_scale, sqrt(d))``, and the bias is solved
        for the balance. At prior 0.01 and ``cosine_scale`` 20 (``d``: scale, bias, ``ρ``):
        32: 5.66, -5.83, 1.28; 128: 11.3, -5.92, 1.30; 1024: 20, -5.13, 1.12. The fixed start
        (scale 20, bias -4.6) gives a background loss 140,000 / 3,400 / 5.4 times the sigmoid
        head's at 32 / 128 / 1024 dimensions.

        Returns:
            ``(scale, bias)`` as floats (deterministic: a quadrature and a bisection).
        """
        scale = min(float(cosine_scale), PRIOR_SPREAD * math.sqrt(embedding_size))

        def probabilities(s: Tensor, bias: float) -> Tensor:
            return torch.sigmoid(scale * s + bias)

        bias, _ = balance(probabilities, embedding_size, prior, -PRIOR_BIAS_BOUND, PRIOR_BIAS_BOUND)
        return scale, bias

    def embed(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Unit embeddings ``(B, A, d)`` of all levels."""
        return torch.cat([F.normalize(self.encoder(x).float(), dim=-1, eps=1e-12) for x in feature_maps], dim=1)

    def class_directions(self) -> Tensor:
        return F.normalize(self.prototypes.detach(), dim=1)

    def classify(self, embeddings: Tensor) -> Tensor:
        """Probabilities ``(..., C)`` of unit embeddings ``(..., d)`` (the cosine in fp32, also under AMP)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            weights = F.normalize(self.prototypes.float(), dim=1) * self.scale  # (C, d)
            flat = embeddings.float().reshape(-1, embeddings.shape[-1])
            logits = torch.addmm(self.bias.float(), flat, weights.t()).reshape(*embeddings.shape[:-1], -1)  # (..., C)
            return torch.sigmoid(logits)

    def forward(self, feature_maps: Sequence[Tensor], anchors: Tensor | None = None,
                annotations: Tensor | None = None, *, assignment=None) -> Tensor:
        return self.classify(self.embed(feature_maps))

    @torch.no_grad()
    def grow(self, k: int, *, generator: torch.Generator | None = None) -> None:
        """Add ``k`` classes: random unit prototypes (as at construction; a zero prototype has no
        gradient direction) and the starting bias (the prior's logit, or :meth:`prior_start`'s), so
        every new class starts as the first ones did. Existing rows are unchanged; ``prototypes``
        and ``bias`` become new Parameters.

        Args:
            k: classes to add (>= 1).
            generator: source of the new prototypes; None draws from torch's global generator.
        """
        k = check_growth(k)
        draws = F.normalize(torch.randn(k, self.embedding_size, generator=generator), dim=1)
        self.prototypes = nn.Parameter(torch.cat([self.prototypes.detach(), draws.to(self.prototypes)]))
        start = self.bias.new_full((k,), self.start_bias)
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), start]))
        self.classes += k

    @torch.no_grad()
    def imprint(self, label: int, embeddings: Tensor) -> None:
        """Weight imprinting (Qi et al., CVPR 2018): the prototype of ``label`` becomes the
        normalized sum of ``embeddings (N, d)``, its bias the mean bias of the other classes."""
        if not 0 <= int(label) < self.classes:
            raise ValueError(f"label {label} is not a class of this head (0..{self.classes - 1})")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size or embeddings.shape[0] == 0:
            raise ValueError(f"imprinting needs embeddings (N >= 1, {self.embedding_size}), "
                             f"got {tuple(embeddings.shape)}")
        total = embeddings.detach().float().sum(dim=0)
        if not torch.isfinite(total).all() or total.norm() <= 1e-12:
            raise ValueError(f"the embeddings of class {label} sum to a zero or non-finite vector: no direction")
        self.prototypes[int(label)] = F.normalize(total, dim=0).to(self.prototypes)
        others = torch.ones(self.classes, dtype=torch.bool, device=self.bias.device)
        others[int(label)] = False
        if others.any():
            self.bias[int(label)] = self.bias[others].mean()

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The prototypes and biases (and the learned scale, if any)."""
        return [self.prototypes, self.bias] + ([self.log_scale] if self.learn_scale else [])
