"""Anchor generation and anchor-to-object assignment.

Anchors are boxes ``(x1, y1, x2, y2)`` in input-image pixels. For an image of size ``H x W``
the anchors are ordered level by level (in the order of ``strides``), then row-major over the
locations of that level's ``ceil(H / stride) x ceil(W / stride)`` grid, then by anchor shape
(ratio-major, scale-minor). The detection heads emit their outputs in the same order.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

DEFAULT_STRIDES = (8, 16, 32, 64, 128)
DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
DEFAULT_THRESHOLDS = {"object": 0.5, "background": 0.4}


class Assignment(NamedTuple):
    """Result of matching anchors to annotations.

    Shapes are ``(A, ...)`` for one image and ``(B, A, ...)`` for a batch.

    Attributes:
        assigned_annotations: ``(..., A, 5)`` the annotation (x1, y1, x2, y2, label) each anchor
            matches best; label -1 where the image has no annotation at all.
        objects_mask: ``(..., A)`` bool, anchors that are positives (IoU >= object threshold, or
            the best anchor of some annotation when low-quality matches are on).
        background_mask: ``(..., A)`` bool, anchors with IoU < background threshold (never an object).
        ious: ``(..., A)`` best IoU of each anchor with any annotation (0 without annotations).
    """

    assigned_annotations: Tensor
    objects_mask: Tensor
    background_mask: Tensor
    ious: Tensor


def check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """Validate an assignation-thresholds mapping and return a fresh dict (never the caller's)."""
    if thresholds is None:
        return dict(DEFAULT_THRESHOLDS)
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"assignation_thresholds must be a dict, got {type(thresholds).__name__}")
    unknown = set(thresholds) - {"object", "background"}
    if unknown:
        raise ValueError(f"assignation_thresholds has unknown keys {sorted(unknown)}; "
                         "expected 'object' and 'background'")
    for key in ("object", "background"):
        if key not in thresholds:
            raise ValueError(f"assignation_thresholds has no {key!r} threshold")
    out = {key: float(thresholds[key]) for key in ("object", "background")}
    if not 0.0 <= out["background"] <= out["object"] <= 1.0:
        raise ValueError(f"need 0 <= background <= object <= 1, got {out}")
    return out


def pairwise_iou(anchors: Tensor, boxes: Tensor) -> Tensor:
    """IoU between anchors ``(A, 4)`` and per-image boxes ``(B, M, 4)`` -> ``(B, A, M)``."""
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # (A,)
    area_b = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (B, M)
    top_left = torch.maximum(anchors[None, :, None, :2], boxes[:, None, :, :2])  # (B, A, M, 2)
    bottom_right = torch.minimum(anchors[None, :, None, 2:], boxes[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[None, :, None] + area_b[:, None, :] - inter
    return inter / union.clamp(min=1e-9)


def assign_batch(anchors: Tensor, annotations: Tensor, thresholds: Mapping[str, float] | None = None,
                 *, allow_low_quality_matches: bool = True) -> Assignment:
    """Match anchors to the annotations of every image of a batch at once.

    Args:
        anchors: ``(A, 4)`` anchors shared by the batch, x1, y1, x2, y2 in pixels.
        annotations: ``(B, M, 5)`` x1, y1, x2, y2, label; rows with label -1 are padding.
        thresholds: ``{'object': float, 'background': float}``; not modified.
        allow_low_quality_matches: also make each annotation's best anchor(s) a positive, so
            objects smaller than any anchor's reach still get one.

    Returns:
        An :class:`Assignment` of ``(B, A, ...)`` tensors.
    """
    thresholds = check_thresholds(thresholds)
    batch, num_anchors = annotations.shape[0], anchors.shape[0]
    if annotations.shape[1] == 0:  # no annotations anywhere: one padding row keeps shapes simple
        annotations = annotations.new_full((batch, 1, 5), -1.0)
    valid = annotations[..., 4] >= 0  # (B, M)
    iou = pairwise_iou(anchors, annotations[..., :4].to(anchors.dtype))  # (B, A, M)
    iou = iou.masked_fill(~valid[:, None, :], -1.0)
    best_iou, best_index = iou.max(dim=2)  # (B, A)
    objects = best_iou >= thresholds["object"]
    if allow_low_quality_matches:
        best_per_object = iou.max(dim=1, keepdim=True).values  # (B, 1, M)
        is_best = (iou == best_per_object) & valid[:, None, :] & (best_per_object > 0)
        objects |= is_best.any(dim=2)
    background = (best_iou < thresholds["background"]) & ~objects
    assigned = annotations.gather(1, best_index[..., None].expand(batch, num_anchors, 5))
    return Assignment(assigned, objects, background, best_iou.clamp(min=0))


class Anchors(nn.Module):
    """Generates the anchors of a feature pyramid.

    Args:
        sizes: base size in pixels per level (default 32, 64, 128, 256, 512 for P3-P7).
        scales: multipliers of the base size (default 2^0, 2^(1/3), 2^(2/3)).
        ratios: height / width ratios (default 0.5, 1, 2).
        strides: pixel stride per level (default 8, 16, 32, 64, 128).
    """

    def __init__(self, sizes: Sequence[float] | None = None, scales: Sequence[float] | None = None,
                 ratios: Sequence[float] | None = None, strides: Sequence[int] | None = None):
        super().__init__()
        self.sizes = [float(s) for s in (sizes if sizes is not None else DEFAULT_SIZES)]
        self.scales = [float(s) for s in (scales if scales is not None else DEFAULT_SCALES)]
        self.ratios = [float(r) for r in (ratios if ratios is not None else DEFAULT_RATIOS)]
        self.strides = [int(s) for s in (strides if strides is not None else DEFAULT_STRIDES)]
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"need one anchor size per stride, got {len(self.sizes)} sizes "
                             f"for {len(self.strides)} strides")
        if not self.scales or not self.ratios:
            raise ValueError("anchor scales and ratios must not be empty")
        if min(self.sizes + self.scales + self.ratios) <= 0 or min(self.strides) <= 0:
            raise ValueError("anchor sizes, scales, ratios and strides must be positive")
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.scales) * len(self.ratios)

    def base_anchors(self, level: int) -> Tensor:
        """``(K, 4)`` anchors of one level centred on the origin, ratio-major, scale-minor."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        scales = torch.tensor(self.scales, dtype=torch.float64)
        side = self.sizes[level] * scales  # (S,)
        heights = (side[None, :] * ratios.sqrt()[:, None]).reshape(-1)  # (R * S,)
        widths = (side[None, :] / ratios.sqrt()[:, None]).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2

    def grid_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Feature-map size ``(h, w)`` of each level for an input of ``height x width``."""
        return [(math.ceil(height / s), math.ceil(width / s)) for s in self.strides]

    def level_counts(self, height: int, width: int) -> list[int]:
        """Number of anchors of each level for an input of ``height x width``."""
        return [h * w * self.num_anchors for h, w in self.grid_sizes(height, width)]

    def generate(self, height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
        """``(A, 4)`` anchors for one ``height x width`` input (cached)."""
        key = (height, width, str(device), dtype)
        if key not in self._cache:
            levels = []
            for level, ((h, w), stride) in enumerate(zip(self.grid_sizes(height, width), self.strides)):
                ys = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
                xs = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w), row-major
                centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
                levels.append((centres + self.base_anchors(level)[None]).reshape(-1, 4))
            self._cache[key] = torch.cat(levels).to(device=device, dtype=dtype)
        return self._cache[key]

    def image_size(self, anchors: Tensor) -> tuple[int, int] | None:
        """``(H, W)`` of the input whose anchors ``anchors`` (``(A, 4)``, or the ``(B, A, 4)`` view
        :meth:`forward` returns) are, looked up among the generated ones; None for other tensors."""
        generated = anchors[0] if anchors.dim() == 3 else anchors
        for (height, width, _, _), cached in self._cache.items():
            if generated.data_ptr() == cached.data_ptr() and generated.shape == cached.shape:
                return height, width
        return None

    def forward(self, images: Tensor) -> Tensor:
        """Anchors for a batch of images ``(B, C, H, W)`` -> ``(B, A, 4)`` (a broadcast view)."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        dtype = images.dtype if images.is_floating_point() else torch.float32
        anchors = self.generate(images.shape[-2], images.shape[-1], device=images.device, dtype=dtype)
        return anchors[None].expand(images.shape[0], -1, -1)

    @staticmethod
    def assign(anchors: Tensor, annotations: Tensor, thresholds: Mapping[str, float] | None = None,
               *, allow_low_quality_matches: bool = True) -> Assignment:
        """Match the anchors of one image to its annotations.

        Args:
            anchors: ``(A, 4)`` x1, y1, x2, y2.
            annotations: ``(M, 5)`` x1, y1, x2, y2, label (label -1 rows are ignored). ``M`` may be 0.
            thresholds: ``{'object': float, 'background': float}``; not modified.
            allow_low_quality_matches: each annotation's best anchor is also an object.

        Returns:
            ``(assigned_annotations (A, 5), objects_mask (A,), background_mask (A,), ious (A,))``.
        """
        if annotations.dim() != 2 or annotations.shape[-1] != 5:
            raise ValueError(f"annotations must be (M, 5), got shape {tuple(annotations.shape)}")
        batch = assign_batch(anchors, annotations[None], thresholds,
                             allow_low_quality_matches=allow_low_quality_matches)
        return Assignment(*(t[0] for t in batch))
