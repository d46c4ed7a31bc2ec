import numpy as np
import pytest
import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.validation import gaussian_mixture as mixture  # noqa: F401  (shared test data)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_model(k, d, T, dtype=torch.float64, **config_kwargs):
    config = KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=T, **config_kwargs)
    return KMeansTransformerModel(config).to(dtype).eval()


def trajectory(model, output, num_points):
    """Per-layer labels `(T, n)` and centroids `(T, k, d)` read off the hidden states."""
    slices = model.config.token_slices
    states = output.hidden_states[1:]
    labels = np.stack([h[0, :num_points, slices["code"]].argmax(-1).numpy() for h in states])
    centroids = np.stack([h[0, num_points:, slices["position"]].double().numpy() for h in states])
    return labels, centroids
