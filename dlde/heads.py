"""Convolutional heads shared by every pyramid level."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class SubModule(nn.Module):
    """A RetinaNet head tower: ``convs`` 3x3 conv + (GroupNorm) + ReLU, then a 3x3 output conv.

    Args:
        in_channels: channels of each pyramid level.
        outputs: values predicted per anchor.
        anchors: anchors per location.
        features: channels inside the tower.
        convs: number of hidden convolutions.
        group_norm: add GroupNorm (32 groups, or fewer when ``features`` is small) after each.

    ``forward(x (B, in_channels, H, W))`` returns ``(B, H * W * anchors, outputs)`` in the
    anchor order of :class:`dlde.Anchors` (row-major locations, then anchor).
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


class Regression(nn.Module):
    """Box-regression head: ``forward(feature_maps)`` -> deltas ``(B, A, 4)`` over all levels."""

    def __init__(self, in_channels: int, anchors: int, features: int = 256, *, convs: int = 4,
                 group_norm: bool = False):
        super().__init__()
        self.head = SubModule(in_channels, 4, anchors, features, convs=convs, group_norm=group_norm)

    def forward(self, feature_maps: Sequence[Tensor]) -> Tensor:
        return torch.cat([self.head(x) for x in feature_maps], dim=1)


class SigmoidClassification(nn.Module):
    """The ordinary RetinaNet classifier: one sigmoid per class and anchor.

    The output bias starts at ``-log((1 - prior) / prior)`` so every class begins with probability
    ``prior``. ``forward(feature_maps, anchors=None, annotations=None, classify=True)`` has the
    signature of :class:`dlde.DirectionalClassification` so the two heads are interchangeable;
    it returns probabilities ``(B, A, C)`` (or None when ``classify`` is False) and ignores the
    anchors and annotations.
    """

    def __init__(self, in_channels: int, anchors: int, features: int, classes: int, *,
                 prior: float = 0.01, convs: int = 4, group_norm: bool = False):
        super().__init__()
        self.classes = classes
        self.head = SubModule(in_channels, classes, anchors, features, convs=convs, group_norm=group_norm)
        nn.init.constant_(self.head.last.bias, -math.log((1 - prior) / prior))

    def logits(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """Class logits ``(B, A, C)``."""
        return torch.cat([self.head(x) for x in feature_maps], dim=1)

    def forward(self, feature_maps: Sequence[Tensor], anchors: Tensor | None = None,
                annotations: Tensor | None = None, classify: bool = True) -> Tensor | None:
        if not classify:
            return None
        return torch.sigmoid(self.logits(feature_maps).float())
