"""The detector's backbone: what any backbone provides, and the default, a ResNet with a feature
pyramid that computes only the requested levels.

A backbone is an ``nn.Module`` that :class:`dlde.RetinaNet` takes as ``backbone=`` (or builds with
a function ``(levels, channels) -> module``; None builds :class:`ResNetFPN`). It provides:

* ``forward(images (B, 3, H, W))`` -> a list with one map ``(B, channels, ceil(H / 2**l),
  ceil(W / 2**l))`` per pyramid level ``l`` of ``levels``, in increasing level order: the anchors
  of level ``l`` have stride ``2**l``, and the heads take ``channels`` channels;
* ``levels`` (the detector's ``fpn_levels``: sorted, each in 3..7) and ``channels`` (its
  ``features['pyramid']``), which the detector checks when it is built (:func:`check_backbone`);
* optionally ``batchnorm_stride``: the stride of the coarsest map a BatchNorm layer of it
  normalizes, so that the detector refuses a training image too small for it with a clear
  message (:func:`dlde.model.inputs.check_norm_sizes`); without it, the coarsest level's stride;
* to be saved and loaded back by name (:func:`dlde.model.builders.load_detector`): a class
  attribute ``name``, its key in :data:`dlde.model.registry.BACKBONES`, and ``options()``, the
  plain keyword arguments that rebuild it as ``cls(levels, channels, **options)``.

The detector holds it as ``model.fpn`` (the prefix of its weights in checkpoints).

:class:`ResNetFPN`: level ``l`` has stride ``2**l``. Levels 3-5 come from the ResNet stages C3-C5
through lateral 1x1 convolutions, a nearest-neighbour top-down pathway and 3x3 output
convolutions; P6 is a stride-2 3x3 convolution on P5 and P7 one on ReLU(P6) (the RetinaNet
layout). Stages and convolutions that no requested level needs are not built, so every parameter
gets a gradient.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

RESNET_CHANNELS = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048}  # C5 channels
SUPPORTED_LEVELS = (3, 4, 5, 6, 7)


def check_levels(levels: Sequence[int] | None) -> list[int]:
    """Sorted, de-duplicated pyramid levels, each in 3..7."""
    if levels is None:
        return list(SUPPORTED_LEVELS)
    out = sorted({int(level) for level in levels})
    if not out or any(level not in SUPPORTED_LEVELS for level in out):
        raise ValueError(f"fpn_levels must be a non-empty subset of {list(SUPPORTED_LEVELS)}, got {levels}")
    return out


def check_backbone(backbone: nn.Module, levels: Sequence[int], channels: int) -> nn.Module:
    """``backbone`` if it follows the backbone protocol (module docstring) for a detector whose
    pyramid has ``levels`` with ``channels`` channels.

    Raises:
        TypeError: not an ``nn.Module``.
        ValueError: its ``levels`` or ``channels`` are missing or differ from the detector's.
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"the backbone must be an nn.Module (or a function building one from (levels, channels)), "
                        f"got {type(backbone).__name__}")
    found = (getattr(backbone, "levels", None), getattr(backbone, "channels", None))
    if found[0] is None or list(found[0]) != list(levels) or found[1] != channels:
        raise ValueError(f"the backbone {type(backbone).__name__} has levels {found[0]} and channels {found[1]}; "
                         f"the detector needs levels {list(levels)} (fpn_levels) with {channels} channels "
                         "(features['pyramid'])")
    return backbone


def _weights_enum(depth: int):
    return getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1


def pretrained_weights_path(depth: int) -> Path:
    """Where the ImageNet weights of ResNet-``depth`` are expected in the local torch cache."""
    url = _weights_enum(depth).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_pretrained_state(depth: int) -> dict[str, Tensor]:
    """ImageNet weights from the local cache; never downloads.

    Raises:
        FileNotFoundError: naming the file to provide, where to put it, and the alternatives.
    """
    path = pretrained_weights_path(depth)
    if not path.is_file():
        url = _weights_enum(depth).url
        raise FileNotFoundError(
            f"pretrained ResNet-{depth} weights not found at {path}. dlde never downloads at run "
            f"time: fetch {url} on a machine with network access and copy it to {path} (or point "
            f"TORCH_HOME at a cache holding hub/checkpoints/{path.name}), or pass pretrained=False "
            "to train from scratch.")
    return torch.load(path, map_location="cpu", weights_only=True)


class ResNetFPN(nn.Module):
    """ResNet + feature pyramid.

    Args:
        depth: ResNet depth, one of 18, 34, 50, 101, 152.
        levels: pyramid levels to return, a subset of 3..7.
        channels: channels of every pyramid level.
        pretrained: load ImageNet weights from the local torch cache (see
            :func:`load_pretrained_state`).

    ``forward(images (B, 3, H, W))`` returns a list with one ``(B, channels, ceil(H/2**l),
    ceil(W/2**l))`` map per requested level, in increasing level order.
    """

    def __init__(self, depth: int = 18, levels: Sequence[int] | None = None, channels: int = 256,
                 *, pretrained: bool = False):
        super().__init__()
        if depth not in RESNET_CHANNELS:
            raise ValueError(f"resnet depth must be one of {sorted(RESNET_CHANNELS)}, got {depth}")
        self.levels = check_levels(levels)
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if pretrained:
            resnet.load_state_dict(load_pretrained_state(depth))
        # Pyramid levels 3..5 that must be computed: every requested one, and P5 when P6/P7 are.
        inner = [level for level in (3, 4, 5) if level in self.levels]
        if max(self.levels) >= 6:
            inner.append(5)
        inner = sorted(set(inner))
        self.inner_levels = list(range(inner[0], inner[-1] + 1))  # contiguous top-down range
        last_stage = self.inner_levels[-1]  # C5 for level 5, C4 for level 4, ...
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        stages = [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
        self.stages = nn.ModuleList(stages[: last_stage - 1])  # layer1 (C2) .. C_last
        c5 = RESNET_CHANNELS[depth]
        stage_channels = {3: c5 // 4, 4: c5 // 2, 5: c5}
        self.lateral = nn.ModuleDict({str(l): nn.Conv2d(stage_channels[l], channels, 1)
                                      for l in self.inner_levels})
        output_levels = [l for l in self.inner_levels if l in self.levels or (l == 5 and max(self.levels) >= 6)]
        self.output = nn.ModuleDict({str(l): nn.Conv2d(channels, channels, 3, padding=1)
                                     for l in output_levels})
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if max(self.levels) >= 6 else None
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if 7 in self.levels else None
        self.channels = channels
        for module in [*self.lateral.values(), *self.output.values(), self.p6, self.p7]:
            if module is not None:
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    @property
    def batchnorm_stride(self) -> int:
        """Stride of the coarsest map a BatchNorm normalizes: that of the last ResNet stage built."""
        return 2 ** self.inner_levels[-1]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        stage_outputs = {}
        for index, stage in enumerate(self.stages):
            x = stage(x)
            stage_outputs[index + 2] = x  # layer1 -> C2, layer2 -> C3, ...
        pyramid: dict[int, Tensor] = {}
        top = None
        for level in reversed(self.inner_levels):
            lateral = self.lateral[str(level)](stage_outputs[level])
            if top is not None:
                lateral = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            top = lateral
            if str(level) in self.output:
                pyramid[level] = self.output[str(level)](lateral)
        if self.p6 is not None:
            pyramid[6] = self.p6(pyramid[5])
        if self.p7 is not None:
            pyramid[7] = self.p7(F.relu(pyramid[6]))
        return [pyramid[level] for level in self.levels]
