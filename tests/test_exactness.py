"""The hardmax model against the independent NumPy Lloyd loop and scikit-learn, iteration by iteration."""

import numpy as np
import pytest
import torch
from sklearn import datasets
from sklearn.cluster import KMeans

from kmeans_transformer.attention import hardmax_attention_forward
from kmeans_transformer.reference import lloyd

from conftest import make_model, mixture, trajectory


def assert_matches_reference(points, initial, T, rtol=1e-10):
    model = make_model(initial.shape[0], points.shape[1], T)
    output = model(torch.tensor(points), torch.tensor(initial), output_hidden_states=True)
    expected = lloyd(points, initial, T)
    labels, centroids = trajectory(model, output, len(points))
    scale = max(np.abs(points).max(), 1.0)
    for t in range(T):
        np.testing.assert_array_equal(labels[t], expected.label_history[t], err_msg=f"labels differ at iteration {t}")
        np.testing.assert_allclose(centroids[t], expected.centroid_history[t + 1], rtol=rtol, atol=rtol * scale)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(output.inertia.item(), expected.inertia, rtol=1e-10)
    return output, expected


GRID = [  # (n, d, k, T)
    (10, 1, 2, 1),
    (10, 3, 8, 5),
    (100, 1, 8, 30),
    (100, 16, 2, 10),
    (300, 2, 16, 30),
    (1000, 8, 8, 20),
    (1000, 64, 64, 5),
    (2000, 32, 64, 30),
    (10000, 2, 4, 30),
    (10000, 64, 64, 10),
]


@pytest.mark.parametrize("n, d, k, T", GRID, ids=[f"n{n}-d{d}-k{k}-T{T}" for n, d, k, T in GRID])
def test_gaussian_mixtures_match_lloyd_every_iteration(rng, n, d, k, T):
    points = mixture(rng, n, d, max(k // 2, 1))
    initial = points[rng.choice(n, size=k, replace=False)]
    assert_matches_reference(points, initial, T)


@pytest.mark.parametrize("variant, extra", [("lloyd", {}), ("trimmed", {"trim_fraction": 0.1})])
def test_without_the_final_assignment_labels_are_the_last_layers(rng, variant, extra):
    points = mixture(rng, 400, 3, 4)
    initial = points[rng.choice(400, size=5, replace=False)]
    model = make_model(5, 3, 4, variant=variant, **extra)
    output = model(torch.tensor(points), torch.tensor(initial), final_assignment=False)
    expected = model.config.variant_spec.run_reference(model.config, points, initial)
    last_labels = expected.label_history[-1]
    np.testing.assert_array_equal(output.labels[0].numpy(), last_labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=1e-12)
    kept = last_labels >= 0
    objective = ((points[kept] - expected.centroids[last_labels[kept]]) ** 2).sum()  # after the last update
    assert output.inertia.item() == pytest.approx(objective, rel=1e-12)
    if variant == "trimmed":
        np.testing.assert_array_equal(output.outliers[0].numpy(), expected.outlier_history[-1])
    with pytest.raises(ValueError, match="needs `num_iterations >= 1`"):
        model(torch.tensor(points), num_iterations=0, final_assignment=False)


# Iris and wine are recorded on decimal grids (0.1 and 0.01); scaled to integers their distances are computed exactly,
# so the many exact ties are ties in floating point too and must be broken like argmin. (Unscaled, a tie between
# decimals that floats cannot represent is decided by rounding, which depends on how the distance is written.)
# Digits are integers already; breast cancer is kept raw.
BUNDLED_SCALE = {"iris": 10, "wine": 100, "breast_cancer": None, "digits": 1}


def _bundled(name):
    points = getattr(datasets, f"load_{name}")(return_X_y=True)[0].astype(np.float64)
    scale = BUNDLED_SCALE[name]
    return points if scale is None else np.round(points * scale)


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits"])
def test_bundled_datasets_match_lloyd_every_iteration(rng, name):
    points = _bundled(name)
    initial = points[rng.choice(len(points), size=10, replace=False)]
    assert_matches_reference(points, initial, 25)


def test_digits_have_exact_ties_broken_like_argmin():
    """Integer-valued digits with two identical initial centroids: every point ties, the lower index must win."""
    points = _bundled("digits")[:400]
    initial = np.stack([points[0], points[0], points[1], points[2]])
    _, expected = assert_matches_reference(points, initial, 10)
    assert (expected.label_history[0] != 1).all()  # the tie always went to cluster 0
    first_iteration = assert_matches_reference(points, initial, 1)[0]
    np.testing.assert_array_equal(first_iteration.centroids[0, 1].numpy(), points[0])  # cluster 1 was empty


def test_empty_cluster_keeps_its_centroid():
    points = np.array([[0.0], [1.0], [10.0], [11.0]])
    initial = np.array([[0.0], [10.0], [100.0]])
    output, _ = assert_matches_reference(points, initial, 3)
    np.testing.assert_array_equal(output.centroids[0].numpy(), [[0.5], [10.5], [100.0]])
    assert not torch.isnan(output.centroids).any()


def test_cluster_that_empties_midway(rng):
    """A centroid that wins points in iteration 1 and loses them all in iteration 2."""
    points = np.array([[17.0], [8.0], [18.0], [15.0], [8.0], [10.0]])
    initial = np.array([[19.0], [15.0], [3.0]])
    model = make_model(3, 1, 4)
    expected = lloyd(points, initial, 4)
    sizes = [np.bincount(labels, minlength=3) for labels in expected.label_history]
    assert sizes[0].min() > 0 and sizes[1][1] == 0, "the scenario must empty cluster 1 in iteration 2"
    assert_matches_reference(points, initial, 4)
    assert not torch.isnan(model(torch.tensor(points), torch.tensor(initial)).centroids).any()


def test_duplicated_points(rng):
    base = rng.integers(0, 5, size=(60, 3)).astype(np.float64)
    points = np.repeat(base, 3, axis=0)
    initial = np.concatenate([points[:4], points[:2]])  # duplicated initial centroids too
    assert_matches_reference(points, initial, 15)


def test_padded_batch_matches_each_problem_alone(rng):
    sizes, d, k, T = [50, 200, 120], 4, 5, 12
    problems = [mixture(rng, n, d, 3) for n in sizes]
    initial = np.stack([p[rng.choice(len(p), size=k, replace=False)] for p in problems])
    batch = rng.normal(scale=1e6, size=(len(sizes), max(sizes), d))  # huge padding values must not matter
    mask = np.zeros((len(sizes), max(sizes)), dtype=bool)
    for b, problem in enumerate(problems):
        batch[b, : len(problem)] = problem
        mask[b, : len(problem)] = True
    model = make_model(k, d, T)
    output = model(torch.tensor(batch), torch.tensor(initial), attention_mask=torch.tensor(mask))
    for b, problem in enumerate(problems):
        expected = lloyd(problem, initial[b], T)
        np.testing.assert_array_equal(output.labels[b, : len(problem)].numpy(), expected.labels)
        assert (output.labels[b, len(problem):] == -1).all()
        assert (output.assignments[b, len(problem):] == 0).all()
        np.testing.assert_allclose(output.centroids[b].numpy(), expected.centroids, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(output.inertia[b].item(), expected.inertia, rtol=1e-10)


def test_padding_in_the_middle_and_default_centroids(rng):
    """The mask may mark any positions; default centroids are the first k real points."""
    points = mixture(rng, 80, 2, 3)
    mask = rng.random(80) < 0.7
    model = make_model(3, 2, 8)
    output = model(torch.tensor(points), attention_mask=torch.tensor(mask)[None])
    real = points[mask]
    expected = lloyd(real, real[:3], 8)
    np.testing.assert_array_equal(output.labels[0, torch.tensor(mask)].numpy(), expected.labels)
    np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=1e-10)


@pytest.mark.parametrize("T", [1, 3, 50])
def test_agrees_with_scikit_learn(rng, T):
    points = mixture(rng, 1500, 5, 6, spread=6.0)
    initial = points[rng.choice(len(points), size=6, replace=False)]
    reference = KMeans(6, init=initial, n_init=1, max_iter=T, tol=0, algorithm="lloyd").fit(points)
    expected_sizes = np.bincount(reference.labels_, minlength=6)
    assert expected_sizes.min() > 0  # no cluster emptied: the comparison is fair
    output = make_model(6, 5, T)(torch.tensor(points), torch.tensor(initial))
    np.testing.assert_array_equal(output.labels[0].numpy(), reference.labels_)
    np.testing.assert_allclose(output.centroids[0].numpy(), reference.cluster_centers_, rtol=1e-10)
    np.testing.assert_allclose(output.inertia.item(), reference.inertia_, rtol=1e-8)


def test_float32_close_to_float64_reference(rng):
    matches = total = 0
    for _ in range(5):
        points = mixture(rng, 2000, 8, 8).astype(np.float32).astype(np.float64)
        initial = points[rng.choice(len(points), size=8, replace=False)]
        expected = lloyd(points, initial, 10)
        model = make_model(8, 8, 10, dtype=torch.float32)
        output = model(torch.tensor(points, dtype=torch.float32), torch.tensor(initial, dtype=torch.float32))
        matches += int((output.labels[0].numpy() == expected.labels).sum())
        total += len(points)
        np.testing.assert_allclose(output.centroids[0].double().numpy(), expected.centroids, rtol=1e-4, atol=1e-4)
    assert matches / total >= 0.999


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_softmax_path_approaches_hardmax_as_gamma_grows(rng, attn_implementation):
    points = mixture(rng, 400, 3, 4)
    initial = points[:4]
    expected = lloyd(points, initial, 5).centroids
    errors = []
    for gamma in [0.1, 1.0, 10.0, 1e3, 1e6]:
        model = make_model(4, 3, 5, inverse_temperature=gamma, attn_implementation=attn_implementation)
        assert model.config._attn_implementation == attn_implementation
        errors.append(np.abs(model(torch.tensor(points), torch.tensor(initial)).centroids[0].numpy() - expected).max())
    assert errors[0] > 1e-1
    assert errors[-1] < 1e-8
    assert errors[-1] < errors[2] < errors[0]


def test_shared_and_separate_layers_and_iteration_override(rng):
    points = mixture(rng, 300, 3, 4)
    initial = points[:4]
    shared = make_model(4, 3, 7)
    separate = make_model(4, 3, 7, share_layers=False)
    assert len(shared.layers) == 1 and len(separate.layers) == 7
    a = shared(torch.tensor(points), torch.tensor(initial))
    b = separate(torch.tensor(points), torch.tensor(initial))
    torch.testing.assert_close(a.centroids, b.centroids, rtol=0, atol=0)
    override = shared(torch.tensor(points), torch.tensor(initial), num_iterations=12)
    np.testing.assert_allclose(override.centroids[0].numpy(), lloyd(points, initial, 12).centroids, rtol=1e-10)
    zero = shared(torch.tensor(points), torch.tensor(initial), num_iterations=0)
    np.testing.assert_array_equal(zero.labels[0].numpy(), lloyd(points, initial, 0).labels)
    np.testing.assert_array_equal(zero.centroids[0].numpy(), initial)


def test_hardmax_kernel_ties():
    class Ties(torch.nn.Module):
        def __init__(self, ties):
            super().__init__()
            self.hardmax_ties = ties

    query = torch.tensor([[[[1.0], [2.0]]]])  # (1, 1, 2, 1)
    key = torch.tensor([[[[1.0], [1.0], [0.5]]]])  # (1, 1, 3, 1): keys 0 and 1 tie
    value = torch.tensor([[[[1.0], [3.0], [5.0]]]])
    _, first = hardmax_attention_forward(Ties("first"), query, key, value, None)
    out, average = hardmax_attention_forward(Ties("average"), query, key, value, None)
    assert first[0, 0].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert average[0, 0].tolist() == [[0.5, 0.5, 0], [0.5, 0.5, 0]]
    assert out[0, :, 0, 0].tolist() == [2.0, 2.0]
    mask = torch.tensor([[[[False, True, True], [False, False, False]]]])
    _, masked = hardmax_attention_forward(Ties("first"), query, key, value, mask)
    assert masked[0, 0].tolist() == [[0, 1, 0], [0, 0, 0]]  # a row that sees nothing attends to nothing


def test_attention_maps_are_the_algorithm(rng):
    points = mixture(rng, 200, 2, 3)
    initial = points[:3]
    model = make_model(3, 2, 4)
    output = model(torch.tensor(points), torch.tensor(initial), output_attentions=True)
    expected = lloyd(points, initial, 4)
    assert len(output.attentions) == 4 and all(len(layer) == 4 for layer in output.attentions)
    for t, (point_erase, assign, centroid_erase, update) in enumerate(output.attentions):
        np.testing.assert_array_equal(assign[0, 0].numpy(), np.eye(3)[expected.label_history[t]])
        members = np.eye(3)[expected.label_history[t]].T
        np.testing.assert_allclose(update[0, 0, :, :200].numpy(), members / members.sum(1, keepdims=True))
        assert (point_erase == 1).all() and (centroid_erase == 1).all()
