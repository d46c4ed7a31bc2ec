"""The interpretability examples (`examples/`): nnsight, captum and plain torch hooks, each checked against a
prediction computed independently of the model (the NumPy references or a plain torch loop)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kmeans_transformer import reference


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """Import `examples/<name>.py` as a module (the examples are scripts, not a package)."""
    module_name = f"kmeans_transformer_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@pytest.fixture(scope="module")
def nnsight_example():
    pytest.importorskip("nnsight")
    return load_example("nnsight_intervention")


@pytest.fixture(scope="module")
def captum_example():
    pytest.importorskip("captum")
    return load_example("captum_attribution")


@pytest.fixture(scope="module")
def hooks_example():
    return load_example("torch_hooks")


# nnsight


@pytest.mark.parametrize("share_layers", [True, False])
def test_nnsight_assign_weights_are_reference_one_hot(nnsight_example, share_layers):
    points, centroids = nnsight_example.make_problem()
    k, d = centroids.shape
    T = 4
    model = nnsight_example.build_lloyd(k, d, T, share_layers=share_layers)
    weights = nnsight_example.trace_assign_weights(model, points, centroids)
    history = reference.lloyd(points, centroids, T).label_history
    assert len(weights) == T
    for t in range(T):
        assert np.array_equal(weights[t], np.eye(k)[history[t]])


@pytest.mark.parametrize("share_layers, iteration, cluster", [(True, 1, 2), (True, 2, 1), (True, 4, 0), (False, 2, 1)])
def test_nnsight_zeroed_update_follows_prediction(nnsight_example, share_layers, iteration, cluster):
    points, centroids = nnsight_example.make_problem()
    k, d = centroids.shape
    T = 4
    model = nnsight_example.build_lloyd(k, d, T, share_layers=share_layers)
    labels, final = nnsight_example.zero_centroid_update(model, points, centroids, iteration, cluster)
    predicted = nnsight_example.predicted_zeroed_trajectory(points, centroids, T, iteration, cluster)
    np.testing.assert_array_equal(labels, predicted.labels)
    np.testing.assert_allclose(final, predicted.centroids, rtol=0, atol=1e-12)
    if iteration == T:  # nothing runs after the edit: the centroid stays at the origin
        np.testing.assert_array_equal(final[cluster], np.zeros(d))
    plain = reference.lloyd(points, centroids, T)
    assert not np.allclose(final, plain.centroids)  # the intervention mattered on this problem


def test_nnsight_addresses_the_intended_call_of_the_shared_layer(nnsight_example):
    """Zeroing at iteration 2 and at iteration 3 give different runs, each its own prediction."""
    points, centroids = nnsight_example.make_problem()
    k, d = centroids.shape
    model = nnsight_example.build_lloyd(k, d, 4)
    finals = {}
    for iteration in (2, 3):
        _, finals[iteration] = nnsight_example.zero_centroid_update(model, points, centroids, iteration, 1)
        predicted = nnsight_example.predicted_zeroed_trajectory(points, centroids, 4, iteration, 1)
        np.testing.assert_allclose(finals[iteration], predicted.centroids, rtol=0, atol=1e-12)
    assert not np.allclose(finals[2], finals[3])


# captum


@pytest.mark.parametrize("initial", ["fixed", "first_points"])
@pytest.mark.parametrize("num_iterations, cluster, coordinate", [(1, 2, 0), (2, 0, 1)])
def test_captum_saliency_is_reference_gradient(captum_example, initial, num_iterations, cluster, coordinate):
    points = captum_example.make_problem()
    centroids = captum_example.FIXED_CENTROIDS
    k, d = centroids.shape
    gamma = 0.5
    model = captum_example.build_soft(k, d, num_iterations, gamma)
    start = centroids if initial == "fixed" else points[:k]
    expected_value = reference.soft_kmeans(points, start, num_iterations, gamma).centroids[cluster, coordinate]
    value = captum_example.model_value(model, points, centroids, cluster, coordinate, initial)
    assert value == pytest.approx(expected_value, abs=1e-12)
    attributions = captum_example.saliency(model, points, centroids, cluster, coordinate, initial)
    gradient = captum_example.reference_gradient(points, centroids, num_iterations, gamma, cluster, coordinate, initial)
    assert np.abs(gradient).max() > 1e-3  # a gradient worth comparing
    np.testing.assert_allclose(attributions, gradient, rtol=0, atol=1e-8)


def test_captum_integrated_gradients_reference_and_completeness(captum_example):
    points = captum_example.make_problem()
    centroids = captum_example.FIXED_CENTROIDS
    k, d = centroids.shape
    T, gamma, cluster, coordinate = 2, 0.5, 0, 1
    model = captum_example.build_soft(k, d, T, gamma)
    baseline = captum_example.mean_baseline(points)
    f_x = captum_example.model_value(model, points, centroids, cluster, coordinate)
    f_baseline = captum_example.model_value(model, baseline, centroids, cluster, coordinate)
    assert f_baseline == pytest.approx(points.mean(axis=0)[coordinate], abs=1e-12)
    attributions, delta = captum_example.integrated_gradients(model, points, centroids, cluster, coordinate, baseline)
    expected = captum_example.reference_integrated_gradients(
        points, centroids, T, gamma, cluster, coordinate, baseline
    )
    np.testing.assert_allclose(attributions, expected, rtol=0, atol=1e-8)
    assert attributions.sum() == pytest.approx(f_x - f_baseline, abs=1e-6)
    assert abs(delta) < 1e-6


# plain torch hooks


def test_hooks_make_the_fast_path_run_the_blocks(hooks_example):
    points, centroids = hooks_example.make_problem()
    k, d = centroids.shape
    model = hooks_example.build_lloyd(k, d, 3, fast_hardmax=True)
    assert model.engine() == "compact"
    assert hooks_example.count_block_calls(model, points, centroids) == 4 * 3
    assert hooks_example.count_block_calls(model, points, centroids, output_hidden_states=True) == 4 * 3
    assert model.engine() == "compact"  # the hooks removed


@pytest.mark.parametrize("share_layers", [True, False])
def test_hooks_record_what_the_reference_predicts(hooks_example, share_layers):
    points, centroids = hooks_example.make_problem()
    k, d = centroids.shape
    T = 3
    model = hooks_example.build_lloyd(k, d, T, share_layers=share_layers)
    output, records = hooks_example.record_blocks(model, points, centroids)
    expected, run = hooks_example.expected_block_outputs(model.config, points, centroids, T)
    hooks_example.check_recorded_blocks(records, expected)
    code = model.config.token_slices["code"]
    for t, (block_output, _) in enumerate(records["assign"]):  # the residual adds exactly the one-hot labels
        np.testing.assert_array_equal(block_output[:, code].numpy(), np.eye(k)[run.label_history[t]])
    np.testing.assert_array_equal(output.labels[0].numpy(), run.labels)


@pytest.mark.parametrize(
    "share_layers, point, cluster, iteration", [(True, 3, 1, 1), (False, 3, 1, 1), (True, 8, 2, 2)]
)
def test_hooks_forced_assignment_follows_prediction(hooks_example, share_layers, point, cluster, iteration):
    points, centroids = hooks_example.make_problem()
    k, d = centroids.shape
    T = 3
    model = hooks_example.build_lloyd(k, d, T, share_layers=share_layers)
    labels, trajectory = hooks_example.force_assignment(model, points, centroids, point, cluster, iteration)
    want_labels, want_trajectory = hooks_example.predicted_forced_trajectory(
        points, centroids, T, point, cluster, iteration
    )
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(trajectory, want_trajectory, rtol=0, atol=1e-12)
    plain = reference.lloyd(points, centroids, T)
    assert plain.label_history[iteration - 1][point] != cluster
    assert not np.allclose(trajectory[iteration - 1], plain.centroid_history[iteration])


@pytest.mark.parametrize("name", ["torch_hooks", "nnsight_intervention", "captum_attribution"])
def test_example_scripts_run(name, capsys):
    pytest.importorskip({"nnsight_intervention": "nnsight", "captum_attribution": "captum"}.get(name, "torch"))
    load_example(name).main()
    assert capsys.readouterr().out
