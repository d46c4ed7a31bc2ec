"""Every variant against its independent reference (and scikit-learn where one exists), iteration by iteration."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from kmeans_transformer import KMeansTransformerConfig
from kmeans_transformer.validation import layer_trajectory
from kmeans_transformer.reference import medoid_probabilities

from conftest import make_model, mixture


# (variant, parameters) pairs with a deterministic reference
CASES = [
    ("soft", {"inverse_temperature": 0.05}),
    ("soft", {"inverse_temperature": 2.0}),
    ("spherical", {}),
    ("trimmed", {}),
    ("trimmed", {"trim_quantile": 0.5}),
    ("trimmed", {"trim_fraction": 0.1}),
    ("trimmed", {"trim_fraction": 0.37}),
    ("sparse", {}),
    ("sparse", {"inverse_temperature": 2.0}),
    ("kmedoids", {}),
    ("gmm", {}),
    ("gmm", {"reg_covar": 1e-3}),
]
IDS = [f"{variant}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'default'}" for variant, params in CASES]


def gmm_start(points, k):
    variance = ((points - points.mean(axis=0)) ** 2).sum(axis=1).mean() / points.shape[1]
    return np.full(k, variance), np.full(k, 1.0 / k)


def run_both(variant, params, points, initial, T, attention_mask=None):
    """The model on a batch of one problem, its per-layer trajectory, and the reference's."""
    k, d = initial.shape
    model = make_model(k, d, T, variant=variant, **params)
    extra, variances, weights = {}, None, None
    if variant == "gmm":
        variances, weights = gmm_start(points, k)
        extra = {"variances": torch.tensor(variances), "weights": torch.tensor(weights)}
    output = model(torch.tensor(points), torch.tensor(initial), output_hidden_states=True, **extra)
    found = {key: value.numpy() for key, value in layer_trajectory(model.config, output.hidden_states, len(points)).items()}
    expected = model.config.variant_spec.run_reference(model.config, points, initial, variances=variances, weights=weights)
    return output, found, expected


def assert_agrees(output, found, expected, variant, scale, rtol=1e-10):
    T = len(found["centroids"])
    atol = rtol * scale
    for t in range(T):
        labels = expected.label_history[t]
        if expected.responsibilities is not None:
            # labels are the argmax of responsibilities; equal ones (ties in real arithmetic) may round either way
            top_two = np.sort(found["assignments"][t], axis=1)[:, -2:]
            decided = top_two[:, 1] - top_two[:, 0] > 1e-12
            labels = np.where(decided, labels, found["labels"][t])
        np.testing.assert_array_equal(found["labels"][t], labels, err_msg=f"labels, iteration {t}")
        np.testing.assert_allclose(found["centroids"][t], expected.centroid_history[t + 1], rtol=rtol, atol=atol, err_msg=f"centroids, iteration {t}")
        if expected.outlier_history is not None:
            np.testing.assert_array_equal(found["outliers"][t], expected.outlier_history[t], err_msg=f"outliers, iteration {t}")
        if expected.variance_history is not None:
            np.testing.assert_allclose(found["variances"][t], expected.variance_history[t + 1], rtol=1e-9)
            np.testing.assert_allclose(found["weights"][t], expected.weight_history[t + 1], rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=rtol, atol=atol)
    np.testing.assert_allclose(output.inertia.item(), expected.inertia, rtol=1e-9)
    if expected.outliers is not None:
        np.testing.assert_array_equal(output.outliers[0].numpy(), expected.outliers)
    if expected.responsibilities is not None:
        np.testing.assert_allclose(output.responsibilities[0].numpy(), expected.responsibilities, rtol=1e-9, atol=1e-12)
    if expected.variances is not None:
        np.testing.assert_allclose(output.variances[0].numpy(), expected.variances, rtol=1e-9)
        np.testing.assert_allclose(output.weights[0].numpy(), expected.weights, rtol=1e-9, atol=1e-15)
    for value in (output.centroids, output.inertia, output.assignments):
        assert torch.isfinite(value).all()


@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
@pytest.mark.parametrize(("n", "d", "k", "T"), [(300, 2, 4, 10), (500, 8, 6, 8)])
def test_matches_reference_every_iteration(variant, params, n, d, k, T, rng):
    points = mixture(rng, n, d, k)
    initial = points[rng.choice(n, size=k, replace=False)]
    output, found, expected = run_both(variant, params, points, initial, T)
    assert_agrees(output, found, expected, variant, np.abs(points).max())


@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_empty_cluster_keeps_its_centroid(variant, params, rng):
    """A centroid far from every point has no member (no mass): every variant keeps it, with no NaN."""
    points = mixture(rng, 200, 3, 3)
    initial = np.concatenate([points[:3], [[1e3, -1e3, 1e3]]])
    output, found, expected = run_both(variant, params, points, initial, 6)
    far = initial[3] / np.linalg.norm(initial[3]) if variant == "spherical" else initial[3]
    if variant != "spherical":  # on the sphere no point is far from everything
        np.testing.assert_array_equal(output.centroids[0, 3].numpy(), far)
        assert not (output.labels[0] == 3).any()
    assert_agrees(output, found, expected, variant, 1e3)


@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_ties_and_duplicates(variant, params):
    """
    Integer data with duplicated points: exact ties between distances everywhere. The hard variants also start from two
    identical centroids (the second is then empty). The soft ones would keep two identical centroids identical only in
    exact arithmetic (the update's matrix product may round the two rows apart), so they start from distinct ones.
    """
    grid = np.array([[x, y] for x in range(-3, 4) for y in range(-3, 4) if (x, y) != (0, 0)], dtype=np.float64)
    points = np.concatenate([grid, grid[:10], [[10.0, 10.0], [10.0, 12.0], [12.0, 10.0]]])
    if variant == "spherical":  # cosines of a symmetric grid tie only in real arithmetic: skew it, keep the duplicates
        points = points * np.array([1.0, 1.37]) + np.array([0.11, 0.05])
    twin = [1.0, 0.0] if variant in ("soft", "gmm") else [0.0, 1.0]
    initial = np.array([[0.0, 1.0], twin, [10.0, 10.0], [-3.0, -3.0]])
    output, found, expected = run_both(variant, params, points, initial, 5)
    assert_agrees(output, found, expected, variant, 12.0)


@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_padded_batch_equals_each_problem_alone(variant, params, rng):
    sizes, k, d, T = (120, 75, 90), 3, 2, 6
    n = max(sizes)
    batch = np.full((len(sizes), n, d), 1e6)
    batch[0, 40] = np.nan  # padding values are never read
    mask = np.zeros((len(sizes), n), dtype=bool)
    problems = []
    for b, size in enumerate(sizes):
        points = mixture(rng, size, d, k)
        positions = np.sort(rng.choice(n, size=size, replace=False))  # padding anywhere, not only at the end
        batch[b, positions], mask[b, positions] = points, True
        problems.append((points, positions))
    initial = np.stack([points[:k] for points, _ in problems])
    model = make_model(k, d, T, variant=variant, **params)
    extra = {}
    if variant == "gmm":
        starts = [gmm_start(points, k) for points, _ in problems]
        extra = {"variances": torch.tensor(np.stack([s[0] for s in starts])), "weights": torch.tensor(np.stack([s[1] for s in starts]))}
    output = model(torch.tensor(batch), torch.tensor(initial), attention_mask=torch.tensor(mask), **extra)
    for b, (points, positions) in enumerate(problems):
        state = {name: values[b].numpy() for name, values in extra.items()}
        expected = model.config.variant_spec.run_reference(model.config, points, initial[b], **state)
        np.testing.assert_array_equal(output.labels[b, positions].numpy(), expected.labels)
        assert (output.labels[b, ~mask[b]] == -1).all()
        np.testing.assert_allclose(output.centroids[b].numpy(), expected.centroids, rtol=1e-10, atol=1e-10 * np.abs(points).max())
        assert (output.assignments[b, ~mask[b]] == 0).all()


def test_soft_tends_to_lloyd_and_to_the_mean(rng):
    points = mixture(rng, 300, 2, 3)
    initial = points[:3]
    stiff = make_model(3, 2, 5, variant="soft", inverse_temperature=1e6)(torch.tensor(points), torch.tensor(initial))
    lloyd = make_model(3, 2, 5)(torch.tensor(points), torch.tensor(initial))
    np.testing.assert_allclose(stiff.centroids.numpy(), lloyd.centroids.numpy(), rtol=1e-12)
    loose = make_model(3, 2, 1, variant="soft", inverse_temperature=1e-12)(torch.tensor(points), torch.tensor(initial))
    np.testing.assert_allclose(loose.centroids[0].numpy(), np.broadcast_to(points.mean(axis=0), (3, 2)), rtol=1e-6)


def test_sparse_update_gives_exact_zeros_to_far_members():
    """One cluster: members at 0, 0.1 and 10 around the centroid 0. Closed form: sparsemax([0, -γ.01, -γ100]/sqrt(1))."""
    points = np.array([[0.0], [0.1], [10.0]])
    model = make_model(1, 1, 1, variant="sparse", inverse_temperature=10.0)
    output = model(torch.tensor(points), torch.tensor([[0.0]]), output_attentions=True)
    weights = output.update_attentions[0][0, 0, 0, :3].numpy()
    # z = [0, -0.1, -1000]: support {0, 1}, τ = (0 - 0.1 - 1) / 2 = -0.55, weights [0.55, 0.45, 0]
    np.testing.assert_allclose(weights, [0.55, 0.45, 0.0], rtol=1e-12)
    np.testing.assert_allclose(output.centroids[0, 0, 0].item(), 0.045, rtol=1e-12)


def test_gmm_matches_scikit_learn(rng):
    points = mixture(rng, 600, 3, 4, spread=3.0)
    k = 4
    initial = points[rng.choice(len(points), size=k, replace=False)]
    variances = rng.uniform(0.5, 2.0, size=k)
    weights = rng.dirichlet(np.ones(k))
    for T in (1, 5, 20):
        model = make_model(k, 3, T, variant="gmm")
        output = model(torch.tensor(points), torch.tensor(initial), variances=torch.tensor(variances), weights=torch.tensor(weights))
        sk = GaussianMixture(
            n_components=k, covariance_type="spherical", reg_covar=0.0, max_iter=T, tol=0.0, n_init=1,
            means_init=initial, weights_init=weights, precisions_init=1 / variances,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk.fit(points)
        np.testing.assert_allclose(output.centroids[0].numpy(), sk.means_, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(output.variances[0].numpy(), sk.covariances_, rtol=1e-8)
        np.testing.assert_allclose(output.weights[0].numpy(), sk.weights_, rtol=1e-8)
        np.testing.assert_array_equal(output.labels[0].numpy(), sk.predict(points))
        np.testing.assert_allclose(output.responsibilities[0].numpy(), sk.predict_proba(points), atol=1e-8)


def test_gmm_default_start_and_collapse():
    points = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    model = make_model(2, 2, 0, variant="gmm")
    output = model(points)  # no iteration: the defaults come straight back
    np.testing.assert_allclose(output.variances[0].numpy(), [1.0, 1.0])  # mean |x - x̄|^2 / d = 2 / 2
    np.testing.assert_allclose(output.weights[0].numpy(), [0.5, 0.5])
    lonely = torch.tensor([[0.0, 0.0], [100.0, 100.0], [100.0, 101.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="variance collapsed"):
        make_model(2, 2, 3, variant="gmm")(lonely, variances=torch.tensor([1e-3, 1e-3]))
    output = make_model(2, 2, 3, variant="gmm", reg_covar=1e-2)(lonely, variances=torch.tensor([1e-3, 1e-3]))
    assert torch.isfinite(output.variances).all() and output.variances[0, 0].item() == pytest.approx(1e-2)


def test_kmedoids_matches_scikit_learn_extra(rng):
    try:
        from sklearn_extra.cluster import KMedoids
    except Exception as error:  # the PyPI wheel was built against NumPy 1 and fails to import under NumPy 2
        pytest.skip(f"scikit-learn-extra unavailable: {error}")
    points = mixture(rng, 300, 2, 4)
    initial = points[rng.choice(len(points), size=4, replace=False)]
    for T in (1, 3, 10):
        output = make_model(4, 2, T, variant="kmedoids")(torch.tensor(points), torch.tensor(initial))
        fitted = KMedoids(n_clusters=4, metric="euclidean", method="alternate", init=initial, max_iter=T).fit(points)
        np.testing.assert_array_equal(output.centroids[0].numpy(), fitted.cluster_centers_)
        np.testing.assert_array_equal(output.labels[0].numpy(), fitted.labels_)


def test_kmedoids_centres_are_member_points(rng):
    points = mixture(rng, 400, 3, 5)
    output = make_model(5, 3, 6, variant="kmedoids")(torch.tensor(points))
    for centre in output.centroids[0].numpy():
        assert (points == centre).all(axis=1).any()


def gumbel_model(gamma=0.5, T=1):
    return make_model(1, 1, T, variant="kmedoids", medoid_selection="gumbel", inverse_temperature=gamma)


def test_gumbel_medoids_are_reproducible(rng):
    points = torch.tensor(mixture(rng, 300, 2, 4))
    model = make_model(4, 2, 5, variant="kmedoids", medoid_selection="gumbel")
    runs = [model(points, generator=torch.Generator().manual_seed(seed)).centroids for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    for centre in runs[0][0].numpy():
        assert (points.numpy() == centre).all(axis=1).any()


def test_gumbel_selection_frequencies_follow_the_weights():
    """One cluster of 6 points, 20000 independent draws in one batch: chi-square against softmax(-γ |x - c|^2)."""
    points = np.array([[0.0], [0.5], [1.0], [1.5], [2.0], [3.0]])
    centre = np.array([[0.8]])
    draws = 20000
    model = gumbel_model(gamma=0.5)
    batch = torch.tensor(points).expand(draws, -1, -1)
    output = model(batch, torch.tensor(centre), generator=torch.Generator().manual_seed(0))
    chosen = (output.centroids[:, 0, 0].numpy()[:, None] == points[:, 0][None]).argmax(axis=1)
    observed = np.bincount(chosen, minlength=len(points))
    expected = medoid_probabilities(points, np.zeros(len(points), dtype=int), centre, 0.5)[0] * draws
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    biased = np.roll(expected, 1)  # the test can fail: a wrong law is rejected
    assert stats.chisquare(observed, biased).pvalue < 1e-6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "soft", "inverse_temperature": 0.0}, "inverse_temperature"),
        ({"variant": "soft", "inverse_temperature": -1.0}, "inverse_temperature"),
        ({"variant": "sparse", "inverse_temperature": float("inf")}, "inverse_temperature"),
        ({"variant": "trimmed", "trim_quantile": 0.0}, "trim_quantile"),
        ({"variant": "trimmed", "trim_quantile": 1.5}, "trim_quantile"),
        ({"variant": "trimmed", "trim_fraction": 1.0}, "trim_fraction"),
        ({"variant": "trimmed", "trim_fraction": -0.1}, "trim_fraction"),
        ({"variant": "trimmed", "trim_quantile": 0.9, "trim_fraction": 0.1}, "not both"),
        ({"variant": "lloyd", "trim_quantile": 0.9}, "not a parameter of variant 'lloyd'"),
        ({"variant": "soft", "medoid_selection": "gumbel"}, "not a parameter of variant 'soft'"),
        ({"variant": "gmm", "inverse_temperature": 1.0}, "not a parameter of variant 'gmm'"),
        ({"variant": "kmedoids", "reg_covar": 1.0}, "not a parameter of variant 'kmedoids'"),
        ({"variant": "kmedoids", "medoid_selection": "random"}, "medoid_selection"),
        ({"variant": "gmm", "reg_covar": -1.0}, "reg_covar"),
        ({"variant": "kmeans++"}, "Unknown `variant`"),
    ],
)
def test_bad_variant_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KMeansTransformerConfig(num_clusters=2, **kwargs)


@pytest.mark.parametrize(
    ("variant", "params", "inputs", "error", "message"),
    [
        ("lloyd", {}, {"variances": [1.0, 1.0]}, ValueError, "inputs of variant 'gmm'"),
        ("lloyd", {}, {"generator": torch.Generator()}, ValueError, "medoid_selection='gumbel'"),
        ("kmedoids", {"medoid_selection": "gumbel"}, {"generator": 3}, TypeError, "torch.Generator"),
        ("gmm", {}, {"variances": [1.0, 0.0]}, ValueError, "must be > 0"),
        ("gmm", {}, {"variances": [1.0, 1.0, 1.0]}, ValueError, "shape"),
        ("gmm", {}, {"weights": [0.7, 0.7]}, ValueError, "sum to 1"),
        ("gmm", {}, {"weights": [float("nan"), 1.0]}, ValueError, "NaN"),
        ("spherical", {}, {"points": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]}, ValueError, "norm 0"),
        ("spherical", {}, {"centroids": [[0.0, 0.0], [1.0, 0.0]]}, ValueError, "norm 0"),
    ],
)
def test_bad_variant_inputs(variant, params, inputs, error, message):
    model = make_model(2, 2, 2, variant=variant, **params)
    points = inputs.pop("points", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(error, match=message):
        model(torch.tensor(points, dtype=torch.float64), **inputs)
