"""Repeat-factor sampling (LVIS, Gupta et al. 2019): images of rare classes are seen more often.

A class ``c`` contained in a fraction ``f_c`` of the training images gets the repeat factor
``r(c) = max(1, sqrt(t / f_c))``: classes in fewer than a fraction ``t`` of the images are
repeated, the rarer the more. Image ``i`` takes the largest factor of its classes,
``r_i = max_{c in i} r(c)`` (1 for an image without objects), and appears ``floor(r_i)`` times in
an epoch plus once more with probability ``r_i - floor(r_i)`` (stochastic rounding: on average
``r_i`` times). The epoch's list is then shuffled. Both draws come from a generator the caller
seeds (the trainer: the run's seed and the epoch), never from the global RNG.

An epoch then holds ``sum_i r_i`` images on average instead of ``N``: its *growth*
``mean_i r_i`` is the factor by which the training budget grows at the same number of epochs.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["GLYPHS_REPEAT_THRESHOLDS", "epoch_copies", "epoch_order", "image_labels", "repeat_factors"]

#: The threshold ``t`` chosen for the glyphs of each number of classes (``--repeat-threshold``):
#: ``glyphs-1000`` 0.005, ``glyphs-300`` 0.0165, ``glyphs-100`` 0.05.
#:
#: Since ``r(c) = sqrt(t N / n_c)`` for a class in ``n_c`` of ``N`` images, ``t N`` is the image
#: count below which a class is repeated. LVIS's ``t = 0.001`` on its ~100k images repeats the
#: classes of fewer than ~100 images. The glyph buckets use LVIS's image counts (rare 1-10, common
#: 11-100, frequent 101-150) on far fewer canvases (4,436 for ``glyphs-1000``, 431 for
#: ``glyphs-100``), each holding 10-16 distinct classes, so most canvases hold a rare or common
#: class and take its factor, frequent classes included. Measured on the training labels: the
#: epoch's growth ``mean r_i``, and each bucket's mean *exposure* (how many times per epoch the
#: images of a class are seen, over their number):
#:
#: ===========  ======  =====  ======  =======================  =============
#: preset       t       t N    growth  exposure rare/com./freq.  rare : freq.
#: ===========  ======  =====  ======  =======================  =============
#: glyphs-1000  0.001   4.4    1.04    1.45 / 1.02 / 1.04       1.40
#: glyphs-1000  0.003   13     1.18    2.39 / 1.10 / 1.18       2.03
#: glyphs-1000  0.005   22     1.38    3.09 / 1.27 / 1.38       2.24
#: glyphs-1000  0.01    44     1.93    4.37 / 1.77 / 1.92       2.28
#: glyphs-1000  0.03    133    3.33    7.57 / 3.06 / 3.33       2.28
#: glyphs-300   0.01    13     1.19    2.46 / 1.10 / 1.19       2.07
#: glyphs-300   0.0165  22     1.38    3.16 / 1.26 / 1.38       2.29
#: glyphs-300   0.02    27     1.49    3.48 / 1.37 / 1.49       2.33
#: glyphs-100   0.001   0.4    1.00    1.00 / 1.00 / 1.00       1.00
#: glyphs-100   0.01    4.3    1.03    1.37 / 1.02 / 1.03       1.32
#: glyphs-100   0.03    13     1.19    2.28 / 1.10 / 1.19       1.92
#: glyphs-100   0.05    22     1.39    2.95 / 1.26 / 1.38       2.13
#: glyphs-100   0.1     43     1.94    4.17 / 1.76 / 1.94       2.15
#: ===========  ======  =====  ======  =======================  =============
#:
#: What changes what a detector learns at a fixed budget of steps is the exposure of the rare
#: classes relative to the frequent ones. It saturates once every canvas holds a class below
#: ``t N`` (``t N`` about 30 here): beyond, every factor grows by the same ``sqrt(t)`` and a larger
#: ``t`` only lengthens the epoch, as more epochs would. ``t N`` of about 22 images, the knee,
#: gives 98 % of the largest rebalancing (rare classes seen 2.2 times as often as frequent
#: ones) for 1.38 times the images per epoch on each set: ``t = 0.005`` on ``glyphs-1000``,
#: ``t = 0.0165`` on ``glyphs-300`` (1,333 canvases),
#: ``t = 0.05`` on ``glyphs-100`` (``t = 0.001``, LVIS's value, hardly repeats anything on sets
#: this small). Common classes are seen a little less than frequent ones at every ``t`` (0.92 of
#: it): the canvases of rare classes hold frequent classes more often than the average canvas does
#: (78 % of their other glyphs against 72 % on ``glyphs-1000``).
GLYPHS_REPEAT_THRESHOLDS: dict[int, float] = {100: 0.05, 300: 0.0165, 1000: 0.005}


def image_labels(dataset) -> tuple[np.ndarray, np.ndarray]:
    """The image and the label of every object of a detection dataset, without decoding an image.

    Args:
        dataset: has ``len(dataset)`` images and ``dataset.targets(index)``, the ``(M, 5)``
            annotations ``x1, y1, x2, y2, label`` of an image (as
            :class:`dlde.data.coco.CocoDetection` has).

    Returns:
        ``images (objects,)`` int64 index of each object's image and ``labels (objects,)`` int64
        its class.
    """
    targets = [dataset.targets(index) for index in range(len(dataset))]  # one read per image, at setup
    counts = np.array([len(target) for target in targets], np.int64)
    labels = torch.cat([target[:, 4] for target in targets]).numpy() if targets else np.zeros(0)
    return np.repeat(np.arange(len(targets)), counts), labels.astype(np.int64)


def repeat_factors(images: np.ndarray, labels: np.ndarray, num_images: int, threshold: float) -> np.ndarray:
    """The repeat factor ``r_i`` of every image (see the module's docstring).

    Args:
        images: ``(objects,)`` index in ``[0, num_images)`` of each object's image.
        labels: ``(objects,)`` class of each object (non-negative integers).
        num_images: N, images of the dataset (those without objects get 1).
        threshold: ``t`` > 0: classes in fewer than ``t * N`` images are repeated.

    Returns:
        ``(N,)`` float64, each at least 1.
    """
    if not threshold > 0:
        raise ValueError(f"the repeat threshold must be > 0, got {threshold}")
    images, labels = np.asarray(images, np.int64), np.asarray(labels, np.int64)
    pairs = np.unique(labels * num_images + images)  # each (class, image) once: a class counts once per image
    classes, holders = np.divmod(pairs, num_images)
    fraction = np.bincount(classes) / num_images  # (C,) f_c; 0 for a label no image holds (never read)
    class_factors = np.sqrt(threshold / np.where(fraction > 0, fraction, 1.0)).clip(min=1.0)  # (C,) r(c)
    factors = np.ones(num_images)
    np.maximum.at(factors, holders, class_factors[classes])  # r_i: the largest r(c) of the image's classes
    return factors


def epoch_copies(factors: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """How often each image appears in one epoch: ``floor(r_i)``, plus one with probability
    ``r_i - floor(r_i)``; ``(N,)`` int64. Draws ``N`` uniforms from ``generator``."""
    factors = torch.as_tensor(np.asarray(factors, np.float64))
    whole = factors.floor()
    extra = torch.rand(len(factors), generator=generator, dtype=torch.float64) < factors - whole
    return (whole + extra).long()


def epoch_order(factors: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """One epoch's image indices, with their repeats (:func:`epoch_copies`), shuffled; ``(sum of copies,)``
    int64. The copies are drawn first, so their count is that of :func:`epoch_copies` with a
    generator in the same state."""
    copies = epoch_copies(factors, generator)
    images = torch.repeat_interleave(torch.arange(len(copies)), copies)
    return images[torch.randperm(len(images), generator=generator)]
