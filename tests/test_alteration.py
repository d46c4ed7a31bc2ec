"""The docs' alteration (docs/probing.md): scaling one feature in the assign block gives feature-weighted k-means."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from kmeans_transformer.convert import build_model
from kmeans_transformer.validation import gaussian_mixture
from kmeans_transformer.reference import lloyd

spec = importlib.util.spec_from_file_location(
    "feature_weighted_kmeans", Path(__file__).parents[1] / "examples" / "feature_weighted_kmeans.py"
)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def weighted_labels_loop(points, centroids, weights):
    """Nearest centroid under the diagonal metric `weights`, by a double loop (first minimiser on ties)."""
    labels = []
    for x in points:
        best, best_distance = 0, np.inf
        for j, c in enumerate(centroids):
            distance = sum(w * (a - b) ** 2 for w, a, b in zip(weights, x, c))
            if distance < best_distance:
                best, best_distance = j, distance
        labels.append(best)
    return np.array(labels)


def test_the_numpy_loop_is_feature_weighted_lloyd():
    rng = np.random.default_rng(1)
    points, initial = rng.integers(0, 4, size=(40, 3)).astype(float), rng.normal(size=(4, 3))
    weights = np.array([1.0, 9.0, 0.25])
    labels, centroids, history = example.weighted_lloyd(points, initial, 3, weights)
    expected = initial.copy()
    for t in range(3):
        assigned = weighted_labels_loop(points, expected, weights)
        np.testing.assert_array_equal(history[t], assigned)
        expected = np.array([points[assigned == j].mean(0) if (assigned == j).any() else expected[j] for j in range(4)])
    np.testing.assert_array_equal(centroids, expected)
    np.testing.assert_array_equal(labels, weighted_labels_loop(points, expected, weights))
    # all weights equal: plain Lloyd
    plain = lloyd(points, initial, 3)
    np.testing.assert_array_equal(example.weighted_lloyd(points, initial, 3, np.ones(3))[0], plain.labels)


@pytest.mark.parametrize("feature, scale", [(1, 3.0), (2, 0.5), (0, 0.0)])
def test_scaled_feature_makes_the_model_feature_weighted_lloyd_at_every_layer(feature, scale):
    rng = np.random.default_rng(feature)
    points = gaussian_mixture(rng, 300, 3, 4, spread=2.0)
    initial = points[rng.choice(300, 4, replace=False)]
    model = example.scale_feature(build_model(4, 3, 6, dtype="float64"), feature, scale)
    assert model.engine() == "tokens"  # edited weights run the dense tokens
    output = model(torch.from_numpy(points), centroids=torch.from_numpy(initial), output_attentions=True)
    weights = np.ones(3)
    weights[feature] = scale**2
    labels, centroids, history = example.weighted_lloyd(points, initial, 6, weights)
    np.testing.assert_array_equal(output.labels[0].numpy(), labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), centroids, rtol=0, atol=1e-12)
    for t, attention in enumerate(output.assign_attentions):
        np.testing.assert_array_equal(attention[0, 0].numpy(), np.eye(4)[history[t]])


def test_on_iris_the_alteration_changes_the_clustering_as_predicted():
    points = load_iris().data
    initial = points[[0, 50, 100]]
    model = example.scale_feature(build_model(3, 4, 10, dtype="float64"), 1, 3.0)
    output = model(torch.from_numpy(points), centroids=torch.from_numpy(initial))
    labels, centroids, _ = example.weighted_lloyd(points, initial, 10, np.array([1.0, 9.0, 1.0, 1.0]))
    np.testing.assert_array_equal(output.labels[0].numpy(), labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), centroids, rtol=0, atol=1e-12)
    assert (labels != lloyd(points, initial, 10).labels).sum() > 0  # weighting sepal width changes the answer
