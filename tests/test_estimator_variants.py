"""The estimator reads every variant from its spec: fuzzy c-means, the carried state of gmm, `n_restarts_`, the zoo."""

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from kmeans_transformer import KMeans, reference
from kmeans_transformer.cli import main
from kmeans_transformer.variants import ALGORITHM_PARAMETER_NAMES as PARAMETER_NAMES, VARIANTS
from kmeans_transformer.zoo import ZooEntry, standard_zoo
from conftest import mixture


def first_points(X, k, seed=0):
    return X[np.random.default_rng(seed).choice(len(X), size=k, replace=False)]


@pytest.fixture
def blobs(rng):
    return mixture(rng, 400, 3, 4)


# ---------------------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------------------


def test_every_variant_parameter_is_an_estimator_parameter_stored_as_given():
    assert set(PARAMETER_NAMES) <= set(KMeans().get_params())
    assert all(KMeans().get_params()[name] is None for name in PARAMETER_NAMES)
    kmeans = KMeans(3, variant="fuzzy", fuzzifier=1.5)
    assert kmeans.get_params()["fuzzifier"] == 1.5 and kmeans.get_params()["variant"] == "fuzzy"


@pytest.mark.parametrize(
    "params, match",
    [
        ({"variant": "fuzzy", "fuzzifier": 1.0}, "`fuzzifier` must be a finite number > 1"),
        ({"variant": "lloyd", "fuzzifier": 2.0}, "`fuzzifier` is not a parameter of variant 'lloyd'"),
        ({"variant": "k-medians"}, "Unknown `variant` 'k-medians'"),
    ],
)
def test_a_bad_variant_or_parameter_is_named(params, match):
    with pytest.raises(ValueError, match=match):
        KMeans(2, **params).fit(np.arange(10.0).reshape(5, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzy c-means
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fuzzifier", [2.0, 1.5, 3.0])
def test_fuzzy_follows_the_numpy_reference_for_a_fixed_number_of_iterations(blobs, fuzzifier):
    init, max_iter = first_points(blobs, 4), 12
    # tol=0: a non-label-determined variant then stops only on an exact repeat of the centroids, so it runs max_iter.
    kmeans = KMeans(4, init=init, n_init=1, max_iter=max_iter, tol=0, variant="fuzzy", fuzzifier=fuzzifier).fit(blobs)
    assert kmeans.n_iter_ == max_iter
    expected = reference.fuzzy_cmeans(blobs, init, kmeans.n_iter_, fuzzifier)
    np.testing.assert_allclose(kmeans.cluster_centers_, expected.centroids, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(kmeans.labels_, expected.labels)
    assert kmeans.inertia_ == pytest.approx(expected.inertia, rel=1e-10)
    np.testing.assert_array_equal(kmeans.predict(blobs), expected.labels)
    np.testing.assert_allclose(kmeans.centroid_trajectory(blobs), expected.centroid_history, rtol=1e-10, atol=1e-10)
    assert kmeans.model_.config.variant == "fuzzy" and kmeans.model_.config.fuzzifier == fuzzifier


def test_fuzzy_default_fuzzifier_is_two(blobs):
    init = first_points(blobs, 4)
    default = KMeans(4, init=init, max_iter=5, tol=0, variant="fuzzy").fit(blobs)
    explicit = KMeans(4, init=init, max_iter=5, tol=0, variant="fuzzy", fuzzifier=2.0).fit(blobs)
    assert default.get_params()["fuzzifier"] is None  # stored as given; the config fills the default
    np.testing.assert_array_equal(default.cluster_centers_, explicit.cluster_centers_)


def test_fuzzy_stops_on_the_tolerance_at_the_first_small_shift(blobs):
    init, tol = first_points(blobs, 4, seed=1), 1e-6
    kmeans = KMeans(4, init=init, n_init=1, max_iter=300, tol=tol, variant="fuzzy").fit(blobs)
    assert 1 < kmeans.n_iter_ < 300
    history = reference.fuzzy_cmeans(blobs, init, kmeans.n_iter_, 2.0).centroid_history
    shifts = ((history[1:] - history[:-1]) ** 2).sum(axis=(1, 2))
    tolerance = tol * blobs.var(axis=0).mean()
    assert shifts[-1] <= tolerance and (shifts[:-1] > tolerance).all()
    np.testing.assert_allclose(kmeans.cluster_centers_, history[-1], rtol=1e-10, atol=1e-10)


def test_fuzzy_restarts_keep_the_lowest_inertia(blobs):
    kmeans = KMeans(4, init="random", n_init=5, random_state=0, variant="fuzzy").fit(blobs)
    alone = KMeans(4, init=kmeans.initial_centers_, n_init=1, variant="fuzzy").fit(blobs)
    np.testing.assert_allclose(alone.cluster_centers_, kmeans.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert alone.n_iter_ == kmeans.n_iter_ and kmeans.n_restarts_ == 5


def test_fuzzy_fits_from_the_command_line(tmp_path, capsys, blobs):
    np.save(tmp_path / "points.npy", blobs)
    argv = ["cluster", str(tmp_path / "points.npy"), "--n-clusters", "4", "--output", str(tmp_path / "out.csv"),
            "--variant", "fuzzy", "--fuzzifier", "1.5", "--random-state", "0", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fuzzy, k=4, 1 restart (k-means++" in out and "outliers" not in out
    expected = KMeans(4, random_state=0, variant="fuzzy", fuzzifier=1.5).fit(blobs)
    labels = np.loadtxt(tmp_path / "out.csv", delimiter=",", skiprows=1)[:, -1]
    np.testing.assert_array_equal(labels, expected.labels_)


# ---------------------------------------------------------------------------------------------------------------------
# Carried state: gmm's variances and weights
# ---------------------------------------------------------------------------------------------------------------------


def test_gmm_fitted_variances_and_weights_are_the_reference_em(blobs):
    k, max_iter, reg_covar = 4, 8, 1e-6
    init = first_points(blobs, k)
    kmeans = KMeans(k, init=init, max_iter=max_iter, tol=0, variant="gmm", reg_covar=reg_covar).fit(blobs)
    assert kmeans.n_iter_ == max_iter
    # The model's default start: every variance the total variance per coordinate, equal weights.
    spread = ((blobs - blobs.mean(axis=0)) ** 2).sum(axis=1).mean() / blobs.shape[1]
    expected = reference.gaussian_mixture_em(
        blobs, init, np.full(k, spread), np.full(k, 1 / k), kmeans.n_iter_, reg_covar
    )
    np.testing.assert_allclose(kmeans.cluster_centers_, expected.centroids, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(kmeans.variances_, expected.variances, rtol=1e-10)
    np.testing.assert_allclose(kmeans.weights_, expected.weights, rtol=1e-10)
    np.testing.assert_array_equal(kmeans.labels_, expected.labels)
    fitted = kmeans.model_.embeddings.fitted_parameters()
    assert sorted(fitted) == ["centroids", "variances", "weights"]
    np.testing.assert_array_equal(fitted["variances"].numpy(), kmeans.variances_)
    np.testing.assert_array_equal(fitted["weights"].numpy(), kmeans.weights_)
    np.testing.assert_allclose(kmeans.centroid_trajectory(blobs), expected.centroid_history, rtol=1e-10, atol=1e-10)


def test_state_attributes_follow_the_variant_of_the_last_fit(blobs):
    kmeans = KMeans(4, random_state=0, variant="gmm").fit(blobs)
    assert hasattr(kmeans, "variances_") and hasattr(kmeans, "weights_")
    kmeans.set_params(variant="fuzzy").fit(blobs)
    assert not hasattr(kmeans, "variances_") and not hasattr(kmeans, "weights_")
    stateful = {name for spec in VARIANTS.values() for name in spec.state_names}
    assert stateful == {"variances", "weights"}


# ---------------------------------------------------------------------------------------------------------------------
# n_restarts_
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "init, n_init, expected",
    [("random", "auto", 10), ("k-means++", "auto", 1), ("random", 3, 3), ("k-means++", 2, 2), ("array", "auto", 1)],
)
def test_n_restarts_is_the_resolved_n_init(blobs, init, n_init, expected):
    init = first_points(blobs, 4) if init == "array" else init
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(4, init=init, n_init=n_init, random_state=0).fit(blobs)
    assert kmeans.n_restarts_ == expected and not hasattr(kmeans, "_n_restarts")


def test_an_explicit_init_runs_once_whatever_n_init(blobs):
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        kmeans = KMeans(4, init=first_points(blobs, 4), n_init=5).fit(blobs)
    assert kmeans.n_restarts_ == 1


def test_n_restarts_round_trips_and_the_former_private_name_loads(tmp_path, blobs):
    kmeans = KMeans(4, init="random", n_init=3, random_state=0, variant="fuzzy", fuzzifier=2.5).fit(blobs)
    kmeans.save_pretrained(tmp_path / "fitted")
    loaded = KMeans.from_pretrained(tmp_path / "fitted")
    assert loaded.n_restarts_ == 3 and loaded.get_params() == kmeans.get_params()
    assert "3 restart(s)" in (tmp_path / "fitted" / "README.md").read_text()  # the card reads `n_restarts_`
    np.testing.assert_array_equal(loaded.cluster_centers_, kmeans.cluster_centers_)
    np.testing.assert_array_equal(loaded.predict(blobs), kmeans.predict(blobs))

    saved = tmp_path / "fitted" / "kmeans_estimator.json"
    content = json.loads(saved.read_text())
    content["fitted"]["_n_restarts"] = content["fitted"].pop("n_restarts_")  # as written before the rename
    saved.write_text(json.dumps(content))
    assert KMeans.from_pretrained(tmp_path / "fitted").n_restarts_ == 3


# ---------------------------------------------------------------------------------------------------------------------
# The zoo
# ---------------------------------------------------------------------------------------------------------------------


def test_the_zoo_has_an_entry_per_size_and_zoo_parameters_of_every_spec():
    sizes = [(3, 2, 4), (8, 16, 20)]
    entries = standard_zoo(sizes=sizes)
    expected = [(spec.name, size, dict(p)) for spec in VARIANTS.values() for size in sizes for p in spec.zoo_parameters]
    got = [(e.variant, (e.num_clusters, e.point_dim, e.num_iterations), dict(e.parameters)) for e in entries]
    assert got == expected
    names = [entry.name for entry in entries]
    assert len(set(names)) == len(names)
    assert "kmeans-transformer-fuzzy-k3-d2-t4" in names and "kmeans-transformer-kmedoids-gumbel-k3-d2-t4" in names
    assert ZooEntry("gmm", 3, 2, 4, {"reg_covar": 1e-6}).name == "kmeans-transformer-gmm-k3-d2-t4"
    deterministic = ZooEntry("kmedoids", 3, 2, 4, {"medoid_selection": "deterministic"})
    assert deterministic.name == "kmeans-transformer-kmedoids-k3-d2-t4" and deterministic.form is None
