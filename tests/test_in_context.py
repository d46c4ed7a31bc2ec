"""The in-context clustering transformer: exact EM when built from the gmm construction, training, losses, loading
back; the mixture instances it is trained on."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from transformers import AutoModel

from kmeans_transformer import InContextClusteringConfig, InContextClusteringModel
from kmeans_transformer.in_context import matched_cross_entropy, misclustering_rate
from kmeans_transformer.reference import gaussian_mixture_em
from kmeans_transformer.tasks import MixtureInstances, MixturePopulation, task_stream
from kmeans_transformer.training import TrainingArguments, train

from remote_loading import remote_outputs


def em_reference(points, initial, iterations, reg_covar):
    k, d = initial.shape
    variance = ((points - points.mean(0)) ** 2).sum(1).mean() / d
    return gaussian_mixture_em(points, initial, [variance] * k, [1 / k] * k, iterations, reg_covar=reg_covar)


@pytest.mark.parametrize("k, d, iterations", [(2, 2, 1), (3, 4, 6)])
def test_untrained_gmm_initialised_model_is_em(k, d, iterations):
    task = MixtureInstances(80, k, d, separation_low=2.0, separation_high=2.0).task(seed=4, index=2)
    config = InContextClusteringConfig(num_clusters=k, point_dim=d, num_em_iterations=iterations, em_reg_covar=1e-6)
    model = InContextClusteringModel(config).double().eval()
    output = model(torch.tensor(task["points"]), centroids=torch.tensor(task["initial_centroids"]))
    reference = em_reference(task["points"], task["initial_centroids"], iterations, reg_covar=1e-6)
    np.testing.assert_allclose(output.posteriors[0].numpy(), reference.responsibilities, rtol=0, atol=1e-10)
    np.testing.assert_allclose(output.centroids[0].numpy(), reference.centroids, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(output.labels[0].numpy(), reference.labels)


def test_random_initialisation_is_not_em():
    task = MixtureInstances(50, 2, 2).task(0, 0)
    config = InContextClusteringConfig(num_clusters=2, num_em_iterations=3, initialization="random")
    output = InContextClusteringModel(config).double()(torch.tensor(task["points"]), centroids=torch.tensor(task["initial_centroids"]))
    assert not torch.allclose(output.posteriors, output.em_responsibilities, atol=1e-6)


def test_matched_cross_entropy_against_a_loop(rng):
    logits = torch.tensor(rng.normal(size=(2, 7, 3)))
    labels = torch.tensor(rng.integers(0, 3, size=(2, 7)))
    log_p = torch.log_softmax(logits, -1).numpy()
    expected = np.mean([
        min(-np.mean([log_p[b, i, perm[labels[b, i]]] for i in range(7)]) for perm in itertools.permutations(range(3)))
        for b in range(2)
    ])
    assert float(matched_cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-12)
    relabelled = torch.tensor([2, 0, 1])[labels]
    assert float(matched_cross_entropy(logits, relabelled)) == pytest.approx(expected, rel=1e-12)


def test_misclustering_rate_against_the_hungarian_method(rng):
    predicted, truth = rng.integers(0, 4, size=(5, 40)), rng.integers(0, 4, size=(5, 40))
    rates = misclustering_rate(torch.tensor(predicted), torch.tensor(truth), 4).numpy()
    for p, t, rate in zip(predicted, truth, rates):
        agreement = np.zeros((4, 4))
        np.add.at(agreement, (t, p), 1)
        rows, columns = linear_sum_assignment(-agreement)
        assert rate == pytest.approx(1 - agreement[rows, columns].sum() / 40)


@pytest.mark.parametrize("initialization", ["random", "gmm"])
def test_training_lowers_the_loss_and_the_error(initialization, tmp_path):
    distribution = MixtureInstances(40, 2, 2, separation_low=2.0, separation_high=5.0)
    config = InContextClusteringConfig(
        num_clusters=2, num_em_iterations=0 if initialization == "random" else 2, initialization=initialization,
        num_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
    )
    torch.manual_seed(0)
    model = InContextClusteringModel(config)
    held_out = distribution.batch(seed=9, start=0, size=64)

    def error(model):
        output = model(torch.tensor(held_out["points"]).float(), centroids=torch.tensor(held_out["initial_centroids"]).float())
        return float(misclustering_rate(output.labels, torch.tensor(held_out["labels"]), 2).mean())

    def loss_function(model, batch):
        return model(batch["points"].float(), centroids=batch["initial_centroids"].float(), labels=batch["labels"]).loss, {}

    before = error(model)
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=60, batch_size=8, learning_rate=3e-3, log_steps=20, progress=False
    )
    with torch.enable_grad():
        result = train(model, loss_function, lambda start: task_stream(distribution, seed=1, start=start), arguments)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    if initialization == "random":
        assert error(result.model) < 0.8 * before
    else:  # starting from EM, training does not make it worse
        assert error(result.model) <= before + 0.02


def test_round_trip_save_pretrained_automodel_and_remote_code(tmp_path):
    task = MixtureInstances(30, 3, 2).task(0, 1)
    config = InContextClusteringConfig(num_clusters=3, num_em_iterations=2, initialization="random", hidden_size=16, num_attention_heads=2)
    model = InContextClusteringModel(config).double()
    inputs = {"points": task["points"][None], "centroids": task["initial_centroids"][None]}
    expected = model(**{key: torch.tensor(value) for key, value in inputs.items()}).posteriors.numpy()
    model.save_pretrained(tmp_path / "checkpoint")
    loaded = AutoModel.from_pretrained(tmp_path / "checkpoint")
    assert type(loaded) is InContextClusteringModel and loaded.config.num_em_iterations == 2
    np.testing.assert_array_equal(loaded(**{key: torch.tensor(value) for key, value in inputs.items()}).posteriors.numpy(), expected)
    np.testing.assert_array_equal(remote_outputs(tmp_path / "checkpoint", inputs, "out.posteriors", tmp_path), expected)


def test_instances_have_the_asked_separation_and_are_reproducible():
    distribution = MixtureInstances(60, 4, 3, separation_low=2.0, separation_high=5.0, scale=0.5, weights=(1, 1, 2, 4))
    task = distribution.task(seed=3, index=11)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(task["centres"], 2)]
    assert min(gaps) == pytest.approx(task["separation"] * 0.5) and 2.0 <= task["separation"] <= 5.0
    np.testing.assert_allclose(task["weights"], [0.125, 0.125, 0.25, 0.5])
    streamed = list(itertools.islice(task_stream(distribution, seed=3, start=11), 1))[0]
    np.testing.assert_array_equal(np.asarray(streamed["points"]), task["points"])
    # the initial centroids are data points (k-means++ seeding)
    assert all(any(np.array_equal(c, p) for p in task["points"]) for c in task["initial_centroids"])
    population = MixturePopulation(2, 3, separation=4.0, scale=2.0, seed=5)
    assert np.linalg.norm(population.centres[0] - population.centres[1]) == pytest.approx(8.0)
    np.testing.assert_array_equal(population.centres, MixturePopulation(2, 3, 4.0, scale=2.0, seed=5).centres)


def test_heavy_tailed_noise_has_unit_variance():
    points = MixtureInstances(200_000, 1, 1, noise="student_t", degrees_of_freedom=5.0, separation_high=1.0).task(0, 0)["points"]
    assert points.var() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: InContextClusteringConfig(num_em_iterations=0, initialization="gmm"), "num_em_iterations >= 1"),
        (lambda: InContextClusteringConfig(initialization="zeros"), "initialization"),
        (lambda: InContextClusteringConfig(hidden_size=10, num_attention_heads=4), "multiple"),
        (lambda: InContextClusteringModel(InContextClusteringConfig(num_clusters=3))(torch.zeros(2, 2)), "at least num_clusters"),
        (lambda: MixtureInstances(10, 2, 2, noise="student_t", degrees_of_freedom=2.0), "degrees_of_freedom"),
        (lambda: MixtureInstances(10, 2, 2, separation_low=3.0, separation_high=1.0), "separation"),
        (lambda: MixtureInstances(10, 2, 2, weights=(1.0, -1.0)), "weights"),
    ],
)
def test_bad_input_is_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sdpa_gives_the_eager_posteriors():
    task = MixtureInstances(30, 2, 2).task(0, 3)
    config = lambda: InContextClusteringConfig(num_em_iterations=2, initialization="random", hidden_size=16, num_attention_heads=2)  # noqa: E731
    eager = InContextClusteringModel._from_config(config()).double()
    sdpa = InContextClusteringModel._from_config(config(), attn_implementation="sdpa").double()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    inputs = dict(points=torch.tensor(task["points"]), centroids=torch.tensor(task["initial_centroids"]))
    torch.testing.assert_close(sdpa(**inputs).posteriors, eager(**inputs).posteriors, rtol=0, atol=1e-12)
