"""The NumPy clustering references against scikit-learn, scikit-learn-extra and direct loops written here."""

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import normalize

from kmeans_transformer.reference import (
    ClusteringResult,
    LloydResult,
    gaussian_mixture_em,
    kmedoids,
    linear_quantile,
    lloyd,
    medoid_probabilities,
    soft_kmeans,
    sparse_kmeans,
    sparsemax,
    spherical_kmeans,
    trimmed_kmeans,
)


def blobs(seed, k=4, d=3, per_cluster=40, spread=8.0, scales=None):
    """Points drawn around `k` random centres, shuffled, and `k` distinct points among them as initial centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    scales = scales if scales is not None else [1.0] * k
    points = np.concatenate([c + rng.normal(scale=s, size=(per_cluster, d)) for c, s in zip(centres, scales)])
    points = points[rng.permutation(len(points))]
    initial = points[rng.choice(len(points), k, replace=False)].copy()
    return points, initial


def separated(seed, k=3, d=2, per_cluster=30):
    """Tight clusters far apart, with initial centres near the true ones: every variant's labels are unambiguous."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(k, d) + rng.normal(size=(k, d))
    points = np.concatenate([c + 0.5 * rng.normal(size=(per_cluster, d)) for c in centres])
    return points, centres + 0.3 * rng.normal(size=(k, d))


def assert_result_shapes(result, n, k, d, T):
    assert isinstance(result, ClusteringResult)
    assert result.centroids.shape == (k, d)
    assert result.labels.shape == (n,)
    assert isinstance(result.inertia, float)
    assert result.label_history.shape == (T, n) and result.label_history.dtype == np.int64
    assert result.centroid_history.shape == (T + 1, k, d)
    np.testing.assert_array_equal(result.centroid_history[-1], result.centroids)


def test_lloyd_result_is_the_general_result():
    points, initial = blobs(0)
    result = lloyd(points, initial, 3)
    assert LloydResult is ClusteringResult
    assert result.outliers is None and result.responsibilities is None and result.weights is None
    assert_result_shapes(result, len(points), 4, 3, 3)


# Soft k-means


def test_soft_kmeans_large_inverse_temperature_is_lloyd():
    points, initial = separated(1)
    T = 5
    soft, hard = soft_kmeans(points, initial, T, 1e6), lloyd(points, initial, T)
    assert_result_shapes(soft, len(points), 3, 2, T)
    np.testing.assert_array_equal(soft.label_history, hard.label_history)
    np.testing.assert_array_equal(soft.labels, hard.labels)
    np.testing.assert_allclose(soft.centroid_history, hard.centroid_history, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(soft.inertia, hard.inertia, rtol=1e-12)
    np.testing.assert_array_equal(soft.responsibilities, np.eye(3)[hard.labels])


def test_soft_kmeans_small_inverse_temperature_gives_the_global_mean():
    points, initial = blobs(2)
    result = soft_kmeans(points, initial, 2, 1e-10)
    np.testing.assert_allclose(result.centroids, np.broadcast_to(points.mean(axis=0), (4, 3)), atol=1e-6)
    np.testing.assert_allclose(result.responsibilities, 0.25, atol=1e-6)


def test_soft_kmeans_one_iteration_matches_a_direct_weighted_average():
    points, initial = blobs(3)
    gamma = 0.05
    result = soft_kmeans(points, initial, 1, gamma)
    expected = np.zeros_like(initial)
    for j in range(len(initial)):
        total_weight, weighted_sum = 0.0, np.zeros(points.shape[1])
        for x in points:
            numerators = [math.exp(-gamma * float(((x - c) ** 2).sum())) for c in initial]
            weight = numerators[j] / sum(numerators)
            total_weight += weight
            weighted_sum += weight * x
        expected[j] = weighted_sum / total_weight
    np.testing.assert_allclose(result.centroid_history[1], expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(result.label_history[0], cdist(points, initial, "sqeuclidean").argmin(axis=1))
    np.testing.assert_allclose(result.responsibilities.sum(axis=1), 1.0, rtol=1e-12)


# Spherical k-means


def direct_spherical_kmeans(points, initial, T):
    x, c = normalize(points), normalize(initial)
    history = []
    for _ in range(T):
        labels = np.argmax(x @ c.T, axis=1)
        history.append(labels)
        c = c.copy()
        for j in range(len(c)):
            if (labels == j).any():
                mean = x[labels == j].mean(axis=0)
                if np.linalg.norm(mean) > 0:
                    c[j] = normalize(mean[None])[0]
    return c, np.argmax(x @ c.T, axis=1), np.array(history)


def test_spherical_kmeans_matches_a_direct_implementation():
    rng = np.random.default_rng(4)
    directions = normalize(rng.normal(size=(4, 5)))
    points = np.concatenate([3.0 * (u + 0.3 * rng.normal(size=(30, 5))) for u in directions])
    initial = rng.normal(size=(4, 5))
    T = 6
    result = spherical_kmeans(points, initial, T)
    centroids, labels, history = direct_spherical_kmeans(points, initial, T)
    assert_result_shapes(result, len(points), 4, 5, T)
    np.testing.assert_array_equal(result.label_history, history)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.centroids, centroids, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(result.centroid_history[0], normalize(initial), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(result.centroid_history, axis=2), 1.0, rtol=1e-12)
    expected_inertia = ((normalize(points) - centroids[labels]) ** 2).sum()
    np.testing.assert_allclose(result.inertia, expected_inertia, rtol=1e-10)


def test_spherical_kmeans_rejects_zero_vectors():
    points, initial = blobs(5)
    with pytest.raises(ValueError, match="zero norm"):
        spherical_kmeans(np.vstack([points, np.zeros(3)]), initial, 1)
    with pytest.raises(ValueError, match="zero norm"):
        spherical_kmeans(points, np.vstack([initial[:3], np.zeros(3)]), 1)


def test_spherical_kmeans_members_that_cancel_keep_the_centroid():
    # Both points tie between the two centroids (cosine 0), so both join cluster 0, whose mean is zero.
    points = np.array([[1.0, 0.0], [-1.0, 0.0]])
    initial = np.array([[0.0, 2.0], [0.0, -1.0]])
    result = spherical_kmeans(points, initial, 2)
    np.testing.assert_array_equal(result.label_history, np.zeros((2, 2), dtype=np.int64))
    np.testing.assert_array_equal(result.centroids, [[0.0, 1.0], [0.0, -1.0]])


# Trimmed k-means


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_linear_quantile_is_numpy_linear_quantile(size):
    rng = np.random.default_rng(size)
    values = rng.normal(size=size)
    levels = np.concatenate([[1e-9, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0], rng.uniform(size=30)])
    for q in levels:
        assert linear_quantile(values, q) == np.quantile(values, q, method="linear")
    repeated = np.round(values, 1)  # ties between order statistics
    for q in levels:
        assert linear_quantile(repeated, q) == np.quantile(repeated, q, method="linear")


def test_trimmed_kmeans_quantile_rule_matches_numpy_quantile():
    points, initial = blobs(6)
    q, T = 0.8, 4
    result = trimmed_kmeans(points, initial, T, trim_quantile=q)
    assert_result_shapes(result, len(points), 4, 3, T)
    for t in range(T):
        centroids = result.centroid_history[t]
        distances = cdist(points, centroids, "sqeuclidean")
        labels = distances.argmin(axis=1)
        nearest = distances[np.arange(len(points)), labels]
        outliers = np.zeros(len(points), dtype=bool)
        expected = centroids.copy()
        for j in range(len(centroids)):
            members = labels == j
            if members.any():
                outliers[members] = nearest[members] > np.quantile(nearest[members], q)
                kept = members & ~outliers
                if kept.any():
                    expected[j] = points[kept].mean(axis=0)
        np.testing.assert_array_equal(result.outlier_history[t], outliers)
        np.testing.assert_array_equal(result.label_history[t], np.where(outliers, -1, labels))
        np.testing.assert_allclose(result.centroid_history[t + 1], expected, rtol=1e-12, atol=1e-12)
    assert result.outliers.any() and (result.labels[result.outliers] == -1).all()
    kept = ~result.outliers
    expected_inertia = ((points[kept] - result.centroids[result.labels[kept]]) ** 2).sum()
    np.testing.assert_allclose(result.inertia, expected_inertia, rtol=1e-12)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.33])
def test_trimmed_kmeans_fraction_trims_the_farthest_points(fraction):
    points, initial = blobs(7)
    T = 3
    result = trimmed_kmeans(points, initial, T, trim_fraction=fraction)
    num_trimmed = math.floor(fraction * len(points))
    masks = np.vstack([result.outlier_history, result.outliers])
    np.testing.assert_array_equal(masks.sum(axis=1), num_trimmed)
    for t, outliers in enumerate(masks):
        nearest = cdist(points, result.centroid_history[t], "sqeuclidean").min(axis=1)
        assert nearest[outliers].min() >= nearest[~outliers].max()


def test_trimmed_kmeans_fraction_trims_the_higher_index_on_ties():
    points = np.array([[-1.0], [1.0], [0.5]])
    result = trimmed_kmeans(points, np.array([[0.0]]), 1, trim_fraction=1 / 3)
    np.testing.assert_array_equal(result.outlier_history[0], [False, True, False])
    np.testing.assert_array_equal(result.centroid_history[1], [[(-1.0 + 0.5) / 2]])


@pytest.mark.parametrize("trimming", [{"trim_quantile": 1.0}, {"trim_fraction": 0.0}])
def test_trimmed_kmeans_without_trimming_is_lloyd(trimming):
    points, initial = blobs(8)
    result, expected = trimmed_kmeans(points, initial, 5, **trimming), lloyd(points, initial, 5)
    assert not result.outlier_history.any() and not result.outliers.any()
    np.testing.assert_array_equal(result.label_history, expected.label_history)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.centroid_history, expected.centroid_history)
    assert result.inertia == expected.inertia


@pytest.mark.parametrize(
    "trimming",
    [{}, {"trim_quantile": 0.5, "trim_fraction": 0.1}, {"trim_quantile": 0.0}, {"trim_fraction": 1.0}],
)
def test_trimmed_kmeans_rejects_bad_trimming(trimming):
    points, initial = blobs(9)
    with pytest.raises(ValueError):
        trimmed_kmeans(points, initial, 1, **trimming)


# Sparsemax k-means


def simplex_projection_by_bisection(z):
    """The threshold `τ` with `Σ_i max(z_i - τ, 0) = 1`, found by bisection, then `max(z - τ, 0)`."""
    low, high = z.min() - 1.0, z.max()
    for _ in range(200):
        middle = (low + high) / 2
        if np.maximum(z - middle, 0).sum() > 1:
            low = middle
        else:
            high = middle
    return np.maximum(z - (low + high) / 2, 0)


@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 5.0])
def test_sparsemax_is_the_euclidean_projection_onto_the_simplex(scale):
    rng = np.random.default_rng(10)
    for size in [1, 2, 3, 8, 30]:
        z = scale * rng.normal(size=size)
        p = sparsemax(z)
        # KKT: p on the simplex, p_i = z_i - τ on the support and z_i <= τ off it.
        assert (p >= 0).all()
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)
        support = p > 0
        tau = (z[support] - p[support]).mean()
        np.testing.assert_allclose(z[support] - p[support], tau, atol=1e-12)
        assert (z[~support] <= tau + 1e-12).all()
        np.testing.assert_allclose(p, simplex_projection_by_bisection(z), atol=1e-12)


def test_sparsemax_matches_a_numerical_projection():
    rng = np.random.default_rng(11)
    for _ in range(5):
        z = rng.normal(size=5)
        solution = minimize(
            lambda p: ((p - z) ** 2).sum(),
            np.full(5, 0.2),
            jac=lambda p: 2 * (p - z),
            bounds=[(0, None)] * 5,
            constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1, "jac": lambda p: np.ones_like(p)}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        np.testing.assert_allclose(sparsemax(z), solution.x, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1e-15])
def test_sparse_kmeans_small_inverse_temperature_is_lloyd(gamma):
    points, initial = blobs(12)
    result, expected = sparse_kmeans(points, initial, 5, gamma), lloyd(points, initial, 5)
    assert_result_shapes(result, len(points), 4, 3, 5)
    np.testing.assert_array_equal(result.label_history, expected.label_history)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.centroid_history, expected.centroid_history, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.inertia, expected.inertia, rtol=1e-9)


def test_sparse_kmeans_one_iteration_matches_a_direct_projection():
    points, initial = blobs(13)
    gamma = 0.5
    result = sparse_kmeans(points, initial, 1, gamma)
    distances = cdist(points, initial, "sqeuclidean")
    labels = distances.argmin(axis=1)
    expected = initial.copy()
    for j in range(len(initial)):
        members = labels == j
        p = simplex_projection_by_bisection(-gamma * distances[members, j] / math.sqrt(points.shape[1]))
        expected[j] = p @ points[members]
    assert (result.label_history[0] == labels).all()
    np.testing.assert_allclose(result.centroid_history[1], expected, rtol=1e-10, atol=1e-10)


# k-medoids


def test_kmedoids_one_iteration_matches_a_direct_search():
    points, initial = blobs(14)
    result = kmedoids(points, initial, 1)
    labels = cdist(points, initial, "sqeuclidean").argmin(axis=1)
    for j in range(len(initial)):
        members = np.flatnonzero(labels == j)
        costs = [sum(np.linalg.norm(points[i] - points[other]) for other in members) for i in members]
        np.testing.assert_array_equal(result.centroid_history[1][j], points[members[np.argmin(costs)]])
    np.testing.assert_array_equal(result.label_history[0], labels)


@pytest.mark.parametrize("T", [0, 1, 2, 5, 20])
def test_kmedoids_matches_scikit_learn_extra(T):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sklearn_extra.cluster import KMedoids
    except Exception as error:  # a wheel built against another NumPy fails at import with a ValueError
        pytest.skip(f"scikit-learn-extra is not usable: {error}")
    points, initial = blobs(15 + T, k=4, d=3)
    # With an array `init`, KMedoids finds the rows of X equal to each centre, so the centres are distinct data points.
    # It stops early only at a fixed point, so `max_iter=T` gives the state after exactly T iterations.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = KMedoids(n_clusters=4, metric="euclidean", method="alternate", init=initial, max_iter=T)
        estimator.fit(points)
    result = kmedoids(points, initial, T)
    assert_result_shapes(result, len(points), 4, 3, T)
    np.testing.assert_array_equal(result.centroids, estimator.cluster_centers_)
    np.testing.assert_array_equal(result.labels, estimator.labels_)


def test_medoid_probabilities_are_a_softmax_over_members():
    points, initial = blobs(16)
    centroids = np.vstack([initial, [[500.0, 500.0, 500.0]]])  # the last cluster is empty
    labels = cdist(points, centroids, "sqeuclidean").argmin(axis=1)
    gamma = 0.3
    probabilities = medoid_probabilities(points, labels, centroids, gamma)
    assert probabilities.shape == (5, len(points))
    for j in range(5):
        members = labels == j
        weights = np.exp(-gamma * ((points - centroids[j]) ** 2).sum(axis=1)) * members
        expected = weights / weights.sum() if members.any() else np.zeros(len(points))
        np.testing.assert_allclose(probabilities[j], expected, rtol=1e-10, atol=1e-300)
    np.testing.assert_array_equal(probabilities[4], 0.0)
    # The law of the Gumbel-max draw `argmax_{i∈S_j} (-γ |x_i - c_j|^2 + G_i)`.
    rng = np.random.default_rng(17)
    members = np.flatnonzero(labels == 0)
    logits = -gamma * ((points[members] - centroids[0]) ** 2).sum(axis=1)
    draws = members[np.argmax(logits + rng.gumbel(size=(20000, len(members))), axis=1)]
    frequencies = np.bincount(draws, minlength=len(points)) / len(draws)
    np.testing.assert_allclose(frequencies, probabilities[0], atol=0.015)


# Isotropic Gaussian mixture


@pytest.mark.parametrize("T", [1, 2, 10])
def test_gaussian_mixture_em_matches_scikit_learn(T):
    points, _ = blobs(18, k=3, d=2, per_cluster=60, spread=6.0, scales=[0.7, 1.0, 1.5])
    rng = np.random.default_rng(19)
    means = points[rng.choice(len(points), 3, replace=False)]
    variances, weights = np.array([1.0, 2.0, 0.5]), np.array([0.2, 0.3, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture = GaussianMixture(
            n_components=3,
            covariance_type="spherical",
            reg_covar=0.0,
            max_iter=T,
            tol=0.0,
            n_init=1,
            means_init=means,
            weights_init=weights,
            precisions_init=1 / variances,
            random_state=0,
        ).fit(points)
    assert mixture.n_iter_ == T
    result = gaussian_mixture_em(points, means, variances, weights, T)
    assert_result_shapes(result, len(points), 3, 2, T)
    np.testing.assert_allclose(result.centroids, mixture.means_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.variances, mixture.covariances_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.weights, mixture.weights_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(result.responsibilities, mixture.predict_proba(points), rtol=0, atol=1e-8)
    np.testing.assert_array_equal(result.labels, mixture.predict(points))
    assert result.weight_history.shape == result.variance_history.shape == (T + 1, 3)
    np.testing.assert_array_equal(result.weight_history[0], weights)
    np.testing.assert_array_equal(result.variance_history[0], variances)


# Empty clusters


FAR = np.array([[1e3, 1e3, 1e3]])


def run_with_far_centroid(variant, points, initial, T):
    centroids = np.vstack([initial, FAR])
    if variant == "soft":
        return soft_kmeans(points, centroids, T, 1.0)
    if variant == "spherical":  # pointing away from every point: the smallest cosine
        return spherical_kmeans(np.abs(points) + 0.1, np.vstack([np.abs(initial) + 0.1, -FAR]), T)
    if variant == "trimmed-quantile":
        return trimmed_kmeans(points, centroids, T, trim_quantile=0.9)
    if variant == "trimmed-fraction":
        return trimmed_kmeans(points, centroids, T, trim_fraction=0.1)
    if variant == "sparse":
        return sparse_kmeans(points, centroids, T, 0.5)
    if variant == "kmedoids":
        return kmedoids(points, centroids, T)
    if variant == "gaussian":
        weights = np.full(len(centroids), 1 / len(centroids))
        return gaussian_mixture_em(points, centroids, np.ones(len(centroids)), weights, T)
    raise AssertionError(variant)


@pytest.mark.parametrize(
    "variant", ["soft", "spherical", "trimmed-quantile", "trimmed-fraction", "sparse", "kmedoids", "gaussian"]
)
def test_empty_cluster_keeps_its_centroid(variant):
    points, initial = blobs(20, k=3)
    T = 4
    result = run_with_far_centroid(variant, points, initial, T)
    assert_result_shapes(result, len(points), 4, 3, T)
    kept = np.broadcast_to(result.centroid_history[0, 3], (T + 1, 3))
    np.testing.assert_array_equal(result.centroid_history[:, 3], kept)
    assert not (result.label_history == 3).any() and not (result.labels == 3).any()
    assert np.isfinite(result.centroid_history).all() and np.isfinite(result.inertia)
    if result.responsibilities is not None:
        assert np.isfinite(result.responsibilities).all()
        np.testing.assert_array_equal(result.responsibilities[:, 3], 0.0)
    if variant == "gaussian":
        np.testing.assert_array_equal(result.weight_history[1:, 3], 0.0)
        np.testing.assert_array_equal(result.variance_history[:, 3], 1.0)
        assert np.isfinite(result.variance_history).all()


@pytest.mark.parametrize(
    "variant", ["soft", "spherical", "trimmed-quantile", "trimmed-fraction", "sparse", "kmedoids", "gaussian"]
)
def test_variants_compute_in_the_dtype_of_the_points(variant):
    points, initial = blobs(21, k=3)
    result = run_with_far_centroid(variant, points.astype(np.float32), initial.astype(np.float32), 2)
    assert result.centroids.dtype == result.centroid_history.dtype == np.float32
    for field in ("responsibilities", "weights", "variances"):
        if getattr(result, field) is not None:
            assert getattr(result, field).dtype == np.float32
