"""Long-tailed class frequencies with LVIS's buckets, and their placement on canvases.

LVIS sorts a class by the number of training *images* that contain it: rare 1-10, common 11-100,
frequent more than 100 (LVIS v1: 337 / 461 / 405 of its 1,203 classes). Here each class is given
a bucket and a number of training images drawn inside it; the canvases are then filled so that
every class appears in exactly that many images, at most once per image, so the realized buckets
are the drawn ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BUCKETS", "LVIS_V1_SHARES", "assign_classes", "bucket_sizes", "draw_image_counts",
           "frequency", "objects_per_image"]

#: LVIS's frequency buckets: letter -> inclusive range of training images containing the class
#: (the frequent bucket's upper end is set per dataset).
BUCKETS = {"r": (1, 10), "c": (11, 100), "f": (101, None)}
LVIS_V1_SHARES = (337.0, 461.0, 405.0)  # classes of LVIS v1 per bucket: rare, common, frequent


def frequency(image_count: int) -> str:
    """The LVIS bucket letter of a class contained in ``image_count`` (>= 1) training images."""
    return "r" if image_count <= BUCKETS["r"][1] else "c" if image_count <= BUCKETS["c"][1] else "f"


def bucket_sizes(classes: int, shares: Sequence[float]) -> tuple[int, int, int]:
    """How many of ``classes`` classes are rare, common and frequent for bucket ``shares`` (any
    non-negative weights): proportional, rounded by largest remainder (ties to the rarer bucket)."""
    exact = classes * np.asarray(shares, np.float64) / float(np.sum(shares))
    sizes = np.floor(exact).astype(np.int64)
    for bucket in np.argsort(-(exact - sizes), kind="stable")[: classes - int(sizes.sum())]:
        sizes[bucket] += 1
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def draw_image_counts(rng: np.random.Generator, sizes: tuple[int, int, int],
                      max_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The bucket and number of training images of each class.

    Buckets are dealt to the classes in a random order; within its bucket's range a class's count
    is log-uniform (many classes near the bucket's lower end, as in a power law); the frequent
    bucket ends at ``max_images``.

    Returns:
        buckets (C,) int64 as 0 rare, 1 common, 2 frequent; counts (C,) int64.
    """
    buckets = rng.permutation(np.repeat(np.arange(3), sizes))
    ranges = np.array([BUCKETS["r"], BUCKETS["c"], (BUCKETS["f"][0], max_images)], np.float64)  # (3, 2)
    lo, hi = ranges[buckets, 0], ranges[buckets, 1]
    counts = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))).astype(np.int64)
    return buckets, np.clip(counts, lo.astype(np.int64), hi.astype(np.int64))


def objects_per_image(rng: np.random.Generator, total: int, per_image: tuple[int, int]) -> np.ndarray:
    """Objects of each canvas, uniform in ``per_image`` until ``total`` objects are reached (the
    last canvas takes what is left), (N,) int64."""
    lo, hi = per_image
    draws = rng.integers(lo, hi + 1, size=total // lo + 1)
    ends = np.cumsum(draws)
    count = int(np.searchsorted(ends, total)) + 1  # the first canvas whose running total reaches `total`
    sizes = draws[:count].copy()
    sizes[-1] -= int(ends[count - 1]) - total
    return sizes


def assign_classes(rng: np.random.Generator, counts: np.ndarray, capacities: np.ndarray) -> list[np.ndarray]:
    """Places class ``c`` on ``counts[c]`` distinct canvases, filling each canvas's capacity.

    Classes go largest count first, each to the canvases with the most room left (random among
    equals): the greedy that realizes any feasible table of counts and capacities (Gale-Ryser).

    Args:
        rng: Breaks ties between canvases.
        counts: (C,) canvases per class; ``counts.sum() == capacities.sum()``.
        capacities: (N,) objects per canvas.

    Returns:
        Per canvas, the labels of its objects (distinct), in placement order: views of one array
        of all the objects' labels, so memory stays linear in the number of objects.

    Raises:
        ValueError: When no such placement exists (a class on more canvases than there are).
    """
    room = capacities.astype(np.int64).copy()
    placed = np.argsort(-counts, kind="stable")
    placed = placed[counts[placed] > 0]  # the classes in placement order
    label = np.repeat(placed, counts[placed])  # (objects,) the class of each object, in placement order
    canvas = np.empty(len(label), np.int64)  # (objects,) its canvas, filled class by class
    first = 0
    for class_label in placed:  # one greedy step per class (each depends on the room the last one left)
        count = int(counts[class_label])
        chosen = np.argpartition(-(room + rng.random(len(room))), count - 1)[:count] if count <= len(room) else None
        if chosen is None or room[chosen].min() <= 0:
            raise ValueError(f"cannot place a class on {count} distinct canvases of {len(room)}; "
                             "allow more objects per image or fewer images per class")
        room[chosen] -= 1
        canvas[first : first + count] = chosen  # copied: a view would keep the whole (N,) partition alive
        first += count
    order = np.argsort(canvas, kind="stable")
    by_canvas = label[order]  # (objects,) labels grouped by canvas, once: memory linear in the objects
    bounds = np.searchsorted(canvas[order], np.arange(len(capacities) + 1))
    return [by_canvas[start:end] for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
