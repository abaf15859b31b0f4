"""Analysis of tracked class means and anchor embeddings (numpy in, numpy out).

Every function is pure and accepts numpy arrays or torch tensors (converted with
:func:`to_numpy`); results are float64 numpy arrays. A class mean that is all zeros
(a class not seen yet) has no direction: every quantity that needs its direction is NaN.

Angles are in degrees. Embeddings and means need not be unit norm: they are
normalized here, and zero vectors are treated as "no direction".
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from dlde.model.means import concentration_from_sums, kappa_from_resultant

_EPS = 1e-12

__all__ = [
    "angular_steps",
    "angle_to_final",
    "cosine_matrix",
    "mean_resultant_length",
    "concentration",
    "concentration_from_sums",
    "cosine_margins",
    "umap_2d",
    "umap_sphere",
    "project_with_means",
]


def to_numpy(x: Any) -> np.ndarray:
    """Returns ``x`` as a float64 numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _to_labels(labels: Any, num_classes: int, n: int) -> np.ndarray:
    """Returns integer labels (N,) and raises if any is outside ``[0, num_classes)``."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got {np.unique(labels[bad]).tolist()} "
            "(filter out background/ignored anchors first)"
        )
    return labels


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalizes the last axis.

    Args:
        x: (..., d) vectors.

    Returns:
        ``(u, valid)``: (..., d) unit vectors (zero where the input is zero) and a
        (...,) bool mask of vectors with a direction.
    """
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    valid = norm[..., 0] > _EPS
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > _EPS)
    return u, valid


def _angle_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors along the last axis (broadcasting).

    Uses ``2·atan2(|u − v|, |u + v|)``, which stays accurate for tiny angles where
    ``arccos`` of a cosine near 1 loses half the digits.
    """
    diff = np.linalg.norm(u - v, axis=-1)
    summ = np.linalg.norm(u + v, axis=-1)
    return np.degrees(2.0 * np.arctan2(diff, summ))


def angular_steps(history: Any) -> np.ndarray:
    """Angle each class mean moved between consecutive epochs.

    Args:
        history: (E+1, C, d) class means after each epoch; row 0 is before training.
            A class never seen yet may have an all-zero mean.

    Returns:
        (E, C) degrees between epoch ``e`` and ``e+1``; NaN where either mean is zero.
    """
    h = to_numpy(history)
    if h.ndim != 3:
        raise ValueError(f"history must be (E+1, C, d), got shape {h.shape}")
    u, valid = _unit(h)
    steps = _angle_deg(u[1:], u[:-1])  # (E, C)
    steps[~(valid[1:] & valid[:-1])] = np.nan
    return steps


def angle_to_final(history: Any) -> np.ndarray:
    """Angle between each epoch's class mean and the final one.

    Args:
        history: (E+1, C, d) class means after each epoch; row 0 is before training.

    Returns:
        (E+1, C) degrees to the last epoch's mean (last row 0); NaN where either is zero.
    """
    h = to_numpy(history)
    if h.ndim != 3:
        raise ValueError(f"history must be (E+1, C, d), got shape {h.shape}")
    u, valid = _unit(h)
    angles = _angle_deg(u, u[-1:])  # (E+1, C)
    angles[~(valid & valid[-1:])] = np.nan
    return angles


def cosine_matrix(means: Any) -> np.ndarray:
    """Cosine similarity between every pair of class means.

    Args:
        means: (C, d) class means.

    Returns:
        (C, C) cosines in [-1, 1]; the row and column of a zero mean are NaN.
    """
    m = to_numpy(means)
    if m.ndim != 2:
        raise ValueError(f"means must be (C, d), got shape {m.shape}")
    u, valid = _unit(m)
    cos = np.clip(u @ u.T, -1.0, 1.0)
    cos[~valid, :] = np.nan
    cos[:, ~valid] = np.nan
    return cos


def mean_resultant_length(
    embeddings: Any, labels: Any, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean resultant length R̄ = |Σ uᵢ| / n of each class's unit embeddings.

    Embeddings are normalized first; zero embeddings have no direction and are dropped
    (they count in neither the sum nor ``counts``).

    Args:
        embeddings: (N, d) embeddings.
        labels: (N,) integer class ids in ``[0, num_classes)``; anything else raises.
        num_classes: C.

    Returns:
        ``(r_bar, counts)``: (C,) R̄ in [0, 1] (NaN for classes without samples) and
        (C,) int64 number of samples per class.
    """
    x = to_numpy(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {x.shape}")
    labels = _to_labels(labels, num_classes, x.shape[0])
    u, valid = _unit(x)
    u, labels = u[valid], labels[valid]
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, labels, u)  # (C, d) resultant vectors
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    norms = np.linalg.norm(sums, axis=1)
    r_bar = np.full(num_classes, np.nan)
    np.divide(norms, counts, out=r_bar, where=counts > 0)
    return np.minimum(r_bar, 1.0), counts


def concentration(embeddings: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Estimated vMF concentration κ̂ of each class (Banerjee et al., JMLR 2005).

    κ̂ ≈ R̄(d − R̄²)/(1 − R̄²), with R̄ from :func:`mean_resultant_length`. R̄ is clipped to
    ``1 − 1e-7`` so identical vectors give a large finite κ̂ (≈ (d − 1)·5e6) rather
    than inf.

    Args:
        embeddings: (N, d) embeddings (normalized here).
        labels: (N,) integer class ids in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        (C,) κ̂ ≥ 0; NaN for classes with fewer than 2 samples.
    """
    x = to_numpy(embeddings)
    r_bar, counts = mean_resultant_length(x, labels, num_classes)
    return kappa_from_resultant(r_bar, counts, x.shape[1])


def cosine_margins(embeddings: Any, labels: Any, means: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each embedding to its own class mean and to the nearest other mean.

    Args:
        embeddings: (N, d) embeddings (normalized here).
        labels: (N,) integer class ids in ``[0, C)``.
        means: (C, d) class means; zero means are ignored.

    Returns:
        ``(own, nearest_other)``: (N,) cosine to the own class mean (NaN if that mean is
        zero or the embedding is zero) and (N,) max cosine to any other non-zero mean
        (NaN if there is none). ``own − nearest_other`` is the classification margin.
    """
    x = to_numpy(embeddings)
    m = to_numpy(means)
    if x.ndim != 2 or m.ndim != 2 or x.shape[1] != m.shape[1]:
        raise ValueError(f"need embeddings (N, d) and means (C, d), got {x.shape} and {m.shape}")
    num_classes = m.shape[0]
    labels = _to_labels(labels, num_classes, x.shape[0])
    u, u_valid = _unit(x)
    mu, m_valid = _unit(m)
    cos = np.clip(u @ mu.T, -1.0, 1.0)  # (N, C)
    cos[~u_valid, :] = np.nan
    rows = np.arange(x.shape[0])
    own = cos[rows, labels]
    own[~m_valid[labels]] = np.nan

    others = np.where(m_valid[None, :], cos, -np.inf)
    others[rows, labels] = -np.inf
    nearest_other = others.max(axis=1, initial=-np.inf)
    nearest_other[~np.isfinite(nearest_other)] = np.nan
    nearest_other[~u_valid] = np.nan
    return own, nearest_other


def _fit_umap(points: Any, *, n_components: int, output_metric: str, seed: int,
              n_neighbors: int, min_dist: float, n_epochs: int | None) -> np.ndarray:
    """Fits UMAP with ``metric="cosine"`` and returns the (N, n_components) layout."""
    import umap  # slow first import (numba JIT); keep it out of `import dlde`

    x = to_numpy(points)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"points must be (N, d) with N >= 3, got shape {x.shape}")
    reducer = umap.UMAP(
        n_components=n_components,
        metric="cosine",
        output_metric=output_metric,
        n_neighbors=min(n_neighbors, x.shape[0] - 1),
        min_dist=min_dist,
        n_epochs=n_epochs,
        random_state=seed,
        n_jobs=1,  # a random_state forces single-threaded fitting anyway
    )
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def umap_2d(points: Any, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int | None = None) -> np.ndarray:
    """2-D UMAP layout of directions (``metric="cosine"``).

    The fit is deterministic for a given ``seed`` (passed as ``random_state``, which
    makes umap-learn run single-threaded).

    Args:
        points: (N, d) embeddings, N >= 3. ``n_neighbors`` is capped at N − 1.
        seed: random_state for UMAP.
        n_neighbors: UMAP neighbourhood size.
        min_dist: UMAP minimum distance between embedded points.
        n_epochs: optimization epochs; None lets UMAP choose (200 or 500).

    Returns:
        (N, 2) layout coordinates.
    """
    return _fit_umap(points, n_components=2, output_metric="euclidean", seed=seed,
                     n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs)


def _spherical_to_xyz(angles: np.ndarray) -> np.ndarray:
    """Converts umap's haversine output (a, b) (N, 2) to unit xyz (N, 3).

    x = sin(a)cos(b), y = sin(a)sin(b), z = cos(a): ``a`` acts as the polar angle
    (colatitude) and ``b`` as the longitude, as in the umap-learn docs ("Embedding to
    non-Euclidean spaces"). This is the convention of ``umap.distances.haversine_grad``,
    the distance the layout is optimized with, so great-circle angles between the xyz
    points equal the distances UMAP optimized. (``umap.distances.haversine`` without the
    gradient reads ``a`` as a latitude instead; it is not used by the optimizer.)
    """
    a, b = angles[:, 0], angles[:, 1]
    return np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], axis=1)


def umap_sphere(points: Any, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                n_epochs: int | None = None) -> np.ndarray:
    """UMAP layout of directions onto the unit 2-sphere (``output_metric="haversine"``).

    Args:
        points: (N, d) embeddings, N >= 3.
        seed: random_state for UMAP (deterministic, single-threaded fit).
        n_neighbors: UMAP neighbourhood size (capped at N − 1).
        min_dist: UMAP minimum distance between embedded points.
        n_epochs: optimization epochs; None lets UMAP choose.

    Returns:
        (N, 3) unit vectors xyz; see :func:`_spherical_to_xyz` for the convention.
    """
    angles = _fit_umap(points, n_components=2, output_metric="haversine", seed=seed,
                       n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs)
    return _spherical_to_xyz(angles)


def project_with_means(
    embeddings: Any,
    means: Any,
    *,
    kind: Literal["2d", "sphere"] = "2d",
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeds anchors and class means in one UMAP picture.

    UMAP is fit on the concatenation of the embeddings and the non-zero class means,
    so the means land among the points they summarize.

    Args:
        embeddings: (N, d) embeddings.
        means: (C, d) class means; zero means are left out of the fit.
        kind: "2d" for :func:`umap_2d`, "sphere" for :func:`umap_sphere`.
        seed: random_state for UMAP.
        n_neighbors: UMAP neighbourhood size.
        min_dist: UMAP minimum distance.
        n_epochs: optimization epochs; None lets UMAP choose.

    Returns:
        ``(points, mean_points)``: (N, k) and (C, k) with k = 2 for "2d" and 3 for
        "sphere"; row c of ``mean_points`` is class c's mean, NaN for zero means.
    """
    x = to_numpy(embeddings)
    m = to_numpy(means)
    if x.ndim != 2 or m.ndim != 2 or x.shape[1] != m.shape[1]:
        raise ValueError(f"need embeddings (N, d) and means (C, d), got {x.shape} and {m.shape}")
    fits = {"2d": (umap_2d, 2), "sphere": (umap_sphere, 3)}
    if kind not in fits:
        raise ValueError(f"kind must be '2d' or 'sphere', got {kind!r}")
    fit, k = fits[kind]
    _, valid = _unit(m)
    joint = fit(np.concatenate([x, m[valid]]), seed=seed, n_neighbors=n_neighbors,
                min_dist=min_dist, n_epochs=n_epochs)  # (N + C_valid, k)
    mean_points = np.full((m.shape[0], k), np.nan)
    mean_points[valid] = joint[x.shape[0]:]
    return joint[: x.shape[0]], mean_points
