"""What the detector accepts as images: finite values within a bound, maps large enough for its norms.

:meth:`dlde.RetinaNet.check_images` applies these checks before any state changes (weights,
BatchNorm statistics, tracked means); a trainer can ask :func:`image_problem` first, e.g. to agree
over processes before refusing a step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: Largest ``|pixel|`` a normalized image may hold. Normalized pixels lie within a few units (ImageNet
#: statistics map [0, 1] to about [-2.1, 2.7]; even unnormalized 0..255 values stay below 300). The
#: first BatchNorm of the backbone squares conv outputs of the pixels to form its batch variance, in
#: float32, whose largest value is 3.4e38: 1e20 pixels overflow it to inf and every later image
#: scores nothing. At ``|x| <= 1e4`` the squares stay near 1e8 times the squared weight norms, some
#: thirty orders of magnitude below the overflow (and below float16's 65504 as a plain value).
MAX_ABS_PIXEL = 1e4


def all_finite(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is finite, in one pass without a ``(N,)`` mask: NaN
    propagates through ``aminmax`` and an infinity shows in its min or max."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def image_problem(images: Tensor) -> str | None:
    """What is wrong with the values of ``images (B, 3, H, W)``, or None: a NaN or infinite value,
    or a value beyond ``±MAX_ABS_PIXEL``. One ``aminmax`` pass; the offending image is looked up
    only when there is one."""
    if images.numel() == 0:
        return None
    low, high = torch.aminmax(images)
    if bool((low >= -MAX_ABS_PIXEL) & (high <= MAX_ABS_PIXEL)):  # False for NaN
        return None
    batch = images.shape[0]
    flat = images.detach().flatten(1)  # (B, 3 * H * W)
    finite = torch.isfinite(flat).all(dim=1)  # (B,)
    if not finite.all():
        index = int((~finite).nonzero()[0])
        return (f"images hold non-finite values, NaN or infinite (image {index} of {batch}): they would score "
                "nothing and, in training, ruin BatchNorm's statistics; clean the data (dlde.data.DetectionTransform "
                "refuses such images), or build the model with check_inputs=False to skip this check")
    largest = flat.abs().amax(dim=1)  # (B,)
    index = int((largest > MAX_ABS_PIXEL).nonzero()[0])
    return (f"images hold values up to {float(largest[index]):.3g} in absolute value (image {index} of {batch}), "
            f"beyond the bound {MAX_ABS_PIXEL:g} of normalized pixels (they would overflow BatchNorm's variance); "
            "normalize them, (x - mean) / std as dlde.data.DetectionTransform does, or build the model with "
            "check_inputs=False to skip this check")


def check_image_values(images: Tensor) -> None:
    """Raise ``FloatingPointError`` with :func:`image_problem`'s one-line message, if any."""
    problem = image_problem(images)
    if problem is not None:
        raise FloatingPointError(problem)


def _cells(height: int, width: int, stride: int) -> int:
    """Locations of the feature map at ``stride`` (each convolution stage rounds up)."""
    return math.ceil(height / stride) * math.ceil(width / stride)


def check_norm_sizes(batch: int, height: int, width: int, *, batchnorm_stride: int | None,
                     groupnorm: tuple[int, int] | None) -> None:
    """Refuse a batch on which a normalization layer would see one value per channel or group
    (torch's "Expected more than 1 value per channel when training", raised deep in the forward
    and, for GroupNorm, in eval mode too), naming the image size and the smallest that works.
    GroupNorm normalizes each image on its own, so a batch of several such images silences torch's
    error but not the problem: the message says what that pyramid level sees (nothing) and does
    not offer larger batches as a fix.

    Args:
        batch, height, width: the batch ``(B, 3, H, W)``.
        batchnorm_stride: stride of the deepest backbone stage when its BatchNorm layers are in
            training mode (they use batch statistics), else None.
        groupnorm: ``(channels per group, stride of the coarsest pyramid level)`` of the head
            towers' GroupNorm (applied in every mode), or None without GroupNorm.

    Raises:
        ValueError: only for a batch of one image whose map at that stride is 1x1.
    """
    if batch != 1:
        return
    size = f"a batch of one {height}x{width} image"
    if batchnorm_stride is not None and _cells(height, width, batchnorm_stride) == 1:
        raise ValueError(f"{size} is too small to train: the backbone's BatchNorm sees a 1x1 map at stride "
                         f"{batchnorm_stride}, one value per channel; use images larger than {batchnorm_stride} px "
                         "on a side, or batches of two or more")
    if groupnorm is not None:
        channels, stride = groupnorm
        if channels == 1 and _cells(height, width, stride) == 1:
            raise ValueError(f"{size} is too small for this model: the GroupNorm of the head towers (1 channel "
                             f"per group) sees a 1x1 map at stride {stride}, one value per group, which it "
                             "normalizes to zero: the heads of that pyramid level would see nothing of the image "
                             "and predict the same scores and boxes for every image (in a batch of two or more "
                             "as well, where torch raises no error); only the levels whose maps are larger than "
                             f"1x1 see it. Use images larger than {stride} px on a side, leave that level out of "
                             "the pyramid (fpn_levels), or widen the heads (more channels per GroupNorm group)")
