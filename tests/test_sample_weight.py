"""Sample weights: integer weights equal repeated points, for every variant, through the model and the estimator."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SklearnKMeans

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.variants import VARIANTS

# every deterministic form: name and parameters
FORMS = [
    (name, parameters)
    for name, spec in VARIANTS.items()
    for parameters in ({}, {"trim_fraction": 0.25} if name == "trimmed" else None)
    if parameters is not None and not spec.trainable and not spec.resolve({**spec.parameters, **parameters}).random
]


def test_a_trainable_variant_refuses_sample_weight():
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=2, point_dim=2, variant="learned"))
    with pytest.raises(ValueError, match="not supported by the trainable variant"):
        model(torch.randn(6, 2), sample_weight=torch.ones(6))


def _data(seed=0, n=24, d=3, parameters=None):
    """
    Three blobs and integer weights. `trim_fraction` trims whole points (a repeated point may lose part of its
    copies), so for it every weight is 2 and `floor(α Σ w)` an even number: no point is split.
    """
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -1.0]])[:, :d]
    points = centres[np.arange(n) % 3] + rng.normal(size=(n, d))
    weights = rng.integers(1, 4, size=n)
    if parameters and "trim_fraction" in parameters:
        weights = np.full(n, 2)
    return points, weights


# gmm's moment-form variances (`S_j / R_j - |μ_j|^2`) lose digits to cancellation, and the summation order of the
# weighted and the repeated sums differs, so its iterates agree to 1e-10 rather than 1e-12.
TOLERANCE = {"gmm": 1e-10}


def _model(variant, parameters, iterations):
    config = KMeansTransformerConfig(num_clusters=3, point_dim=3, num_iterations=iterations, share_layers=True,
                                     variant=variant, **parameters)
    return KMeansTransformerModel(config).double()


@pytest.mark.parametrize("variant, parameters", FORMS, ids=[f"{n}-{p}" for n, p in FORMS])
@pytest.mark.parametrize("engine", ["tokens", "compact"])
def test_integer_weights_equal_repeated_points_in_the_model(variant, parameters, engine):
    points, weights = _data(parameters=parameters)
    repeated = np.repeat(points, weights, axis=0)
    model = _model(variant, parameters, 4)
    if engine == "compact" and not VARIANTS[variant].compact:
        pytest.skip("no compact engine for this variant")
    if engine == "tokens":
        model.config.fast_hardmax = False
    centroids = torch.tensor(points[[0, 1, 2]])
    with torch.no_grad():
        weighted = model(torch.tensor(points), centroids, sample_weight=torch.tensor(weights, dtype=torch.float64))
        plain = model(torch.tensor(repeated), centroids)
    assert model.engine() == engine
    tolerance = TOLERANCE.get(variant, 1e-12)
    np.testing.assert_allclose(weighted.centroids.numpy(), plain.centroids.numpy(), rtol=0, atol=tolerance)
    np.testing.assert_array_equal(np.repeat(weighted.labels[0].numpy(), weights), plain.labels[0].numpy())
    np.testing.assert_allclose(float(weighted.inertia[0]), float(plain.inertia[0]), rtol=1e-12)
    for name in VARIANTS[variant].state_names:
        np.testing.assert_allclose(weighted[name].numpy(), plain[name].numpy(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("variant, parameters", FORMS, ids=[f"{n}-{p}" for n, p in FORMS])
def test_integer_weights_equal_repeated_points_in_the_estimator(variant, parameters):
    points, weights = _data(1, parameters=parameters)
    repeated = np.repeat(points, weights, axis=0)
    init = points[[0, 1, 2]]
    options = dict(n_clusters=3, init=init, n_init=1, variant=variant, tol=0, max_iter=20, **parameters)
    weighted = KMeans(**options).fit(points, sample_weight=weights)
    plain = KMeans(**options).fit(repeated)
    np.testing.assert_allclose(weighted.cluster_centers_, plain.cluster_centers_, rtol=0, atol=TOLERANCE.get(variant, 1e-12))
    np.testing.assert_array_equal(np.repeat(weighted.labels_, weights), plain.labels_)
    assert weighted.n_iter_ == plain.n_iter_
    np.testing.assert_allclose(weighted.inertia_, plain.inertia_, rtol=1e-12)


def test_weighted_lloyd_equals_scikit_learn():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(200, 4)) + 5 * rng.integers(0, 3, size=(200, 1))
    weights = rng.uniform(0.1, 3.0, size=200)
    init = points[:4]
    ours = KMeans(n_clusters=4, init=init, n_init=1, tol=0).fit(points, sample_weight=weights)
    theirs = SklearnKMeans(n_clusters=4, init=init, n_init=1, tol=0, algorithm="lloyd").fit(points, sample_weight=weights)
    assert len(np.unique(theirs.labels_)) == 4  # no emptied cluster
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.score(points, sample_weight=weights), theirs.score(points, sample_weight=weights))


def test_zero_weight_is_like_a_removed_point():
    points, weights = _data(2)
    weights[[3, 7]] = 0
    kept = weights > 0
    init = points[[0, 1, 2]]
    with_zeros = KMeans(n_clusters=3, init=init, n_init=1, tol=0).fit(points, sample_weight=weights)
    removed = KMeans(n_clusters=3, init=init, n_init=1, tol=0).fit(points[kept], sample_weight=weights[kept])
    np.testing.assert_allclose(with_zeros.cluster_centers_, removed.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(with_zeros.labels_[kept], removed.labels_)
    assert (with_zeros.labels_ >= 0).all()  # a point of weight 0 is still labelled


@pytest.mark.parametrize(
    "weights, message",
    [
        (-np.ones(24), "Negative values"),
        (np.full(24, np.nan), "NaN"),
        (np.ones(23), "shape"),
        (np.ones((24, 2)), "1D|shape"),
    ],
)
def test_bad_weights_are_clear_errors(weights, message):
    points, _ = _data()
    with pytest.raises(ValueError, match=message):
        KMeans(n_clusters=3, n_init=1).fit(points, sample_weight=weights)


@pytest.mark.parametrize("weights, message", [(-torch.ones(24), ">= 0"), (torch.ones(23), "shape"),
                                              (torch.full((24,), float("inf")), "NaN or infinite"),
                                              (torch.zeros(24), "sum to 0")])
def test_model_refuses_bad_weights(weights, message):
    points, _ = _data()
    with pytest.raises(ValueError, match=message):
        _model("lloyd", {}, 1)(torch.tensor(points), sample_weight=weights.double())


@pytest.mark.parametrize("variant, parameters", FORMS, ids=[f"{n}-{p}" for n, p in FORMS])
def test_a_point_of_weight_zero_counts_nowhere_in_the_model(variant, parameters):
    """Weight 0 equals removing the point (labels of the others, centroids, inertia); the point is still labelled."""
    points, weights = _data(5, parameters=parameters)
    weights = weights.astype(float)
    weights[[4, 9, 13]] = 0.0
    kept = weights > 0
    model = _model(variant, parameters, 4)
    model.config.fast_hardmax = False
    centroids = torch.tensor(points[[0, 1, 2]])
    with torch.no_grad():
        zeroed = model(torch.tensor(points), centroids, sample_weight=torch.tensor(weights))
        removed = model(torch.tensor(points[kept]), centroids, sample_weight=torch.tensor(weights[kept]))
    tolerance = TOLERANCE.get(variant, 1e-12)
    np.testing.assert_allclose(zeroed.centroids.numpy(), removed.centroids.numpy(), rtol=0, atol=tolerance)
    np.testing.assert_array_equal(zeroed.labels[0].numpy()[kept], removed.labels[0].numpy())
    np.testing.assert_allclose(float(zeroed.inertia[0]), float(removed.inertia[0]), rtol=1e-12)
    assert (zeroed.labels[0].numpy()[~kept] >= 0).all()
