"""Detection transforms (resize, flip, normalize, pad) and batch collation.

Annotations everywhere are float tensors (M, 5) holding ``x1, y1, x2, y2, label`` with box
corners in pixels of the image they accompany.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DetectionTransform", "collate"]


class DetectionTransform:
    """Resize, optional horizontal flip, normalization and padding of one image and its boxes.

    The resize keeps the aspect ratio and follows torchvision's ``GeneralizedRCNNTransform``
    rule: the short side becomes ``min_size`` unless the long side would then exceed
    ``max_size``, in which case the long side becomes ``max_size``. Boxes are multiplied by
    the same factor, which :meth:`scale` returns, so predictions map back to the original
    image by dividing by it. Padding adds zeros (after normalization) at the bottom and right
    only, so it never moves box coordinates.

    Args:
        min_size: Target short side, in pixels.
        max_size: Largest allowed long side, in pixels.
        flip_prob: Probability of a horizontal flip (0 for evaluation).
        mean: Per-channel mean subtracted after the resize.
        std: Per-channel standard deviation divided by.
        size_divisor: Pad height and width up to a multiple of this (1 disables padding).
        seed: Seed of the flip's random generator; ``None`` uses torch's global generator.
    """

    def __init__(
        self,
        *,
        min_size: int = 512,
        max_size: int = 1024,
        flip_prob: float = 0.0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisor: int = 32,
        seed: int | None = None,
    ) -> None:
        if min_size < 1 or max_size < min_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values, got mean={mean}, std={std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.size_divisor = int(size_divisor)
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size}, "
            f"flip_prob={self.flip_prob}, mean={self.mean}, std={self.std}, "
            f"size_divisor={self.size_divisor}, seed={self.seed})"
        )

    def scale(self, h: int, w: int) -> float:
        """Returns the resize factor applied to an image of height ``h`` and width ``w``."""
        factor = self.min_size / min(h, w)
        if max(h, w) * factor > self.max_size:
            factor = self.max_size / max(h, w)
        return factor

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Returns (height, width) after the resize, before padding."""
        factor = self.scale(h, w)
        return max(1, round(h * factor)), max(1, round(w * factor))

    def __call__(
        self, image: torch.Tensor, annotations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transforms one image and its annotations.

        Args:
            image: (3, H, W) floating point (any float dtype) in [0, 1], all finite.
            annotations: (M, 5) as x1, y1, x2, y2, label in pixels of ``image``, all finite.

        Returns:
            image: (3, H', W') float32 normalized, with H' and W' multiples of
                ``size_divisor``.
            annotations: (M, 5) new float32 tensor, boxes in pixels of the resized image.

        Raises:
            ValueError: On a wrong shape, an integer image (e.g. uint8 0..255), or a
                non-finite pixel or annotation value.
        """
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(
                f"expected a floating point image in [0, 1], got dtype {image.dtype} "
                "(divide 8-bit images by 255)"
            )
        if annotations.ndim != 2 or annotations.shape[1] != 5:
            raise ValueError(
                f"expected annotations of shape (M, 5), got {tuple(annotations.shape)}"
            )
        bad = int((~torch.isfinite(image)).sum())
        if bad:
            raise ValueError(f"image holds {bad} non-finite (NaN or inf) values")
        if not torch.isfinite(annotations).all():
            raise ValueError(f"annotations hold non-finite values: {annotations.tolist()}")
        image = image.float()  # float64 or float16 in, float32 out: what the detector expects
        annotations = annotations.float()
        h, w = image.shape[-2:]
        factor = self.scale(h, w)
        new_h, new_w = self.resized_size(h, w)
        image = F.interpolate(
            image[None],
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=factor < 1.0,
        )[0]
        annotations = annotations.clone()  # .float() may have returned the input itself
        annotations[:, :4] *= factor

        if self.flip_prob > 0 and torch.rand((), generator=self._generator) < self.flip_prob:
            image = image.flip(-1)
            x1 = annotations[:, 0].clone()
            annotations[:, 0] = new_w - annotations[:, 2]
            annotations[:, 2] = new_w - x1

        mean = image.new_tensor(self.mean)[:, None, None]
        std = image.new_tensor(self.std)[:, None, None]
        image = (image - mean) / std

        d = self.size_divisor
        pad_h, pad_w = -new_h % d, -new_w % d
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))  # (left, right, top, bottom)
        return image, annotations


def collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks a list of ``(image, annotations)`` pairs into padded batch tensors.

    Args:
        batch: B pairs of image (3, H_i, W_i) and annotations (M_i, 5).

    Returns:
        images: (B, 3, H_max, W_max), zero-padded at the bottom and right.
        annotations: (B, M_max, 5) with M_max = max(1, max M_i); padding rows are all -1
            (so label -1 marks them).
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    kinds = {(img.ndim, img.shape[0] if img.ndim else None, img.dtype) for img in images}
    if len(kinds) != 1 or next(iter(kinds))[0] != 3:
        raise ValueError(
            "collate needs images of one shape (C, H, W) and one dtype, got "
            f"{[(tuple(img.shape), str(img.dtype)) for img in images]}"
        )
    h_max = max(img.shape[-2] for img in images)
    w_max = max(img.shape[-1] for img in images)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], h_max, w_max))
    m_max = max(1, max(t.shape[0] for t in targets))
    out_targets = targets[0].new_full((len(targets), m_max, 5), -1.0, dtype=torch.float32)
    for i, (img, t) in enumerate(zip(images, targets)):  # loop over images, not boxes
        out_images[i, :, : img.shape[-2], : img.shape[-1]] = img
        out_targets[i, : t.shape[0]] = t
    return out_images, out_targets
