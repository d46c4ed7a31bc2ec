"""Code written for scikit-learn's KMeans runs on ours: sparse input, pipelines, grid searches, relocation, functions."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn import cluster
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kmeans_transformer import KMeans, k_means, kmeans_plusplus


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=300, centers=4, n_features=5, random_state=0)
    return X


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array])
def test_sparse_fits_equal_dense_fits(container):
    rng = np.random.default_rng(0)
    X = rng.random((200, 30)) * (rng.random((200, 30)) < 0.2)  # 20 % dense
    weights = rng.uniform(0.5, 2.0, size=200)
    dense = KMeans(4, random_state=0, n_init=3).fit(X, sample_weight=weights)
    sparse = KMeans(4, random_state=0, n_init=3).fit(container(X), sample_weight=weights)
    np.testing.assert_array_equal(sparse.labels_, dense.labels_)
    np.testing.assert_allclose(sparse.cluster_centers_, dense.cluster_centers_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sparse.predict(container(X)), dense.predict(X))
    np.testing.assert_allclose(sparse.transform(container(X)), dense.transform(X), rtol=1e-12)
    assert sparse.score(container(X)) == pytest.approx(dense.score(X), rel=1e-12)


def test_clone_grid_search_and_a_pandas_pipeline(blobs):
    assert clone(KMeans(3, algorithm="elkan", copy_x=False)).get_params()["algorithm"] == "elkan"
    search = GridSearchCV(KMeans(random_state=0), {"n_clusters": [2, 3]}).fit(blobs)
    assert search.best_params_ == {"n_clusters": 3}  # the larger k has the smaller held-out inertia
    pipeline = make_pipeline(StandardScaler(), KMeans(4, random_state=0)).set_output(transform="pandas")
    distances = pipeline.fit_transform(pd.DataFrame(blobs, columns=list("abcde")))
    assert isinstance(distances, pd.DataFrame) and list(distances.columns) == [f"kmeans{j}" for j in range(4)]
    scaled = StandardScaler().fit_transform(blobs)
    centres = pipeline[-1].cluster_centers_
    np.testing.assert_allclose(distances.to_numpy(), np.linalg.norm(scaled[:, None] - centres[None], axis=-1), rtol=1e-10)


def test_relocation_follows_scikit_learn(blobs):
    """An initial centre far from every point empties its cluster; it moves to the farthest point, as in scikit-learn."""
    init = np.vstack([blobs[:3], np.full((1, 5), 100.0)])
    ours = KMeans(4, init=init, n_init=1, tol=0).fit(blobs)
    theirs = cluster.KMeans(4, init=init, n_init=1, tol=0, algorithm="lloyd").fit(blobs)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        kept = KMeans(4, init=init, n_init=1, tol=0, empty_clusters="keep").fit(blobs)
    np.testing.assert_array_equal(kept.cluster_centers_[3], init[3])  # the model's own rule


def test_relocation_is_weighted(blobs):
    weights = np.random.default_rng(1).uniform(0.2, 3.0, size=len(blobs))
    init = np.vstack([blobs[:3], np.full((1, 5), 100.0)])
    ours = KMeans(4, init=init, n_init=1, tol=0).fit(blobs, sample_weight=weights)
    theirs = cluster.KMeans(4, init=init, n_init=1, tol=0).fit(blobs, sample_weight=weights)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "init, expected", [("k-means++", 1), ("random", 10), (lambda X, k, random_state: X[:k], 10), ("array", 1)]
)
def test_n_init_auto_is_resolved_as_scikit_learn(blobs, init, expected):
    init = blobs[:3].tolist() if isinstance(init, str) and init == "array" else init  # a list of lists is an init
    kmeans = KMeans(3, init=init, random_state=0).fit(blobs)
    reference = cluster.KMeans(3, init=init, random_state=0).fit(blobs)
    assert kmeans._n_init == kmeans.n_restarts_ == reference._n_init == expected


def test_wrong_init_shapes_use_scikit_learns_words(blobs):
    for init, words in ((blobs[:2], "does not match the number of clusters 3"),
                        (blobs[:3, :2], "does not match the number of features of the data 5")):
        with pytest.raises(ValueError, match=words):
            KMeans(3, init=init, n_init=1).fit(blobs)
        with pytest.raises(ValueError, match=words):
            cluster.KMeans(3, init=init, n_init=1).fit(blobs)


def test_unknown_algorithm_and_empty_clusters_are_refused(blobs):
    with pytest.raises(ValueError, match="algorithm must be one of"):
        KMeans(3, algorithm="full").fit(blobs)
    with pytest.raises(ValueError, match="empty_clusters must be one of"):
        KMeans(3, empty_clusters="drop").fit(blobs)


def test_the_input_is_never_modified(blobs):
    X, weights = blobs.copy(), np.ones(len(blobs))
    KMeans(3, copy_x=False, random_state=0).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(X, blobs)
    np.testing.assert_array_equal(weights, np.ones(len(blobs)))


def test_k_means_and_kmeans_plusplus_have_scikit_learns_signatures(blobs):
    centers, labels, inertia, n_iter = k_means(blobs, 3, random_state=0, return_n_iter=True)
    kmeans = KMeans(3, random_state=0).fit(blobs)
    np.testing.assert_array_equal(centers, kmeans.cluster_centers_)
    np.testing.assert_array_equal(labels, kmeans.labels_)
    assert inertia == kmeans.inertia_ and n_iter == kmeans.n_iter_
    seeds, indices = kmeans_plusplus(blobs, 4, random_state=0, x_squared_norms=(blobs**2).sum(axis=1))
    np.testing.assert_array_equal(seeds, blobs[indices])
    assert len(set(indices.tolist())) == 4
    weights = np.zeros(len(blobs))
    weights[:50] = 1.0
    _, indices = kmeans_plusplus(blobs, 4, sample_weight=weights, random_state=0)
    assert (indices < 50).all()  # a point of weight 0 is never drawn
