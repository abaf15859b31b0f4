"""Tests for dlde.analysis.embeddings: closed forms for angles, cosines, R̄/κ̂ and margins; UMAP contracts."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from dlde.analysis.embeddings import (
    _spherical_to_xyz,
    angle_to_final,
    angular_steps,
    concentration,
    cosine_margins,
    cosine_matrix,
    mean_resultant_length,
    project_with_means,
    umap_2d,
    umap_sphere,
)


def _rotating_history(step_deg: float, epochs: int, d: int = 5) -> np.ndarray:
    """(E+1, 2, d): class 0 rotates by step_deg per epoch in the e0-e1 plane with a varying
    norm; class 1 is zero for epochs 0 and 1, then rotates by 2·step_deg in the e2-e3 plane."""
    e = np.arange(epochs + 1)
    t = np.radians(step_deg) * e
    h = np.zeros((epochs + 1, 2, d))
    h[:, 0, 0], h[:, 0, 1] = np.cos(t), np.sin(t)
    h[:, 0] *= (1.0 + e)[:, None]  # magnitudes must not matter
    h[:, 1, 2], h[:, 1, 3] = 0.3 * np.cos(2 * t), 0.3 * np.sin(2 * t)
    h[:2, 1] = 0.0
    return h


def test_angular_steps_match_known_rotation():
    steps = angular_steps(_rotating_history(7.5, epochs=4))
    assert steps.shape == (4, 2)
    assert_allclose(steps[:, 0], 7.5, atol=1e-10)
    assert np.isnan(steps[:2, 1]).all()  # zero mean at epoch 0 and 1
    assert_allclose(steps[2:, 1], 15.0, atol=1e-10)


def test_angular_steps_tiny_angle_is_accurate():
    steps = angular_steps(_rotating_history(1e-6, epochs=2))
    assert_allclose(steps[:, 0], 1e-6, rtol=1e-6)


def test_angle_to_final_matches_known_rotation():
    to_final = angle_to_final(_rotating_history(10.0, epochs=5))
    assert to_final.shape == (6, 2)
    assert_allclose(to_final[:, 0], [50, 40, 30, 20, 10, 0], atol=1e-10)
    assert np.isnan(to_final[:2, 1]).all()
    assert_allclose(to_final[2:, 1], [60, 40, 20, 0], atol=1e-10)


def test_angle_to_final_zero_final_mean_is_nan():
    h = _rotating_history(10.0, epochs=3)
    h[-1, 0] = 0.0
    assert np.isnan(angle_to_final(h)[:, 0]).all()


def test_angles_accept_torch_and_antipodal():
    h = torch.zeros(2, 1, 3, dtype=torch.float32)
    h[0, 0, 0], h[1, 0, 0] = 1.0, -2.0
    assert_allclose(angular_steps(h), [[180.0]])


def test_cosine_matrix_of_orthonormal_means_is_identity():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 4)))  # (16, 4) orthonormal
    means = q.T * np.array([[0.5], [1.0], [2.0], [3.0]])  # (4, 16), scaled rows
    assert_allclose(cosine_matrix(means), np.eye(4), atol=1e-12)


def test_cosine_matrix_known_angle_and_zero_mean():
    means = np.array([[1.0, 0.0], [np.cos(np.pi / 3), np.sin(np.pi / 3)], [0.0, 0.0]])
    cos = cosine_matrix(torch.tensor(means))
    assert_allclose(cos[:2, :2], [[1.0, 0.5], [0.5, 1.0]], atol=1e-12)
    assert np.isnan(cos[2]).all() and np.isnan(cos[:, 2]).all()


def test_resultant_length_closed_forms():
    d = 8
    rng = np.random.default_rng(1)
    mu = rng.normal(size=d)
    e = rng.normal(size=d)
    e -= (e @ mu) / (mu @ mu) * mu  # e ⟂ mu
    mu, e = mu / np.linalg.norm(mu), e / np.linalg.norm(e)
    theta = 0.4
    x = np.stack([
        3.0 * mu, 0.5 * mu, 2.0 * mu,                     # class 0: identical directions
        mu, -4.0 * mu,                                    # class 1: antipodal pair
        np.cos(theta) * mu + np.sin(theta) * e,           # class 2: symmetric pair, R̄ = cos θ
        np.cos(theta) * mu - np.sin(theta) * e,
        mu,                                               # class 3: a single sample
    ])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    r_bar, counts = mean_resultant_length(x, labels, num_classes=5)
    assert_array_equal(counts, [3, 2, 2, 1, 0])
    assert_allclose(r_bar[:4], [1.0, 0.0, np.cos(theta), 1.0], atol=1e-12)
    assert np.isnan(r_bar[4])

    kappa = concentration(x, labels, num_classes=5)
    r_max = 1.0 - 1e-7  # documented clip for identical vectors
    c = np.cos(theta)
    assert_allclose(kappa[0], r_max * (d - r_max**2) / (1 - r_max**2), rtol=1e-6)
    assert np.isfinite(kappa[0]) and kappa[0] > 1e7
    assert_allclose(kappa[1], 0.0, atol=1e-12)
    assert_allclose(kappa[2], c * (d - c**2) / (1 - c**2), rtol=1e-12)
    assert np.isnan(kappa[3:]).all()  # < 2 samples


def test_resultant_length_ignores_zero_embeddings_and_accepts_torch():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    r_bar, counts = mean_resultant_length(x, torch.tensor([0, 0, 0]), num_classes=1)
    assert_array_equal(counts, [2])
    assert_allclose(r_bar, [1.0])


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_out_of_range_raise(bad):
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match="labels must lie in"):
        mean_resultant_length(x, np.array([0, bad]), num_classes=3)
    with pytest.raises(ValueError, match="labels must lie in"):
        cosine_margins(x, np.array([bad, 0]), np.eye(3, 4))


def test_concentration_grows_as_noise_shrinks():
    rng = np.random.default_rng(2)
    d, n = 32, 500
    mu = np.zeros(d)
    mu[0] = 1.0
    noise = rng.normal(size=(n, d))
    labels = np.zeros(n, dtype=int)
    kappas = [concentration(mu + s * noise, labels, 1)[0] for s in (1.0, 0.3, 0.1, 0.03)]
    assert np.all(np.diff(kappas) > 0)


def test_concentration_recovers_vmf_kappa():
    stats = pytest.importorskip("scipy.stats")
    d, kappa_true, n = 10, 40.0, 20000
    mu = np.zeros(d)
    mu[3] = 1.0
    x = stats.vonmises_fisher(mu, kappa_true).rvs(n, random_state=np.random.default_rng(3))
    kappa = concentration(x, np.zeros(n, dtype=int), 1)[0]
    assert abs(kappa - kappa_true) / kappa_true < 0.05  # observed ≈ 1%


def test_cosine_margins_hand_built():
    means = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # class 2 unseen
    x = np.array([
        [1.0, 0.0, 0.0],   # label 0: own 1, other 0
        [1.0, 1.0, 0.0],   # label 1: own 1/√2, other 1/√2
        [0.0, 0.0, 5.0],   # label 0: own 0, other 0
        [3.0, -1.0, 0.0],  # label 2: own NaN (zero mean), other = cos to mean 0
        [1.0, 2.0, 2.0],   # label 1: own 2/3, other 1/3
    ])
    labels = np.array([0, 1, 0, 2, 1])
    own, other = cosine_margins(x, labels, means)
    s = 1 / np.sqrt(2)
    assert_allclose(own, [1.0, s, 0.0, np.nan, 2 / 3], atol=1e-12)
    assert_allclose(other, [0.0, s, 0.0, 3 / np.sqrt(10), 1 / 3], atol=1e-12)


def test_cosine_margins_without_other_means_is_nan():
    own, other = cosine_margins(torch.tensor([[1.0, 1.0]]), torch.tensor([0]),
                                torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert_allclose(own, [1 / np.sqrt(2)])
    assert np.isnan(other).all()


def test_sphere_conversion_matches_umap_optimized_distance():
    """Great-circle angles between converted points equal umap's haversine_grad distance."""
    dist = pytest.importorskip("umap.distances")
    rng = np.random.default_rng(4)
    a = rng.uniform(-4, 4, size=(20, 2))
    b = rng.uniform(-4, 4, size=(20, 2))
    xa, xb = _spherical_to_xyz(a), _spherical_to_xyz(b)
    assert_allclose(np.linalg.norm(xa, axis=1), 1.0, atol=1e-12)
    great_circle = np.arccos(np.clip(np.sum(xa * xb, axis=1), -1, 1))
    expected = [dist.haversine_grad(p, q)[0] for p, q in zip(a, b)]
    assert_allclose(great_circle, expected, atol=1e-6)


@pytest.fixture(scope="module")
def clusters():
    """Three tight clusters of 60 points in 16-d plus their directions."""
    rng = np.random.default_rng(5)
    dirs = rng.normal(size=(3, 16))
    x = np.concatenate([dirs[c] + 0.25 * rng.normal(size=(60, 16)) for c in range(3)])
    return x, np.repeat(np.arange(3), 60), dirs


@pytest.mark.slow
def test_umap_2d_shape_finite_deterministic(clusters):
    x, _, _ = clusters
    a = umap_2d(x, seed=1, n_epochs=50)
    b = umap_2d(torch.tensor(x), seed=1, n_epochs=50)
    assert a.shape == (180, 2) and np.isfinite(a).all()
    assert_array_equal(a, b)


@pytest.mark.slow
def test_umap_sphere_unit_deterministic(clusters):
    x, _, _ = clusters
    a = umap_sphere(x, seed=2, n_epochs=50)
    assert a.shape == (180, 3) and np.isfinite(a).all()
    assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-12)
    assert_array_equal(a, umap_sphere(x, seed=2, n_epochs=50))


@pytest.mark.slow
@pytest.mark.parametrize("kind, k", [("2d", 2), ("sphere", 3)])
def test_project_with_means_places_means_among_their_class(clusters, kind, k):
    x, labels, dirs = clusters
    means = np.vstack([dirs, np.zeros(16)])  # class 3 never seen
    points, mean_points = project_with_means(x, means, kind=kind, seed=0, n_epochs=100)
    assert points.shape == (180, k) and mean_points.shape == (4, k)
    assert np.isfinite(points).all() and np.isfinite(mean_points[:3]).all()
    assert np.isnan(mean_points[3]).all()
    for c in range(3):
        nearest = np.argsort(np.linalg.norm(points - mean_points[c], axis=1))[:10]
        assert np.mean(labels[nearest] == c) >= 0.8


def test_project_with_means_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        project_with_means(np.ones((5, 3)), np.eye(3), kind="3d")
