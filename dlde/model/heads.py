"""Convolutional heads shared by every pyramid level."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn


class HeadTower(nn.Module):
    """A RetinaNet head tower: ``convs`` 3x3 conv + (GroupNorm) + ReLU, then a 3x3 output conv
    (the seed's ``SubModule``, still importable under that name from :mod:`dlde.model.compat`).

    Args:
        in_channels: channels of each pyramid level.
        outputs: values predicted per anchor.
        anchors: anchors per location.
        features: channels inside the tower.
        convs: number of hidden convolutions.
        group_norm: add GroupNorm (32 groups, or fewer when ``features`` is small) after each.

    ``forward(x (B, in_channels, H, W))`` returns ``(B, H * W * anchors, outputs)`` in the
    anchor order of :class:`dlde.model.anchors.Anchors` (row-major locations, then anchor).
    """

    def __init__(self, in_channels: int, outputs: int, anchors: int, features: int = 256, *,
                 convs: int = 4, group_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(convs):
            layers.append(nn.Conv2d(channels, features, 3, padding=1))
            if group_norm:
                layers.append(nn.GroupNorm(math.gcd(32, features), features))
            layers.append(nn.ReLU(inplace=True))
            channels = features
        self.tower = nn.Sequential(*layers)
        self.last = nn.Conv2d(channels, anchors * outputs, 3, padding=1)
        self.outputs = outputs
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        x = self.last(self.tower(x))  # (B, K * outputs, H, W)
        return x.permute(0, 2, 3, 1).reshape(batch, -1, self.outputs)  # (B, H * W * K, outputs)

    @torch.no_grad()
    def grow_outputs(self, k: int, *, bias: float = 0.0) -> None:
        """Add ``k`` outputs per anchor to the output convolution, keeping every existing one.

        The output channels are laid out anchor-major (channel ``a * outputs + o`` is output ``o``
        of anchor ``a``, see :meth:`forward`), so the old weights are copied to channel
        ``a * (outputs + k) + o`` and the new outputs of every anchor get zero weights and
        ``bias``: they start constant, and the old outputs are unchanged bit for bit.

        Args:
            k: outputs to add per anchor (>= 1).
            bias: the bias of the new outputs.
        """
        old = self.last
        anchors = old.out_channels // self.outputs
        new = nn.utils.skip_init(nn.Conv2d, old.in_channels, anchors * (self.outputs + k), old.kernel_size,
                                 padding=old.padding, device=old.weight.device, dtype=old.weight.dtype)  # no draw
        weight = new.weight.view(anchors, self.outputs + k, *old.weight.shape[1:])  # (K, outputs + k, in, 3, 3)
        weight.zero_()
        weight[:, :self.outputs] = old.weight.view(anchors, self.outputs, *old.weight.shape[1:])
        grown_bias = new.bias.view(anchors, self.outputs + k)
        grown_bias.fill_(float(bias))
        grown_bias[:, :self.outputs] = old.bias.view(anchors, self.outputs)
        self.last = new
        self.outputs += k


class Regression(nn.Module):
    """Box-regression head: ``forward(feature_maps)`` -> deltas ``(B, A, 4)`` over all levels."""

    def __init__(self, in_channels: int, anchors: int, features: int = 256, *, convs: int = 4,
                 group_norm: bool = False):
        super().__init__()
        self.head = HeadTower(in_channels, 4, anchors, features, convs=convs, group_norm=group_norm)

    def forward(self, feature_maps: Sequence[Tensor]) -> Tensor:
        return torch.cat([self.head(x) for x in feature_maps], dim=1)


class ClassificationHead(nn.Module):
    """The protocol every classification head of :class:`dlde.RetinaNet` follows.

    A head is built from ``(in_channels, anchors, features, classes)`` plus its own options (a
    frozen dataclass ``Options`` next to the head; :mod:`dlde.model.registry` maps names to heads).
    It provides:

    * ``forward(feature_maps, anchors=None, annotations=None, *, assignment=None)`` -> class
      probabilities ``(B, A, C)`` in [0, 1], in the anchor order of
      :class:`dlde.model.anchors.Anchors`. In training mode the detector passes the batch's
      :class:`dlde.model.anchors.Assignment` (computed once per step and shared with the loss); a
      head with tracked means tracks it *after* scoring.
    * ``options()`` -> the JSON-able options that rebuild it (stored in checkpoints).
    * ``tracked_means``: its :class:`dlde.model.means.TrackedMeans` (the component the trainer
      drives: update, apply, statistics, reduction over processes), or None.

    Heads with an embedding space implement :meth:`embed` and :meth:`class_directions`; heads that
    can learn new classes implement :meth:`grow`, :meth:`imprint` and :meth:`classifier_parameters`
    (used by :mod:`dlde.model.growth`).
    """

    name: ClassVar[str] = ""
    #: Whether the head keeps tracked class means (its ``tracked_means`` is not None): the trainer's
    #: options that act on them (re-imprinting) are part of its runs' identity, inert for the others.
    tracks_means: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Options:
        """The head's own options and their defaults (subclasses define theirs)."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` validated against :class:`Options` (a misspelt key fails loudly)."""
        names = {f.name for f in fields(cls.Options)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown options {unknown} for the {cls.name!r} head; valid: {sorted(names)}")
        return dict(options)

    @classmethod
    def build(cls, in_channels: int, anchors: int, features: int, classes: int, *, convs: int = 4,
              group_norm: bool = False, assignation_thresholds: Mapping[str, float] | None = None,
              allow_low_quality_matches: bool = True, **options: Any) -> "ClassificationHead":
        """The head for a detector's geometry and settings; heads that match anchors themselves
        (the seed's ``track(embeddings, anchors, annotations)``) override it to keep the thresholds."""
        return cls(in_channels, anchors, features, classes, convs=convs, group_norm=group_norm,
                   **cls.check_options(options))

    @property
    def tracked_means(self):
        """The head's tracked class means (:class:`dlde.model.means.TrackedMeans`), or None."""
        return None

    def options(self) -> dict[str, Any]:
        """Keyword options that rebuild this head (JSON-able)."""
        raise NotImplementedError

    def embed(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Unit embeddings ``(B, A, d)`` of all levels (heads with an embedding space)."""
        raise TypeError(f"the {self.name or type(self).__name__!r} head has no embedding space")

    def class_directions(self) -> Tensor | None:
        """``(C, d)`` unit direction of each class in the embedding space (None: no such space)."""
        return None

    # Class growth (few-shot): see dlde.model.growth.
    def grow(self, k: int, *, generator: torch.Generator | None = None) -> None:
        """Add ``k`` classes after the existing ones without changing any existing parameter;
        ``generator`` is the source of any random start of the new classes (heads that draw none ignore it)."""
        raise NotImplementedError(f"the {self.name or type(self).__name__!r} head cannot add classes")

    def imprint(self, label: int, embeddings: Tensor) -> None:
        """Set class ``label`` from the unit embeddings ``(N, d)`` of anchors matched to its boxes,
        without a gradient step (heads with an embedding space)."""
        raise NotImplementedError(f"the {self.name or type(self).__name__!r} head has no embedding space to "
                                  "imprint a class in: fine-tune its classifier_parameters() instead")

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The per-class parameters of the classifier layer (what TFA-style fine-tuning trains)."""
        raise NotImplementedError(f"the {self.name or type(self).__name__!r} head names no classifier layer")


def prior_logit(prior: float) -> float:
    """The logit ``-log((1 - prior) / prior)`` whose sigmoid is ``prior``: the focal-loss start of
    a class (RetinaNet's prior initialization, used by every head that has a per-class bias)."""
    return -math.log((1 - prior) / prior)


class SigmoidClassification(ClassificationHead):
    """The ordinary RetinaNet classifier: one sigmoid per class and anchor.

    The output bias starts at ``-log((1 - prior) / prior)`` so every class begins with probability
    ``prior``. ``forward`` returns probabilities ``(B, A, C)`` and ignores anchors, annotations and
    the assignment.
    """

    name = "retinanet"

    @dataclass(frozen=True)
    class Options:
        prior: float = 0.01

    def __init__(self, in_channels: int, anchors: int, features: int, classes: int, *,
                 prior: float = Options.prior, convs: int = 4, group_norm: bool = False):
        super().__init__()
        self.classes = classes
        self.prior = float(prior)
        self.head = HeadTower(in_channels, classes, anchors, features, convs=convs, group_norm=group_norm)
        nn.init.constant_(self.head.last.bias, prior_logit(prior))

    def options(self) -> dict[str, Any]:
        return {"prior": self.prior}

    def logits(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Class logits ``(B, A, C)``."""
        return torch.cat([self.head(x) for x in feature_maps], dim=1)

    def forward(self, feature_maps: Sequence[Tensor], anchors: Tensor | None = None,
                annotations: Tensor | None = None, *, assignment=None) -> Tensor:
        return torch.sigmoid(self.logits(feature_maps).float())

    def grow(self, k: int, *, generator: torch.Generator | None = None) -> None:
        """Add ``k`` classes: ``k`` more output channels per anchor in the last convolution, with
        zero weights and the prior's bias (every new class starts at probability ``prior``
        everywhere); the old classes' outputs are unchanged (:meth:`HeadTower.grow_outputs`).

        This head has no embedding space, so a new class cannot be imprinted: fine-tune
        :meth:`classifier_parameters` on its boxes."""
        self.head.grow_outputs(check_growth(k), bias=prior_logit(self.prior))
        self.classes += k

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The last convolution (features -> class logits)."""
        return [self.head.last.weight, self.head.last.bias]


def check_growth(k: int) -> int:
    """``k`` as a positive int (one-line error otherwise)."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"the number of classes to add must be a positive integer, got {k!r}")
    return int(k)
