"""Fuzzy c-means as the transformer: every layer against the NumPy reference, the result against scikit-fuzzy."""

import numpy as np
import pytest
import torch

from kmeans_transformer import KMeansTransformerConfig
from kmeans_transformer.reference import fuzzy_cmeans, fuzzy_memberships

from conftest import make_model, mixture


def layers(model, output, num_points):
    """Per-layer memberships `(T, n, k)` and centroids `(T, k, d)` read off the hidden states."""
    slices = model.config.token_slices
    states = output.hidden_states[1:]
    memberships = np.stack([h[0, :num_points, slices["code"]].numpy() for h in states])
    centroids = np.stack([h[0, num_points:, slices["position"]].numpy() for h in states])
    return memberships, centroids


@pytest.mark.parametrize("fuzzifier", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("n, d, k, T", [(200, 2, 3, 8), (500, 5, 6, 5), (60, 1, 2, 12)])
def test_every_layer_matches_the_reference(rng, fuzzifier, n, d, k, T):
    points = mixture(rng, n, d, k)
    initial = points[rng.choice(n, size=k, replace=False)]
    model = make_model(k, d, T, variant="fuzzy", fuzzifier=fuzzifier)
    output = model(torch.tensor(points), torch.tensor(initial), output_hidden_states=True)
    expected = fuzzy_cmeans(points, initial, T, fuzzifier)
    memberships, centroids = layers(model, output, n)
    scale = np.abs(points).max()
    for t in range(T):
        entering = expected.centroid_history[t]
        np.testing.assert_allclose(memberships[t], fuzzy_memberships(points, entering, fuzzifier), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(centroids[t], expected.centroid_history[t + 1], rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(output.responsibilities[0].numpy(), expected.responsibilities, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    np.testing.assert_allclose(output.inertia.item(), expected.inertia, rtol=1e-9)


@pytest.mark.parametrize("fuzzifier", [1.5, 2.0, 3.0])
def test_matches_scikit_fuzzy_from_the_same_memberships(rng, fuzzifier):
    skfuzzy = pytest.importorskip("skfuzzy")
    n, d, k, T = 300, 3, 4, 10
    points = mixture(rng, n, d, k)
    initial = points[rng.choice(n, size=k, replace=False)]
    # scikit-fuzzy starts from memberships and updates first: give it the memberships of our initial centroids, so
    # that its T iterations are our T layers.
    start = fuzzy_memberships(points, initial, fuzzifier)
    centres, memberships, *_ = skfuzzy.cluster.cmeans(points.T, k, fuzzifier, error=0.0, maxiter=T, init=start.T, seed=0)
    output = make_model(k, d, T, variant="fuzzy", fuzzifier=fuzzifier)(torch.tensor(points), torch.tensor(initial))
    np.testing.assert_allclose(output.centroids[0].numpy(), centres, rtol=1e-8, atol=1e-8 * np.abs(points).max())
    np.testing.assert_allclose(output.responsibilities[0].numpy(), memberships.T, rtol=1e-6, atol=1e-8)


def test_a_point_on_a_centroid_has_membership_one_there():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [6.0, 5.0]], dtype=torch.float64)
    initial = points[[0, 2]].clone()  # points 0 and 2 sit exactly on the centroids
    output = make_model(2, 2, 0, variant="fuzzy")(points, initial)
    memberships = output.responsibilities[0].numpy()
    assert np.isfinite(memberships).all()
    np.testing.assert_array_equal(memberships[0], [1.0, 0.0])
    np.testing.assert_array_equal(memberships[2], [0.0, 1.0])
    np.testing.assert_allclose(memberships.sum(axis=1), 1.0, rtol=1e-15)
    after = make_model(2, 2, 3, variant="fuzzy")(points, initial)
    assert torch.isfinite(after.centroids).all()
    np.testing.assert_allclose(after.centroids[0].numpy(), fuzzy_cmeans(points.numpy(), initial.numpy(), 3, 2.0).centroids)


def test_padded_batch_matches_each_problem_alone(rng):
    first, second = mixture(rng, 40, 2, 3), mixture(rng, 25, 2, 3)
    batch = np.zeros((2, 40, 2))
    batch[0], batch[1, :25] = first, second
    mask = np.zeros((2, 40), dtype=bool)
    mask[0], mask[1, :25] = True, True
    initial = np.stack([first[:3], second[:3]])
    output = make_model(3, 2, 6, variant="fuzzy", fuzzifier=1.7)(torch.tensor(batch), torch.tensor(initial), torch.tensor(mask))
    for problem, points in enumerate((first, second)):
        expected = fuzzy_cmeans(points, initial[problem], 6, 1.7)
        np.testing.assert_allclose(output.centroids[problem].numpy(), expected.centroids, rtol=1e-10, atol=1e-12)
    assert (output.labels[1, 25:] == -1).all() and (output.assignments[1, 25:] == 0).all()


@pytest.mark.parametrize("fuzzifier", [1.0, 0.5, float("inf"), "2"])
def test_fuzzifier_must_be_a_number_above_one(fuzzifier):
    with pytest.raises(ValueError, match="fuzzifier"):
        KMeansTransformerConfig(num_clusters=2, variant="fuzzy", fuzzifier=fuzzifier)
    with pytest.raises(ValueError, match="not a parameter of variant 'lloyd'"):
        KMeansTransformerConfig(num_clusters=2, fuzzifier=2.0)


def test_a_cluster_whose_weights_all_underflow_keeps_its_centroid():
    """Memberships > 0 whose powers u^m all round to 0: the update sees only the centroid's own token."""
    points = torch.tensor([[1.001], [1.001001]], dtype=torch.float64)
    initial = torch.tensor([[1.0], [0.9604]], dtype=torch.float64)
    output = make_model(2, 1, 1, variant="fuzzy", fuzzifier=1.01)(points, initial, output_hidden_states=True)
    expected = fuzzy_cmeans(points.numpy(), initial.numpy(), 1, 1.01)
    assert expected.centroids[1, 0] == 0.9604  # the reference keeps it
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=1e-12)
