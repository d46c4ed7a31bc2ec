"""The NumPy fuzzy c-means reference against scikit-fuzzy, a direct double loop and its closed forms."""

import math

import numpy as np
import pytest

from conftest import mixture
from kmeans_transformer.reference import (
    ClusteringResult,
    assign_labels,
    fuzzy_cmeans,
    fuzzy_memberships,
    inertia,
    lloyd,
)


def relative_error(actual, expected) -> float:
    """`max |a - e| / max |e|`: the error relative to the scale of `expected` (robust to entries near 0)."""
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def generic_problem(seed, n, k, d, components=None):
    """Gaussian-mixture points and `k` initial centroids near (never on) points of it."""
    rng = np.random.default_rng(seed)
    points = mixture(rng, n, d, components or k)
    initial = points[rng.choice(n, k, replace=False)] + 0.1 * rng.normal(size=(k, d))
    return points, initial


# 1. scikit-fuzzy


# skfuzzy.cluster.cmeans(data (d, n), c, m, error, maxiter, init=(k, n) memberships) runs `while p < maxiter`, each
# step centroids-from-memberships then memberships-from-centroids, and stops early only when
# `norm(u - u_prev) < error`: with error=0 that never holds, so it runs exactly maxiter steps (it also clamps u and the
# distance ratios below at float64 eps, which generic data never reaches). Started from the memberships of c0, its
# step t is our iteration t.
@pytest.mark.parametrize(
    "m, k, d, T, seed",
    [(1.5, 3, 2, 6, 0), (2.0, 4, 3, 10, 1), (3.0, 5, 8, 7, 2), (2.0, 2, 1, 4, 3), (1.5, 6, 4, 15, 4), (3.0, 3, 2, 12, 5)],
)
def test_fuzzy_cmeans_matches_scikit_fuzzy(m, k, d, T, seed):
    skfuzzy = pytest.importorskip("skfuzzy")
    points, initial = generic_problem(seed, 150, k, d)
    result = fuzzy_cmeans(points, initial, T, m)
    u0 = fuzzy_memberships(points, initial, m)
    for t in range(1, T + 1):
        centroids, u, _, _, _, steps, _ = skfuzzy.cluster.cmeans(points.T, k, m, error=0.0, maxiter=t, init=u0.T)
        assert steps == t
        assert relative_error(result.centroid_history[t], centroids) < 1e-8
    np.testing.assert_allclose(fuzzy_memberships(points, result.centroids, m), u.T, rtol=1e-8, atol=0)
    np.testing.assert_allclose(result.responsibilities, u.T, rtol=1e-8, atol=0)


# 2. A direct double loop


def loop_memberships(points, centroids, m):
    """`u_ij = 1 / Σ_l (d_ij / d_il)^(2/(m-1))`, entry by entry (no point on a centroid)."""
    n, k = len(points), len(centroids)
    distance = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(points[i], centroids[j]))) for j in range(k)] for i in range(n)]
    u = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            u[i, j] = 1.0 / sum((distance[i][j] / distance[i][l]) ** (2.0 / (m - 1.0)) for l in range(k))
    return u


def loop_update(points, u, m):
    """`c_j = Σ_i u_ij^m x_i / Σ_i u_ij^m`, entry by entry."""
    n, d = points.shape
    centroids = np.zeros((u.shape[1], d))
    for j in range(u.shape[1]):
        mass = sum(u[i, j] ** m for i in range(n))
        for i in range(n):
            centroids[j] += u[i, j] ** m * points[i] / mass
    return centroids


@pytest.mark.parametrize("m, k, d, seed", [(1.5, 3, 2, 10), (2.0, 4, 5, 11), (3.0, 2, 3, 12), (1.2, 5, 2, 13)])
def test_fuzzy_cmeans_matches_a_double_loop(m, k, d, seed):
    points, initial = generic_problem(seed, 60, k, d)
    u = loop_memberships(points, initial, m)
    np.testing.assert_allclose(fuzzy_memberships(points, initial, m), u, rtol=1e-12, atol=1e-300)
    result = fuzzy_cmeans(points, initial, 2, m)
    step = loop_update(points, u, m)
    assert relative_error(result.centroid_history[1], step) < 1e-12
    assert relative_error(result.centroid_history[2], loop_update(points, loop_memberships(points, step, m), m)) < 1e-12
    np.testing.assert_array_equal(result.label_history[0], u.argmax(axis=1))


def test_fuzzy_cmeans_result_fields():
    points, initial = generic_problem(20, 80, 4, 3)
    T = 5
    result = fuzzy_cmeans(points, initial, T, 2.0)
    assert isinstance(result, ClusteringResult)
    assert result.centroids.shape == (4, 3) and result.labels.shape == (80,)
    assert result.label_history.shape == (T, 80) and result.label_history.dtype == np.int64
    assert result.centroid_history.shape == (T + 1, 4, 3)
    np.testing.assert_array_equal(result.centroid_history[0], initial)
    np.testing.assert_array_equal(result.centroid_history[-1], result.centroids)
    np.testing.assert_array_equal(result.labels, assign_labels(points, result.centroids))
    np.testing.assert_array_equal(result.labels, result.responsibilities.argmax(axis=1))
    for t in range(T):
        np.testing.assert_array_equal(result.label_history[t], assign_labels(points, result.centroid_history[t]))
    assert result.inertia == inertia(points, result.labels, result.centroids)
    empty = fuzzy_cmeans(points, initial, 0, 2.0)
    assert empty.label_history.shape == (0, 80) and empty.centroid_history.shape == (1, 4, 3)
    np.testing.assert_array_equal(empty.centroids, initial)
    assert fuzzy_cmeans(points.astype(np.float32), initial, 2, 2.0).centroids.dtype == np.float32


@pytest.mark.parametrize("m", [1.0, 0.5, -2.0])
def test_fuzzifier_must_exceed_one(m):
    points, initial = generic_problem(21, 10, 2, 2)
    with pytest.raises(ValueError, match="m > 1"):
        fuzzy_memberships(points, initial, m)
    with pytest.raises(ValueError, match="m > 1"):
        fuzzy_cmeans(points, initial, 1, m)


# 3. Points on centroids


@pytest.mark.parametrize("m", [1.1, 2.0, 5.0])
def test_point_on_a_centroid_takes_membership_one(m):
    points, _ = generic_problem(30, 40, 3, 2)
    initial = points[[3, 10, 25]].copy()
    u = fuzzy_memberships(points, initial, m)
    assert np.isfinite(u).all()
    for row, j in [(3, 0), (10, 1), (25, 2)]:
        np.testing.assert_array_equal(u[row], np.eye(3)[j])
    np.testing.assert_allclose(u.sum(axis=1), 1, rtol=0, atol=1e-14)
    result = fuzzy_cmeans(points, initial, 4, m)
    assert np.isfinite(result.centroid_history).all() and np.isfinite(result.responsibilities).all()


@pytest.mark.parametrize("m", [1.5, 2.0, 3.0])
def test_coinciding_centroids_share_memberships(m):
    points, _ = generic_problem(31, 40, 3, 2)
    initial = points[[7, 7, 20]].copy()
    u = fuzzy_memberships(points, initial, m)
    assert np.isfinite(u).all()
    np.testing.assert_array_equal(u[7], [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(u[20], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(u[:, 0], u[:, 1])
    result = fuzzy_cmeans(points, initial, 3, m)
    assert np.isfinite(result.centroid_history).all()
    np.testing.assert_array_equal(result.centroids[0], result.centroids[1])  # identical centroids stay identical
    np.testing.assert_array_equal(result.labels[result.labels < 2], 0)  # ties go to the first


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_memberships_are_scale_free_at_extreme_scales(scale):
    """`u` depends only on distance ratios: tiny or huge distances neither underflow to a false 0 nor overflow."""
    points, initial = generic_problem(32, 50, 4, 3)
    for m in (1.05, 2.0, 4.0):
        u = fuzzy_memberships(points * scale, initial * scale, m)
        np.testing.assert_allclose(u, fuzzy_memberships(points, initial, m), rtol=1e-9, atol=1e-300)
    with np.errstate(over="ignore"):  # only Lloyd's squared inertia overflows, at 1e300
        result = fuzzy_cmeans(points * scale, initial * scale, 3, 2.0)
    assert relative_error(result.centroids / scale, fuzzy_cmeans(points, initial, 3, 2.0).centroids) < 1e-12


# 4. Closed forms


def test_large_fuzzifier_gives_uniform_memberships():
    points, initial = generic_problem(40, 60, 5, 3)
    for m, tolerance in [(1e4, 1e-3), (1e8, 1e-7), (1e14, 1e-13)]:
        np.testing.assert_allclose(fuzzy_memberships(points, initial, m), 1 / 5, rtol=0, atol=tolerance)


@pytest.mark.parametrize("m", [1.01, 1.5, 2.0, 3.0, 10.0, 1e6])
def test_memberships_sum_to_one(m):
    points, initial = generic_problem(41, 100, 6, 4)
    u = fuzzy_memberships(points, initial, m)
    assert (u >= 0).all() and (u <= 1).all()
    np.testing.assert_allclose(u.sum(axis=1), 1, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(u.argmax(axis=1), assign_labels(points, initial))


def test_fuzzifier_near_one_with_separated_clusters_is_lloyd():
    rng = np.random.default_rng(42)
    centres = 30.0 * np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    points = np.concatenate([c + rng.normal(size=(40, 2)) for c in centres])
    points = points[rng.permutation(len(points))]
    initial = centres + 3.0 * rng.normal(size=(3, 2))
    expected = lloyd(points, initial, 6)
    result = fuzzy_cmeans(points, initial, 6, 1.05)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.label_history, expected.label_history)
    assert relative_error(result.centroid_history, expected.centroid_history) < 1e-9
