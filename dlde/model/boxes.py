"""Box coding: anchors plus regression deltas <-> boxes, all as x1, y1, x2, y2 in pixels."""
from __future__ import annotations

import math

import torch
from torch import Tensor


class BoxCoder:
    """The R-CNN box parameterisation ``(dx, dy, dw, dh)`` relative to an anchor.

    Args:
        weights: divisors of the four deltas (RetinaNet uses 1, 1, 1, 1).
        clamp: largest ``dw``/``dh`` accepted when decoding, so ``exp`` cannot overflow.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that move ``anchors (..., 4)`` onto ``boxes (..., 4)``."""
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        bw = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-6)
        bh = (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-6)
        bx = boxes[..., 0] + 0.5 * bw
        by = boxes[..., 1] + 0.5 * bh
        return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah,
                            ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` from ``anchors (..., 4)`` and ``deltas (..., 4)``."""
        wx, wy, ww, wh = self.weights
        deltas = deltas.to(anchors.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        cx = ax + deltas[..., 0] / wx * aw
        cy = ay + deltas[..., 1] / wy * ah
        w = aw * torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp))
        h = ah * torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp))
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
