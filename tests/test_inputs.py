"""Bad input gets a clear error naming the problem."""

import numpy as np
import pytest
import torch

from kmeans_transformer import KMeansTransformerConfig

from conftest import make_model


POINTS = torch.randn(2, 10, 3, dtype=torch.float64)


def _with(value, index=(0, 0, 0)):
    points = POINTS.clone()
    points[index] = value
    return points


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(points=_with(float("nan"))), ValueError, "NaN or infinite"),
        (dict(points=_with(float("inf"))), ValueError, "NaN or infinite"),
        (dict(points=POINTS[:, :3]), ValueError, "num_clusters=4 is larger than the number of points"),
        (dict(points=torch.randn(10, 5, dtype=torch.float64)), ValueError, "dimension 5, but this model was built for point_dim=3"),
        (dict(points=torch.randn(2, 2, 10, 3)), ValueError, "must have shape"),
        (dict(points=torch.empty(0, 3)), ValueError, "num_clusters=4 is larger|empty"),
        (dict(points=torch.empty(2, 0, 3)), ValueError, "empty"),
        (dict(points=torch.ones(10, 3, dtype=torch.int64)), TypeError, "real floating-point"),
        (dict(points=torch.ones(10, 3, dtype=torch.complex64)), TypeError, "real floating-point"),
        (dict(points="not points"), TypeError, "tensor or an array"),
        (dict(points=POINTS, centroids=torch.randn(2, 5, 3)), ValueError, "`centroids` must have shape"),
        (dict(points=POINTS, centroids=torch.randn(2, 4, 2)), ValueError, "`centroids` must have shape"),
        (dict(points=POINTS, centroids=torch.full((4, 3), float("nan"))), ValueError, "`centroids` contain NaN"),
        (dict(points=POINTS, centroids=torch.ones(4, 3, dtype=torch.int32)), TypeError, "`centroids` must hold real"),
        (dict(points=POINTS, attention_mask=torch.ones(2, 9)), ValueError, "`attention_mask` must have shape"),
        (dict(points=POINTS, attention_mask=torch.full((2, 10), 2)), ValueError, "only 0 and 1"),
        (dict(points=POINTS, attention_mask=torch.tensor([[1] * 10, [1] * 3 + [0] * 7])), ValueError, "problem 1"),
        (dict(points=POINTS, num_iterations=-1), ValueError, "`num_iterations` must be an integer >= 0"),
    ],
)
def test_forward_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_model(4, 3, 2)(**kwargs)


def test_nan_in_padding_is_ignored():
    points = _with(float("nan"), (1, 9, 0))
    mask = torch.ones(2, 10)
    mask[1, 9] = 0
    output = make_model(4, 3, 2)(points, attention_mask=mask)
    assert torch.isfinite(output.centroids).all() and output.labels[1, 9] == -1


def test_separate_layers_refuse_another_iteration_count():
    with pytest.raises(ValueError, match="separate layers"):
        make_model(4, 3, 2, share_layers=False)(POINTS, num_iterations=3)


def test_numpy_input_is_accepted():
    points = np.random.default_rng(0).normal(size=(10, 3))
    output = make_model(4, 3, 2)(points)
    assert output.labels.shape == (1, 10) and output.labels.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variant="kmeans++"), "Unknown `variant` 'kmeans\\+\\+'"),
        (dict(num_clusters=0), "`num_clusters` must be an integer >= 1"),
        (dict(num_clusters=2.5), "`num_clusters` must be an integer"),
        (dict(point_dim=-1), "`point_dim` must be an integer >= 1"),
        (dict(num_iterations=-2), "`num_iterations` must be an integer >= 0"),
        (dict(share_layers="yes"), "`share_layers` must be a bool"),
        (dict(inverse_temperature=0.0), "`inverse_temperature` must be a finite number > 0"),
        (dict(inverse_temperature=float("inf")), "`inverse_temperature` must be a finite number > 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KMeansTransformerConfig(**kwargs)


def test_output_shapes_and_tuple_return():
    model = make_model(4, 3, 2)
    output = model(POINTS, output_hidden_states=True)
    assert output.labels.shape == (2, 10)
    assert output.centroids.shape == (2, 4, 3)
    assert output.inertia.shape == (2,)
    assert output.assignments.shape == (2, 10, 4)
    assert len(output.hidden_states) == 3 and output.hidden_states[0].shape == (2, 14, model.config.hidden_size)
    as_tuple = model(POINTS, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.labels)


def test_hidden_states_are_the_embedded_tokens_then_each_layer_split_into_streams():
    model = make_model(4, 3, 0)
    output = model(POINTS, output_hidden_states=True)
    assert len(output.hidden_states) == 1  # no layer: the embedded tokens only
    slices = model.config.token_slices
    points, centroids = output.point_hidden_states[0], output.centroid_hidden_states[0]
    assert points.shape == (2, 10, model.config.hidden_size) and centroids.shape == (2, 4, model.config.hidden_size)
    # point tokens [x_i ; 0 ; 0 ; 0], centroid tokens [c_j ; e_j ; 0 ; 1] with the default centroids: the first k points
    assert torch.equal(points[..., slices["position"]], POINTS.to(points.dtype))
    assert (points[..., slices["position"].stop :] == 0).all()
    assert torch.equal(centroids[..., slices["position"]], POINTS[:, :4].to(points.dtype))
    assert torch.equal(centroids[0, :, slices["code"]], torch.eye(4, dtype=points.dtype))
    assert (centroids[..., slices["is_centroid"]] == 1).all() and (centroids[..., slices["previous"]] == 0).all()
    layered = make_model(4, 3, 2)(POINTS, output_hidden_states=True)
    assert len(layered.centroid_hidden_states) == 3
    for state, points_part, centroids_part in zip(layered.hidden_states, layered.point_hidden_states, layered.centroid_hidden_states):
        assert torch.equal(torch.cat([points_part, centroids_part], dim=1), state)
    assert make_model(4, 3, 2)(POINTS).point_hidden_states is None
