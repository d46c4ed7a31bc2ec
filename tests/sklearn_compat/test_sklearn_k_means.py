"""
scikit-learn's own KMeans tests, run on `kmeans_transformer.KMeans`.

The test functions of the installed `sklearn/cluster/tests/test_k_means.py` are taken at collection time (nothing is
copied into this repository) and rebound so that the names `KMeans`, `k_means` and `kmeans_plusplus` in their bodies
and in their parametrisations are this package's. MiniBatchKMeans and scikit-learn's private helpers are left out
(`LEFT_OUT`); the tests that still fail are expected failures with their reason (`EXPECTED_FAILURES`, listed with the
counts in docs/sklearn_compatibility.md).
"""

import importlib
import re
import types

import numpy as np
import pytest
from sklearn import cluster

import kmeans_transformer

upstream = importlib.import_module("sklearn.cluster.tests.test_k_means")

OURS = {"KMeans": kmeans_transformer.KMeans, "k_means": kmeans_transformer.k_means,
        "kmeans_plusplus": kmeans_transformer.kmeans_plusplus}
THEIRS = {cluster.KMeans: kmeans_transformer.KMeans}

# Tests of MiniBatchKMeans alone, or of scikit-learn's private helpers (Cython distance, inertia and relocation
# kernels, `_is_same_clustering`): nothing of this package runs in them.
LEFT_OUT = {
    "test_minibatch_update_consistency": "MiniBatchKMeans",
    "test_minibatch_kmeans_partial_fit_init": "MiniBatchKMeans",
    "test_minibatch_kmeans_verbose": "MiniBatchKMeans",
    "test_minibatch_kmeans_warning_init_size": "MiniBatchKMeans",
    "test_minibatch_sensible_reassign": "MiniBatchKMeans",
    "test_minibatch_reassign": "MiniBatchKMeans",
    "test_minibatch_with_many_reassignments": "MiniBatchKMeans",
    "test_minibatch_kmeans_init_size": "MiniBatchKMeans",
    "test_minibatch_declared_convergence": "MiniBatchKMeans",
    "test_minibatch_iter_steps": "MiniBatchKMeans",
    "test_relocate_empty_clusters": "scikit-learn's private `_relocate_empty_clusters_dense/_sparse`",
    "test_euclidean_distance": "scikit-learn's private `_euclidean_dense_dense_wrapper`",
    "test_inertia": "scikit-learn's private `_inertia_dense/_sparse`",
    "test_is_same_clustering": "scikit-learn's private `_is_same_clustering`",
}

# Test id (a regular expression matched against the test's name with its parameters) -> why it fails here.
EXPECTED_FAILURES = {}

# Over about 5 s each (thousands of points to convergence at tol=0): left to `-m slow`.
SLOW = r"test_kmeans_verbose\[0-.*|test_kmeans_convergence\[.*|test_kmeans_elkan_results\[.*-normal\]"


def _ours(value):
    """A parameter value with scikit-learn's KMeans replaced by ours (inside tuples too)."""
    if isinstance(value, tuple):
        return tuple(_ours(item) for item in value)
    if isinstance(value, type) and value in THEIRS:
        return THEIRS[value]
    return value


def _mentions_minibatch(value) -> bool:
    values = value.values if hasattr(value, "values") and isinstance(value, tuple) is False else value
    items = values if isinstance(values, tuple) else (values,)
    return any(item is cluster.MiniBatchKMeans for item in items)


def _parametrize(mark):
    """A parametrize mark with our KMeans in its values, and MiniBatchKMeans's values (and ids) left out."""
    argnames, argvalues = mark.args[:2]
    kwargs = dict(mark.kwargs)
    ids = kwargs.pop("ids", None)
    kept = [(value, None if ids is None or callable(ids) else ids[i]) for i, value in enumerate(argvalues)
            if not _mentions_minibatch(value)]
    values = [
        pytest.param(*_ours(value.values), marks=value.marks, id=value.id) if hasattr(value, "marks")
        else _ours(value) for value, _ in kept
    ]
    if ids is not None and not callable(ids):
        ids = [identifier for _, identifier in kept]
    return pytest.mark.parametrize(argnames, values, ids=ids, **kwargs)


def _rebound(function):
    """`function` with this package's names in its globals and in its parametrisations."""
    bound = types.FunctionType(function.__code__, {**vars(upstream), **OURS}, function.__name__,
                               function.__defaults__, function.__closure__)
    bound.__doc__ = function.__doc__
    bound.pytestmark = [
        _parametrize(mark).mark if mark.name == "parametrize" else mark for mark in getattr(function, "pytestmark", [])
    ]
    return bound


for _name, _function in vars(upstream).items():
    if _name.startswith("test_") and callable(_function) and _name not in LEFT_OUT:
        globals()[_name] = _rebound(_function)


@pytest.fixture
def global_random_seed():
    """scikit-learn's default global seed (its conftest's fixture)."""
    return 42


@pytest.fixture
def global_dtype():
    """scikit-learn's default `global_dtype` (float64; its conftest adds float32 on request)."""
    return np.float64


def pytest_collection_modifyitems_for(items):
    """Mark the expected failures and the slow tests (called from this folder's conftest)."""
    for item in items:
        if re.fullmatch(SLOW, item.name):
            item.add_marker(pytest.mark.slow)
        for pattern, reason in EXPECTED_FAILURES.items():
            if re.fullmatch(pattern, item.name):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
