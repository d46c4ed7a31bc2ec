"""The scikit-learn estimator `KMeans`: against scikit-learn, the references and the estimator conventions."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import cluster, datasets
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from transformers import AutoModel
from huggingface_hub import ModelCard

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel, reference
from kmeans_transformer.initialization import batched_kmeans_plusplus
from conftest import mixture


BUNDLED = {"iris": 3, "wine": 3, "breast_cancer": 2, "digits": 10}


def bundled(name, standardised):
    X = getattr(datasets, f"load_{name}")().data
    return StandardScaler().fit_transform(X) if standardised else X


def random_init(X, k, seed):
    return X[np.random.default_rng(seed).choice(len(X), size=k, replace=False)]


# ---------------------------------------------------------------------------------------------------------------------
# Against scikit-learn
# ---------------------------------------------------------------------------------------------------------------------


def tie_margin(X, centroid_history):
    """The smallest relative gap between a point's nearest and second-nearest centroid over a run."""
    gaps = []
    for centroids in centroid_history:
        distances = np.sort(reference.squared_distances(X, centroids), axis=1)
        gaps.append(((distances[:, 1] - distances[:, 0]) / (distances[:, 1] + 1e-300)).min())
    return min(gaps)


@pytest.mark.parametrize(
    "name, jitter, k, seed",
    [("iris", 1e-7, 3, 0), ("wine", 0, 3, 1), ("digits", 1e-6, 10, 2), ("breast_cancer", 0, 2, 3), ("blobs", 0, 6, 4)],
)
@pytest.mark.parametrize("tol, max_iter", [(0.0, 300), (1e-4, 300), (1e-2, 300), (0.0, 3)])
def test_same_init_gives_scikit_learns_labels_centroids_and_iterations(name, jitter, k, seed, tol, max_iter):
    if name == "blobs":
        X = datasets.make_blobs(1500, n_features=5, centers=k, cluster_std=3.0, random_state=seed)[0]
    else:
        X = getattr(datasets, f"load_{name}")().data
    # scikit-learn centres the data before computing distances, so a point exactly equidistant from two centroids
    # (duplicated integer-valued points) may be rounded either way there: a tiny jitter removes exact ties.
    X = X + jitter * np.random.default_rng(seed).standard_normal(X.shape)
    init = random_init(X, k, seed)
    ours = KMeans(k, init=init, n_init=1, tol=tol, max_iter=max_iter).fit(X)
    theirs = cluster.KMeans(k, init=init, n_init=1, tol=tol, max_iter=max_iter, algorithm="lloyd").fit(X)
    assert len(np.unique(theirs.labels_)) == k  # no cluster emptied: scikit-learn would have moved it
    assert tie_margin(X, reference.lloyd(X, init, ours.n_iter_).centroid_history) > 1e-9  # no near-ties
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-13, atol=1e-13 * np.abs(X).max())
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-12)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-10, atol=1e-10 * np.abs(X).max())
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-12)


def mean_inertias(X, k, seeds=range(10)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = np.mean([KMeans(k, n_init=10, random_state=seed).fit(X).inertia_ for seed in seeds])
        theirs = np.mean([cluster.KMeans(k, n_init=10, random_state=seed).fit(X).inertia_ for seed in seeds])
    return ours, theirs


@pytest.mark.parametrize("standardised", [False, True], ids=["raw", "standardised"])
@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer"])
def test_kmeans_plusplus_restarts_match_scikit_learns_mean_inertia(name, standardised):
    ours, theirs = mean_inertias(bundled(name, standardised), BUNDLED[name])
    assert abs(ours / theirs - 1) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("standardised", [False, True], ids=["raw", "standardised"])
def test_kmeans_plusplus_restarts_match_scikit_learns_mean_inertia_on_digits(standardised):
    ours, theirs = mean_inertias(bundled("digits", standardised), BUNDLED["digits"])
    assert abs(ours / theirs - 1) < 0.01


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(
    "dtype, offset", [(torch.float64, 0.0), (torch.float32, 0.0), (torch.float32, 1e4)], ids=["f64", "f32", "f32-at-1e4"]
)
def test_kmeans_plusplus_draws_centres_with_probability_proportional_to_squared_distance(dtype, offset, weighted):
    """
    With one trial per centre, P(first = a, second = b) = w_a / Σ w * w_b D(b | a)^2 / Σ_i w_i D(i | a)^2 (a
    chi-square test, `D` in float64 NumPy), also in float32 at 1e4 from the origin, where `|x|^2` rounds by 8.
    """
    x = np.array([0.0, 1.0, 3.0, 7.0, 15.0]) + offset  # exact in float32
    w = np.array([1.0, 2.0, 1.0, 3.0, 1.0]) if weighted else np.ones(len(x))
    n, draws = len(x), 40000
    points = torch.tensor(x[:, None], dtype=dtype)
    _, indices = batched_kmeans_plusplus(
        points, 2, draws, torch.Generator().manual_seed(0), n_local_trials=1,
        sample_weight=torch.tensor(w) if weighted else None,
    )
    observed = np.zeros((n, n))
    np.add.at(observed, (indices[:, 0].numpy(), indices[:, 1].numpy()), 1)
    squared = w[None, :] * (x[:, None] - x[None, :]) ** 2
    expected = squared / squared.sum(axis=1, keepdims=True) * (w / w.sum())[:, None] * draws
    cells = expected > 0
    assert observed[~cells].sum() == 0  # never the first centre twice
    assert stats.chisquare(observed[cells], expected[cells]).pvalue > 1e-3


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
def test_float32_kmeans_plusplus_far_from_the_origin_seeds_one_centre_per_blob(offset):
    """
    Six tight blobs (σ = 0.05, 3 apart) at `offset` from the origin, in float32: greedy k-means++ puts one centre in
    each blob, as scikit-learn's `kmeans_plusplus` does on the same data in float64, and draws the same rows as a
    float64 run from the same generator (the distances are accurate in float32 once the data are taken from their
    mean; at 1e4, `|x|^2 ~ 2e8` rounds by 16 in float32, more than the squared gaps of 9).
    """
    rng = np.random.default_rng(0)
    k, per, restarts = 6, 100, 20
    labels = np.repeat(np.arange(k), per)
    centres = 3.0 * np.stack([np.arange(k) % 3, np.arange(k) // 3], axis=1)
    X = (centres[labels] + rng.normal(scale=0.05, size=(k * per, 2)) + offset).astype(np.float32).astype(np.float64)
    for seed in range(restarts):
        _, theirs = cluster.kmeans_plusplus(X, k, random_state=seed)
        assert sorted(labels[theirs]) == list(range(k))
    draws = {}
    for dtype in (torch.float32, torch.float64):
        points = torch.tensor(X, dtype=dtype)
        seeds, draws[dtype] = batched_kmeans_plusplus(points, k, restarts, torch.Generator().manual_seed(0))
        assert torch.equal(seeds, points[draws[dtype]])  # the original rows, not translated ones
    assert all(sorted(labels[row]) == list(range(k)) for row in draws[torch.float32].numpy())
    assert torch.equal(draws[torch.float32], draws[torch.float64])


def test_greedy_kmeans_plusplus_matches_scikit_learns_initial_potential():
    X = bundled("wine", True)
    k, seeds = 6, 200
    centres, _ = batched_kmeans_plusplus(torch.tensor(X), k, seeds, torch.Generator().manual_seed(1))
    ours = [reference.inertia(X, reference.assign_labels(X, c), c) for c in centres.numpy()]
    theirs = []
    for seed in range(seeds):
        c, _ = cluster.kmeans_plusplus(X, k, random_state=seed)
        theirs.append(reference.inertia(X, reference.assign_labels(X, c), c))
    assert abs(np.mean(ours) / np.mean(theirs) - 1) < 0.03
    assert stats.mannwhitneyu(ours, theirs).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Restarts, early stopping, the looped model
# ---------------------------------------------------------------------------------------------------------------------


class ForwardCalls:
    """Count the forward calls of every `KMeansTransformerModel` and record the batch size of each."""

    def __enter__(self):
        self.batch_sizes = []

        def hook(module, args, kwargs, output):
            if isinstance(module, KMeansTransformerModel):
                self.batch_sizes.append(output.centroids.shape[0])

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("variant", ["lloyd", "soft"])
def test_restarts_run_as_one_batched_forward_per_iteration(variant):
    X = datasets.make_blobs(600, n_features=4, centers=5, random_state=0)[0]
    with ForwardCalls() as calls:
        kmeans = KMeans(5, init="random", n_init=10, max_iter=50, random_state=0, variant=variant).fit(X)
    # One call per iteration for the whole batch, then one that assigns the points to every restart's centroids,
    # where a loop over the restarts would make at least n_init calls per iteration.
    *iterations, final_assignment = calls.batch_sizes
    assert iterations[0] == 10 and final_assignment == 10
    assert kmeans.n_iter_ <= len(iterations) <= 50
    assert iterations == sorted(iterations, reverse=True)  # converged restarts leave the batch
    assert iterations[-1] < 10  # and some did converge before the slowest one

    # The kept restart, run alone from its initial centroids, gives the same clustering.
    alone = KMeans(5, init=kmeans.initial_centers_, n_init=1, max_iter=50, variant=variant).fit(X)
    np.testing.assert_array_equal(alone.labels_, kmeans.labels_)
    np.testing.assert_allclose(alone.cluster_centers_, kmeans.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert alone.n_iter_ == kmeans.n_iter_


def test_the_lowest_inertia_restart_is_kept():
    X = bundled("wine", True)
    starts = [random_init(X, 4, seed) for seed in range(8)]
    draws = iter(starts)
    kmeans = KMeans(4, init=lambda X, k, random_state: next(draws), n_init=8).fit(X)
    alone = [KMeans(4, init=start).fit(X) for start in starts]
    best = alone[int(np.argmin([fit.inertia_ for fit in alone]))]
    np.testing.assert_array_equal(kmeans.initial_centers_, best.initial_centers_)
    np.testing.assert_array_equal(kmeans.labels_, best.labels_)
    np.testing.assert_allclose(kmeans.cluster_centers_, best.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert kmeans.inertia_ == pytest.approx(reference.inertia(X, kmeans.labels_, kmeans.cluster_centers_), rel=1e-12)


def test_max_iter_needs_no_new_weights_and_stops_where_asked():
    X = bundled("iris", False) * 10
    init = random_init(X, 3, 5)
    for max_iter in (1, 2, 7):
        kmeans = KMeans(3, init=init, max_iter=max_iter, tol=0).fit(X)
        expected = reference.lloyd(X, init, max_iter)
        assert kmeans.n_iter_ <= max_iter
        np.testing.assert_allclose(kmeans.cluster_centers_, reference.lloyd(X, init, kmeans.n_iter_).centroids, rtol=1e-13)
        if kmeans.n_iter_ == max_iter:
            np.testing.assert_array_equal(kmeans.labels_, expected.labels)
        assert len(kmeans.model_.layers) == 1 and kmeans.model_.config.share_layers


def test_random_state_reproduces_a_fit_and_another_seed_changes_the_draws():
    X = bundled("digits", True)[:400]
    a = KMeans(8, random_state=7).fit(X)
    b = KMeans(8, random_state=7).fit(X)
    c = KMeans(8, random_state=8).fit(X)
    np.testing.assert_array_equal(a.initial_centers_, b.initial_centers_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert not np.array_equal(a.initial_centers_, c.initial_centers_)
    initial_rows = {tuple(row) for row in a.initial_centers_}
    assert initial_rows <= {tuple(row) for row in X}  # k-means++ draws data points


# ---------------------------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, params",
    [
        ("soft", {"inverse_temperature": 0.5}),
        ("spherical", {}),
        ("trimmed", {"trim_fraction": 0.1}),
        ("trimmed", {}),
        ("sparse", {"inverse_temperature": 0.05}),
        ("kmedoids", {}),
        ("gmm", {"reg_covar": 1e-6}),
    ],
)
def test_every_variant_follows_its_reference_for_its_iterations(variant, params, rng):
    X = mixture(rng, 300, 3, 4) + 5.0  # away from the origin, for spherical
    init = random_init(X, 4, 0)
    kmeans = KMeans(4, init=init, max_iter=6, tol=0, variant=variant, **params).fit(X)
    config = KMeansTransformerConfig(num_clusters=4, point_dim=3, num_iterations=kmeans.n_iter_, variant=variant, **params)
    extra = {}
    if variant == "gmm":  # the model's documented defaults: total variance per coordinate, equal weights
        spread = ((X - X.mean(axis=0)) ** 2).sum(axis=1).mean() / X.shape[1]
        extra = {"variances": np.full(4, spread), "weights": np.full(4, 0.25)}
    expected = config.variant_spec.run_reference(config, X, init, **extra)
    np.testing.assert_allclose(kmeans.cluster_centers_, expected.centroids, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(kmeans.labels_, expected.labels)
    if variant == "trimmed":
        assert (kmeans.labels_ == -1).sum() == expected.outliers.sum() > 0
    if variant == "gmm":
        np.testing.assert_allclose(kmeans.variances_, expected.variances, rtol=1e-8)
        np.testing.assert_allclose(kmeans.weights_, expected.weights, rtol=1e-8)
    assert kmeans.n_iter_ <= 6


def test_gumbel_kmedoids_is_seeded_by_random_state(rng):
    X = mixture(rng, 200, 2, 3)
    fit = lambda seed: KMeans(3, variant="kmedoids", medoid_selection="gumbel", max_iter=5, random_state=seed).fit(X)
    a, b = fit(0), fit(0)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert {tuple(c) for c in a.cluster_centers_} <= {tuple(x) for x in X}  # medoids are data points


# ---------------------------------------------------------------------------------------------------------------------
# scikit-learn conventions and input validation
# ---------------------------------------------------------------------------------------------------------------------


def test_passes_scikit_learns_estimator_checks():
    # As for scikit-learn's own KMeans (its `PER_ESTIMATOR_XFAIL_CHECKS`): with integer weights the random
    # initialisation draws from other data than with repeated points, so the fits start elsewhere. From the same
    # initial centres weights equal repetitions (tests/test_sample_weight.py).
    different_draws = "the random initialisation of weighted and repeated data draws differently"
    expected = {f"check_sample_weight_equivalence_on_{kind}_data": different_draws for kind in ("dense", "sparse")}
    results = check_estimator(KMeans(n_clusters=3, max_iter=50), on_fail=None, expected_failed_checks=expected)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_clone_get_params_and_not_fitted():
    kmeans = KMeans(5, init="random", n_init=3, variant="trimmed", trim_fraction=0.2, dtype="float32")
    copy = clone(kmeans)
    assert copy.get_params() == kmeans.get_params() and copy is not kmeans
    assert KMeans().get_params()["n_init"] == "auto" and KMeans().get_params()["init"] == "k-means++"
    for method in ("predict", "transform", "score", "centroid_trajectory"):
        with pytest.raises(NotFittedError):
            getattr(kmeans, method)(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        kmeans.save_pretrained("never-written")
    assert not os.path.exists("never-written")


def test_dtype_follows_the_input_like_scikit_learn_unless_given():
    X = bundled("iris", True)
    assert KMeans(3, random_state=0).fit(X.astype(np.float32)).cluster_centers_.dtype == np.float32
    assert KMeans(3, random_state=0).fit(X).cluster_centers_.dtype == np.float64
    assert KMeans(3, random_state=0, dtype="float32").fit(X).model_.dtype == torch.float32
    assert KMeans(3, random_state=0, dtype=torch.float64).fit(X.astype(np.float32)).model_.dtype == torch.float64


def test_duplicate_points_warn_about_fewer_distinct_clusters():
    X = np.repeat([[0.0, 0.0], [1.0, 1.0]], 10, axis=0)
    with pytest.warns(ConvergenceWarning, match=r"Number of distinct clusters \(2\) found smaller than n_clusters \(3\)"):
        KMeans(3, random_state=0).fit(X)


def test_explicit_init_runs_once_with_a_warning():
    X = bundled("iris", False)
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        KMeans(3, init=X[:3], n_init=5).fit(X)


@pytest.mark.parametrize(
    "params, X, match",
    [
        ({"n_clusters": 5}, np.zeros((4, 2)), "n_samples=4 should be >= n_clusters=5"),
        ({"n_clusters": 0}, np.zeros((4, 2)), "n_clusters must be an integer >= 1"),
        ({"n_clusters": 2}, np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), "NaN"),
        ({"n_clusters": 2}, np.array([[0.0, np.inf], [1.0, 1.0], [2.0, 2.0]]), "infinity"),
        ({"n_clusters": 2}, np.zeros(5), "Expected 2D array"),
        ({"n_clusters": 2, "init": np.zeros((3, 2))}, np.zeros((5, 2)), r"initial centers \(3, 2\) does not match"),
        ({"n_clusters": 2, "init": "farthest"}, np.zeros((5, 2)), r"init must be 'k-means\+\+', 'random', a callable or an array"),
        ({"n_clusters": 2, "n_init": 0}, np.zeros((5, 2)), "n_init must be an integer >= 1 or 'auto'"),
        ({"n_clusters": 2, "max_iter": 0}, np.zeros((5, 2)), "max_iter must be an integer >= 1"),
        ({"n_clusters": 2, "tol": -1.0}, np.zeros((5, 2)), "tol must be a finite number >= 0"),
        ({"n_clusters": 2, "variant": "kmeans++"}, np.zeros((5, 2)), r"Unknown `variant` 'kmeans\+\+'"),
        ({"n_clusters": 2, "trim_quantile": 0.9}, np.zeros((5, 2)), "`trim_quantile` is not a parameter of variant 'lloyd'"),
        ({"n_clusters": 2, "dtype": "float16"}, np.zeros((5, 2)), "dtype must be 'float32', 'float64' or None"),
        ({"n_clusters": 2, "device": "nowhere"}, np.zeros((5, 2)), "device must name a torch device"),
    ],
)
def test_bad_input_gives_a_clear_error(params, X, match):
    with pytest.raises(ValueError, match=match):
        KMeans(**params).fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_refused_before_any_work():
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        KMeans(2, device="cuda").fit(np.zeros((5, 2)))


def test_predict_checks_the_number_of_features():
    kmeans = KMeans(2, random_state=0).fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 3 features"):
        kmeans.predict(np.zeros((4, 2)))


def test_predict_transform_and_score_against_numpy(rng):
    X = mixture(rng, 400, 3, 5)
    kmeans = KMeans(5, random_state=0).fit(X)
    new = rng.normal(size=(50, 3)) * 3
    distances = np.sqrt(((new[:, None, :] - kmeans.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(kmeans.transform(new), distances, rtol=1e-12)
    np.testing.assert_array_equal(kmeans.predict(new), distances.argmin(axis=1))
    assert kmeans.score(new) == pytest.approx(-(distances.min(axis=1) ** 2).sum(), rel=1e-12)
    np.testing.assert_array_equal(kmeans.fit_predict(X), kmeans.labels_)


def test_progress_bar_option_shows_a_progress_bar(capsys):
    KMeans(3, n_init=4, init="random", random_state=0, progress_bar=True).fit(bundled("iris", True))
    err = capsys.readouterr().err
    assert "k-means iterations" in err and "restarts_running" in err


@pytest.mark.parametrize("tol", [0.0, 1e-2])
def test_verbose_prints_scikit_learns_lines(capsys, tol):
    """verbose=1 prints scikit-learn's lines on stdout, with the same inertias as scikit-learn's from the same start."""
    X = bundled("iris", True)
    init = X[[0, 50, 100]]
    KMeans(3, init=init, n_init=1, tol=tol, verbose=1).fit(X)
    ours = capsys.readouterr().out.splitlines()
    cluster.KMeans(3, init=init, n_init=1, tol=tol, verbose=1).fit(X)
    theirs = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0].split(":")[0] for line in ours] == [line.split(",")[0].split(":")[0] for line in theirs]
    assert ours[0] == "Initialization complete"
    for mine, other in zip(ours[1:-1], theirs[1:-1]):
        assert float(mine.rsplit(" ", 1)[1].rstrip(".")) == pytest.approx(float(other.rsplit(" ", 1)[1].rstrip(".")), rel=1e-9)
    assert ("strict convergence" in ours[-1]) == ("strict convergence" in theirs[-1])


def test_centroid_trajectory_is_the_reference_history():
    X = bundled("iris", False) * 10
    kmeans = KMeans(3, init=random_init(X, 3, 1), tol=0).fit(X)
    trajectory = kmeans.centroid_trajectory(X)
    expected = reference.lloyd(X, kmeans.initial_centers_, kmeans.n_iter_).centroid_history
    assert trajectory.shape == (kmeans.n_iter_ + 1, 3, 4)
    np.testing.assert_allclose(trajectory, expected, rtol=1e-13)
    np.testing.assert_allclose(trajectory[-1], kmeans.cluster_centers_, rtol=1e-13)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_stores_the_centroids_as_weights_for_automodel(tmp_path, rng):
    X = mixture(rng, 500, 4, 6)
    kmeans = KMeans(6, random_state=0).fit(X)
    kmeans.save_pretrained(tmp_path / "fitted")
    model = AutoModel.from_pretrained(tmp_path / "fitted")
    assert model.config.num_iterations == 0 and model.config.fitted_centroids
    np.testing.assert_array_equal(model.embeddings.fitted_centroids.detach().numpy(), kmeans.cluster_centers_)
    new = rng.normal(size=(100, 4)) * 4
    output = model(torch.tensor(new))  # num_iterations=0: assignment to the stored centroids
    distances = ((new[:, None, :] - kmeans.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(output.labels[0].numpy(), distances.argmin(axis=1))
    np.testing.assert_array_equal(output.labels[0].numpy(), kmeans.predict(new))
    # The looped layer is still Lloyd's iteration: more iterations continue from the fitted centroids.
    more = model(torch.tensor(X), num_iterations=3)
    np.testing.assert_allclose(more.centroids[0].numpy(), reference.lloyd(X, kmeans.cluster_centers_, 3).centroids, rtol=1e-12)


@pytest.mark.parametrize("variant, params", [("lloyd", {}), ("gmm", {"reg_covar": 1e-6}), ("trimmed", {"trim_fraction": 0.05})])
def test_from_pretrained_gives_back_the_estimator(tmp_path, rng, variant, params):
    X = mixture(rng, 300, 3, 4)
    import pandas as pd

    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    kmeans = KMeans(4, random_state=0, variant=variant, **params).fit(frame)
    kmeans.save_pretrained(tmp_path / "fitted")
    loaded = KMeans.from_pretrained(tmp_path / "fitted")
    assert loaded.get_params() == kmeans.get_params()
    for name in ("cluster_centers_", "labels_", "initial_centers_", "feature_names_in_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(kmeans, name))
    assert (loaded.inertia_, loaded.n_iter_, loaded.n_features_in_) == (kmeans.inertia_, kmeans.n_iter_, 3)
    np.testing.assert_array_equal(loaded.predict(frame), kmeans.predict(frame))
    if variant == "gmm":
        np.testing.assert_array_equal(loaded.variances_, kmeans.variances_)
        np.testing.assert_array_equal(loaded.weights_, kmeans.weights_)
    card = (tmp_path / "fitted" / "README.md").read_text()
    assert f"{kmeans.inertia_:.6g}" in card and "a, b, c" in card and f'KMeans(variant="{variant}")' in card


def test_explicit_init_round_trips_and_refit_from_loaded(tmp_path):
    X = bundled("iris", False)
    kmeans = KMeans(3, init=X[:3], n_init=1).fit(X)
    kmeans.save_pretrained(tmp_path / "fitted")
    loaded = KMeans.from_pretrained(tmp_path / "fitted")
    np.testing.assert_array_equal(loaded.init, X[:3])
    np.testing.assert_array_equal(clone(loaded).fit(X).labels_, kmeans.labels_)


def test_save_into_a_directory_keeps_the_user_files_and_loading_an_algorithm_checkpoint_is_refused(tmp_path):
    X = bundled("iris", False)
    kmeans = KMeans(3, random_state=0).fit(X)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    kmeans.save_pretrained(target)  # as transformers' save_pretrained: writing into an existing directory is allowed
    assert (target / "notes.txt").read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["mine"]
    np.testing.assert_array_equal(KMeans.from_pretrained(target).cluster_centers_, kmeans.cluster_centers_)

    algorithm = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=4))
    algorithm.save_pretrained(tmp_path / "algorithm")
    with pytest.raises(ValueError, match="holds no fitted centroids"):
        KMeans.from_pretrained(tmp_path / "algorithm")


def test_fitted_checkpoint_loads_with_remote_code_in_a_fresh_process(tmp_path, rng):
    X = mixture(rng, 300, 2, 3)
    kmeans = KMeans(3, random_state=0).fit(X)
    kmeans.save_pretrained(tmp_path / "fitted")
    new = rng.normal(size=(60, 2)) * 3
    np.save(tmp_path / "new.npy", new)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "fitted")!r}, trust_remote_code=True)
        assert "kmeans_transformer" not in sys.modules, "the package must not be imported"
        np.save({str(tmp_path / "labels.npy")!r}, model(torch.tensor(np.load({str(tmp_path / "new.npy")!r}))).labels[0].numpy())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), kmeans.predict(new))


# ---------------------------------------------------------------------------------------------------------------------
# Saving: complete or not at all; overwrite replaces the whole previous checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def tree(directory):
    """Every file under `directory` with its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def test_saving_again_into_the_same_directory_replaces_the_checkpoint_and_removes_its_stale_files(tmp_path):
    X = bundled("iris", False)
    target = tmp_path / "fitted"
    KMeans(3, random_state=0).fit(X).save_pretrained(target)
    (target / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")  # of an earlier, sharded save
    (target / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (target / "analysis.ipynb").write_text("{}")  # the user's
    kmeans = KMeans(4, random_state=1).fit(X)
    kmeans.save_pretrained(target)  # a rerun of a script that saves to the same directory
    assert not (target / "model-00001-of-00002.safetensors").exists()
    assert not (target / "model.safetensors.index.json").exists()
    assert (target / "analysis.ipynb").read_text() == "{}"
    loaded = KMeans.from_pretrained(target)
    assert loaded.n_clusters == 4 and sorted(os.listdir(tmp_path)) == ["fitted"]
    np.testing.assert_array_equal(loaded.predict(X), kmeans.predict(X))
    assert not [name for name in os.listdir(target) if name.startswith(".")]  # no temporary left behind
    # a plain model saved over it: the estimator's files and its card, which no longer describe it, are removed
    AutoModel.from_pretrained(target).save_pretrained(target)
    assert not {"kmeans_estimator.json", "kmeans_estimator.safetensors", "README.md"} & set(os.listdir(target))
    assert (target / "analysis.ipynb").exists()


def test_a_readme_the_package_did_not_write_is_kept_unless_overwrite(tmp_path):
    X = bundled("iris", False)
    kmeans = KMeans(3, random_state=0).fit(X)
    target = tmp_path / "fitted"
    target.mkdir()
    (target / "README.md").write_text("# My notes\n")
    with pytest.warns(UserWarning, match="README.md was not written by kmeans-transformer"):
        kmeans.save_pretrained(target)
    assert (target / "README.md").read_text() == "# My notes\n"
    assert KMeans.from_pretrained(target).n_clusters == 3
    kmeans.save_pretrained(target, overwrite=True)
    card = ModelCard.load(target / "README.md")
    assert "kmeans-transformer" in card.data.tags and card.data.eval_results[0].metric_value == kmeans.inertia_
    with warnings.catch_warnings():  # our own card is replaced silently
        warnings.simplefilter("error")
        KMeans(2, random_state=0).fit(X).save_pretrained(target)
    assert ModelCard.load(target / "README.md").data.eval_results[0].metric_value != kmeans.inertia_


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_save_leaves_no_directory_or_the_previous_one(tmp_path, monkeypatch, failure):
    import kmeans_transformer.estimator as estimator_module

    X = bundled("iris", False)
    kmeans = KMeans(3, random_state=0).fit(X)

    def failing_save_file(*args, **kwargs):  # the arrays come after the model, its code and the estimator's JSON
        raise failure

    previous = tmp_path / "previous"
    KMeans(2, random_state=0).fit(X).save_pretrained(previous)
    before = tree(previous)
    monkeypatch.setattr(estimator_module, "save_file", failing_save_file)
    for target in (tmp_path / "new", previous):
        with pytest.raises(type(failure)):
            kmeans.save_pretrained(target)
    assert sorted(os.listdir(tmp_path)) == ["previous"]  # no partial "new", no temporary left behind
    assert tree(previous) == before and KMeans.from_pretrained(previous).n_clusters == 2
    monkeypatch.undo()
    kmeans.save_pretrained(tmp_path / "new")  # the rerun is not blocked
    np.testing.assert_array_equal(KMeans.from_pretrained(tmp_path / "new").labels_, kmeans.labels_)


# ---------------------------------------------------------------------------------------------------------------------
# Few rows, NumPy scalars, zero rows
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, params",
    [("lloyd", {}), ("soft", {}), ("spherical", {}), ("trimmed", {"trim_fraction": 0.1}), ("kmedoids", {}),
     ("gmm", {"reg_covar": 1e-6}), ("fuzzy", {})],
)
def test_predict_score_and_transform_take_fewer_rows_than_clusters(variant, params, rng):
    X = mixture(rng, 120, 2, 3) + 10.0  # away from the origin, for spherical
    kmeans = KMeans(3, random_state=0, variant=variant, **params).fit(X)
    spec = kmeans.model_.config.variant_spec
    for rows in (1, 2):
        labels = kmeans.predict(X[:rows])
        assert labels.shape == (rows,) and ((labels >= -1) & (labels < 3)).all()
        if not spec.reports_outliers:  # trimmed flags outliers among the rows of the call
            np.testing.assert_array_equal(labels, kmeans.predict(X)[:rows])
        assert kmeans.transform(X[:rows]).shape == (rows, 3)
        assert np.isfinite(kmeans.score(X[:rows]))


def test_one_or_two_rows_against_numpy(rng):
    X = mixture(rng, 120, 2, 3)
    kmeans = KMeans(3, random_state=0).fit(X)
    distances = ((X[:2, None, :] - kmeans.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(KMeans(3, random_state=0).fit(X).predict(X[:1]), distances[:1].argmin(axis=1))
    assert kmeans.score(X[:2]) == pytest.approx(-distances.min(axis=1).sum(), rel=1e-12)
    np.testing.assert_allclose(kmeans.transform(X[:1]) ** 2, distances[:1], rtol=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        {"n_clusters": np.int64(3), "random_state": np.int64(0), "max_iter": np.int32(50), "n_init": np.int64(2)},
        {"n_clusters": 3, "tol": np.float32(1e-3), "variant": np.str_("soft"), "inverse_temperature": np.float32(2.0)},
        {"n_clusters": np.int32(3), "variant": "fuzzy", "fuzzifier": np.float32(2.5)},
        {"n_clusters": 3, "variant": "trimmed", "trim_fraction": np.float64(0.1), "inverse_temperature": np.float16(1)},
        {"n_clusters": 3, "variant": "gmm", "reg_covar": np.float32(1e-6)},
        {"n_clusters": 3, "variant": "kmedoids", "medoid_selection": np.str_("gumbel")},
    ],
)
def test_numpy_scalars_from_a_parameter_grid_are_accepted_and_kept_as_given(params, tmp_path, rng):
    X = mixture(rng, 90, 2, 3)
    params = {"random_state": 0, **params}
    kmeans = KMeans(**params).fit(X)
    python = {name: value.item() if isinstance(value, np.generic) else value for name, value in params.items()}
    expected = KMeans(**python).fit(X)
    np.testing.assert_array_equal(kmeans.labels_, expected.labels_)
    np.testing.assert_array_equal(kmeans.cluster_centers_, expected.cluster_centers_)
    for name, value in params.items():
        assert kmeans.get_params()[name] is value  # scikit-learn's convention: stored as given
    kmeans.save_pretrained(tmp_path / "fitted")
    assert KMeans.from_pretrained(tmp_path / "fitted").get_params() == expected.get_params()


def test_a_grid_search_over_numpy_parameters_runs():
    from sklearn.model_selection import GridSearchCV

    X = bundled("iris", True)
    grid = {"n_clusters": np.arange(2, 4), "tol": np.array([1e-4, 1e-2], dtype=np.float32)}
    search = GridSearchCV(KMeans(random_state=0, max_iter=30), grid, cv=2).fit(X)
    assert search.best_params_["n_clusters"] in (2, 3) and isinstance(search.best_params_["n_clusters"], np.integer)


def test_a_zero_row_is_refused_by_a_unit_norm_variant_with_its_index(rng):
    X = mixture(rng, 60, 2, 2) + 5.0
    kmeans = KMeans(2, variant="spherical", random_state=0).fit(X)
    rows = np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    for method in ("transform", "predict", "score"):
        with pytest.raises(ValueError, match=r"Row 1 of X has norm 0 \(2 such row"):
            getattr(kmeans, method)(rows)
    with pytest.raises(ValueError, match="no direction"):
        KMeans(2, variant="spherical").fit(np.vstack([X, [[0.0, 0.0]]]))  # as fit does
    assert np.isfinite(KMeans(2, random_state=0).fit(X).transform(rows)).all()  # lloyd: a zero row is a point


# ---------------------------------------------------------------------------------------------------------------------
# Loading: the estimator files are data, read against a fixed schema
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_estimator(tmp_path):
    X = bundled("iris", False)
    kmeans = KMeans(3, init=X[:3], n_init=1).fit(X)
    kmeans.save_pretrained(tmp_path / "fitted")
    return tmp_path / "fitted", kmeans


def edit_record(directory, section, **values):
    path = directory / "kmeans_estimator.json"
    record = json.loads(path.read_text())
    if section is None:
        record.update(values)
    else:
        record[section].update(values)
    path.write_text(json.dumps(record))


def edit_arrays(directory, drop=(), **arrays):
    from safetensors.numpy import load_file, save_file

    path = directory / "kmeans_estimator.safetensors"
    saved = {name: values for name, values in load_file(path).items() if name not in drop}
    save_file({**saved, **arrays}, str(path))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: edit_record(d, "fitted", predict=1), "unknown fitted entry 'predict'"),
        (lambda d: edit_record(d, "fitted", model_=None), "unknown fitted entry 'model_'"),
        (lambda d: edit_record(d, "fitted", cluster_centers_=[[0, 0, 0, 0]] * 3), "unknown fitted entry 'cluster_centers_'"),
        (lambda d: edit_record(d, "fitted", n_iter_="3"), "fitted entry 'n_iter_' must be an integer >= 0"),
        (lambda d: edit_record(d, "fitted", n_features_in_=5), "n_features_in_ is 5, but the model's point_dim is 4"),
        (lambda d: edit_record(d, "parameters", evil=1), "unknown parameters entry 'evil'"),
        (lambda d: edit_record(d, "parameters", n_clusters=5), "parameter 'n_clusters' is 5, but the model's config has 3"),
        (lambda d: edit_record(d, "parameters", variant="gmm"), "parameter 'variant' is 'gmm'"),
        (lambda d: edit_record(d, "parameters", init="farthest"), "parameters entry 'init' must be"),
        (lambda d: edit_record(d, None, __class__="KMeans"), "unknown key '__class__'"),
        (lambda d: edit_arrays(d, drop=("init",)), "the array 'init' is missing"),
        (lambda d: edit_arrays(d, drop=("labels_",)), "the array 'labels_' is missing"),
        (lambda d: edit_arrays(d, extra=np.zeros(2)), "unexpected array 'extra'"),
        (lambda d: edit_arrays(d, labels_=np.full(150, 7)), "labels_ must be integers"),
        (lambda d: edit_arrays(d, initial_centers_=np.zeros((2, 4))), r"initial_centers_ must be finite floats of shape"),
        (lambda d: (d / "kmeans_estimator.safetensors").unlink(), "but not kmeans_estimator.safetensors"),
        (lambda d: (d / "kmeans_estimator.json").write_text("[1, 2]"), "must hold an object with `parameters`"),
    ],
)
def test_from_pretrained_reads_a_fixed_schema_and_refuses_anything_else(saved_estimator, edit, match):
    directory, _ = saved_estimator
    edit(directory)
    with pytest.raises(ValueError, match=match):
        KMeans.from_pretrained(directory)


def test_fitted_parameters_come_from_the_weights_not_the_files(saved_estimator):
    directory, kmeans = saved_estimator
    loaded = KMeans.from_pretrained(directory)
    np.testing.assert_array_equal(loaded.cluster_centers_, loaded.model_.embeddings.fitted_centroids.detach().numpy())
    np.testing.assert_array_equal(loaded.cluster_centers_, kmeans.cluster_centers_)
    assert type(loaded).predict is KMeans.predict and "predict" not in vars(loaded)
    assert sorted(vars(loaded)) == sorted(
        [*kmeans.get_params(), "model_", "cluster_centers_", "n_features_in_", "inertia_", "n_iter_", "n_restarts_",
         "labels_", "initial_centers_", "_n_init", "_n_features_out"]
    )
