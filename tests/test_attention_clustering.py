"""The k-head attention clustering layer and identity attention: NumPy references, training, loading back."""

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModel

from kmeans_transformer import (
    AttentionClusteringConfig,
    AttentionClusteringModel,
    IdentityAttentionConfig,
    IdentityAttentionModel,
)
from kmeans_transformer.attention_clustering import head_alignment, quantisation
from kmeans_transformer.tasks import MixturePopulation, task_stream
from kmeans_transformer.training import TrainingArguments, train

from remote_loading import remote_outputs


def weighted_mean_shift_step(points, inverse_temperature, point_weights):
    """One Gaussian mean-shift step at bandwidth 1/sqrt(λ), point j weighted by point_weights[j], as a loop."""
    moved = np.empty_like(points)
    for i, x in enumerate(points):
        kernel = np.array([w * np.exp(-inverse_temperature * np.sum((x - y) ** 2) / 2) for y, w in zip(points, point_weights)])
        moved[i] = (kernel[:, None] * points).sum(axis=0) / kernel.sum()
    return moved


@pytest.mark.parametrize("num_layers", [1, 3])
def test_identity_attention_is_a_weighted_mean_shift_step(rng, num_layers):
    points = rng.normal(size=(25, 3))
    lam = 0.7
    model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=3, inverse_temperature=lam, num_layers=num_layers)).double()
    states = model(torch.tensor(points)).hidden_states
    expected = points
    for layer in range(num_layers):
        expected = weighted_mean_shift_step(expected, lam, np.exp(lam * (expected**2).sum(axis=1) / 2))
        np.testing.assert_allclose(states[layer + 1][0].numpy(), expected, rtol=0, atol=1e-12)


def test_identity_attention_on_a_sphere_is_plain_mean_shift(rng):
    points = rng.normal(size=(30, 2))
    points *= 2.5 / np.linalg.norm(points, axis=1, keepdims=True)  # equal norms: equal point weights
    model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, inverse_temperature=1.3)).double()
    output = model(torch.tensor(points)).last_hidden_state[0].numpy()
    np.testing.assert_allclose(output, weighted_mean_shift_step(points, 1.3, np.ones(30)), rtol=0, atol=1e-12)


def test_identity_attention_ignores_padded_points(rng):
    points = rng.normal(size=(12, 2))
    padded = np.concatenate([points, rng.normal(size=(4, 2)) * 100])
    model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, num_layers=2)).double()
    mask = np.r_[np.ones(12), np.zeros(4)]
    masked = model(torch.tensor(padded), attention_mask=torch.tensor(mask)).last_hidden_state[0, :12]
    np.testing.assert_allclose(masked.numpy(), model(torch.tensor(points)).last_hidden_state[0].numpy(), atol=1e-12)


def test_identity_attention_quantises_a_well_separated_context():
    population = MixturePopulation(2, 2, separation=8.0, num_points=150, seed=1)
    sample = population.task(0, 0)
    model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, inverse_temperature=0.3, num_layers=4)).double()
    states = model(torch.tensor(sample["points"])).hidden_states
    before = quantisation(states[0][0], population.centres, tolerance=0.25)
    after = quantisation(states[-1][0], population.centres, tolerance=0.25)
    assert after["error"] < 0.7 * before["error"]
    assert before["clusters"] > 50 and after["clusters"] == 2
    # each output lies nearest the centre of its own component
    nearest = ((states[-1][0].numpy()[:, None] - population.centres[None]) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(nearest, sample["labels"])


def test_attention_clustering_layer_against_numpy(rng):
    model = AttentionClusteringModel(AttentionClusteringConfig(num_heads=3, point_dim=4, inverse_temperature=0.6)).double()
    points = rng.normal(size=(2, 10, 4))
    output = model(torch.tensor(points))
    heads = model.heads.detach().numpy()
    scores = -0.6 * ((points[..., None, :] - heads) ** 2).sum(-1) / 2
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    reconstruction = weights @ heads
    np.testing.assert_allclose(output.head_weights.numpy(), weights, atol=1e-13)
    np.testing.assert_allclose(output.reconstruction.numpy(), reconstruction, atol=1e-13)
    np.testing.assert_allclose(float(output.loss), ((points - reconstruction) ** 2).sum(-1).mean(), rtol=1e-13)
    np.testing.assert_array_equal(output.labels.numpy(), weights.argmax(-1))


def test_head_alignment_closed_form(rng):
    centres = rng.normal(size=(3, 5))
    heads = 2 * centres[[2, 0, 1]]
    alignment = head_alignment(torch.tensor(heads), centres)
    assert alignment["min_cos"] == pytest.approx(1.0) and alignment["scaled_distance"] == pytest.approx(0.0, abs=1e-12)
    assert alignment["distance"] == pytest.approx(1.0)
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0]])
    # a head at -μ is no match: the signed matching pairs each head with its own centre
    assert head_alignment(torch.tensor(antipodal[::-1] * 0.5), antipodal[::-1])["distance"] == pytest.approx(0.5)
    tilted = np.array([[np.cos(0.3), np.sin(0.3)], [-1.0, 0.0]])
    assert head_alignment(torch.tensor(tilted), antipodal)["min_cos"] == pytest.approx(np.cos(0.3))


def _train_heads(separation, steps, tmp_path, dim=4):
    population = MixturePopulation(2, dim, separation, num_points=64, seed=0)
    torch.manual_seed(0)
    model = AttentionClusteringModel(AttentionClusteringConfig(num_heads=2, point_dim=dim, initializer_range=0.1))
    initial = head_alignment(model.heads, population.centres)

    def loss_function(model, batch):
        return model(batch["points"].float().reshape(-1, dim)).loss, head_alignment(model.heads, population.centres)

    arguments = TrainingArguments(
        output_dir=str(tmp_path / f"run-{separation}"), max_steps=steps, batch_size=4, log_steps=10, progress=False
    )
    with torch.enable_grad():
        result = train(model, loss_function, lambda start: task_stream(population, seed=1, start=start), arguments)
    return initial, result.history


def test_training_aligns_the_heads_with_the_centroids_and_less_so_at_low_separation(tmp_path):
    initial, history = _train_heads(4.0, 150, tmp_path)
    assert history[-1]["loss"] < history[0]["loss"]
    assert initial["min_cos"] < 0.5 and history[-1]["min_cos"] > 0.97
    _, close = _train_heads(0.5, 150, tmp_path)
    assert close[-1]["min_cos"] < history[-1]["min_cos"] - 0.1


@pytest.mark.parametrize(
    "model",
    [
        AttentionClusteringModel(AttentionClusteringConfig(num_heads=3, point_dim=2, inverse_temperature=0.5)),
        IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, inverse_temperature=2.0, num_layers=2)),
    ],
    ids=["attention_clustering", "identity_attention"],
)
def test_round_trip_save_pretrained_automodel_and_remote_code(model, tmp_path, rng):
    model = model.double()
    points = rng.normal(size=(1, 9, 2))
    call = "out.reconstruction" if isinstance(model, AttentionClusteringModel) else "out.last_hidden_state"
    expected = eval(call, {"out": model(torch.tensor(points))}).numpy()
    model.save_pretrained(tmp_path / "checkpoint")
    loaded = AutoModel.from_pretrained(tmp_path / "checkpoint")
    fields = lambda config: {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}  # noqa: E731
    assert type(loaded) is type(model) and fields(loaded.config) == fields(model.config)
    np.testing.assert_array_equal(eval(call, {"out": loaded(torch.tensor(points))}).numpy(), expected)
    np.testing.assert_array_equal(remote_outputs(tmp_path / "checkpoint", {"points": points}, call, tmp_path), expected)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: AttentionClusteringConfig(num_heads=0), "num_heads"),
        (lambda: AttentionClusteringConfig(inverse_temperature=-1.0), "inverse_temperature"),
        (lambda: IdentityAttentionConfig(num_layers=0), "num_layers"),
        (lambda: IdentityAttentionModel(IdentityAttentionConfig(point_dim=2))(torch.zeros(4, 3)), r"shape \(batch, n, 2\)"),
        (lambda: AttentionClusteringModel(AttentionClusteringConfig())(torch.tensor([[np.nan, 0.0]])), "finite"),
        (lambda: MixturePopulation(2, 2, separation=-1.0), "separation"),
    ],
)
def test_bad_input_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sdpa_gives_the_eager_outputs(rng):
    points = torch.tensor(rng.normal(size=(2, 10, 3)))
    for build, read in (
        (lambda **kw: IdentityAttentionModel._from_config(IdentityAttentionConfig(point_dim=3, num_layers=2), **kw), "last_hidden_state"),
        (lambda **kw: AttentionClusteringModel._from_config(AttentionClusteringConfig(num_heads=3, point_dim=3), **kw), "reconstruction"),
    ):
        torch.manual_seed(0)
        eager = build().double()
        torch.manual_seed(0)
        sdpa = build(attn_implementation="sdpa").double()
        assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
        torch.testing.assert_close(getattr(sdpa(points), read), getattr(eager(points), read), rtol=0, atol=1e-12)
