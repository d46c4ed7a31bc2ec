"""The learned k-means layer (`variant="learned"`): its start from the analytic weights, training, checkpoints, evaluation."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.cli import main
from kmeans_transformer.learned import (
    build_learned_model,
    evaluate_learned,
    farthest_first,
    learned_trajectory,
    train_learned,
    write_evaluation,
)
from kmeans_transformer.reference import lloyd, soft_kmeans
from kmeans_transformer.tasks import TaskDistribution
from kmeans_transformer.variants import VARIANTS


TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = {"num_clusters": 3, "point_dim": 2, "num_points": 24}


def numpy_soft_objective(points, centroids, lam):
    """Σ_i Σ_j softmax_j(-λ D_ij) D_ij by plain NumPy loops over the points."""
    total = 0.0
    for x in points:
        distances = ((centroids - x) ** 2).sum(axis=1)
        weights = np.exp(-lam * (distances - distances.min()))
        total += (weights / weights.sum() * distances).sum()
    return total


# ---------------------------------------------------------------------------------------------------------------------
# The untrained layer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 4.0, 60.0])
def test_untrained_lloyd_init_is_soft_kmeans_at_every_layer(gamma):
    task = TaskDistribution(80, 4, 3).task(seed=7, index=0)
    model = build_learned_model(4, 3, inverse_temperature=gamma, init_from="lloyd", num_layers=5, dtype="float64")
    output = model(torch.tensor(task["points"]), torch.tensor(task["initial_centroids"]), output_hidden_states=True,
                   output_attentions=True)
    expected = soft_kmeans(task["points"], task["initial_centroids"], 5, gamma)
    position = model.config.token_slices["position"]
    found = np.stack([state[0, 80:, position].detach().numpy() for state in output.hidden_states])
    np.testing.assert_allclose(found, expected.centroid_history, rtol=0, atol=1e-10)
    # the assign block's distance softmax is soft k-means' responsibilities of the centroids entering each layer
    for t, weights in enumerate(output.assign_attentions):
        distances = ((task["points"][:, None] - expected.centroid_history[t][None]) ** 2).sum(-1)
        responsibilities = np.exp(-gamma * (distances - distances.min(1, keepdims=True)))
        responsibilities /= responsibilities.sum(1, keepdims=True)
        np.testing.assert_allclose(weights[0, 0].detach().numpy(), responsibilities, rtol=0, atol=1e-10)
    # the head assigns the points to the returned centroids by the nearest one, and the inertia is Lloyd's objective
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    assert float(output.inertia) == pytest.approx(expected.inertia, rel=1e-12)


def test_padding_is_ignored():
    task = TaskDistribution(40, 3, 2).task(seed=1, index=3)
    model = build_learned_model(3, 2, inverse_temperature=20.0, num_layers=3, dtype="float64")
    points = torch.tensor(task["points"])
    padded = torch.cat([points, torch.full((5, 2), 9.0, dtype=torch.float64)])[None]
    mask = torch.cat([torch.ones(40), torch.zeros(5)])[None]
    alone = model(points[None]).centroids
    together = model(padded, attention_mask=mask).centroids
    np.testing.assert_allclose(together.detach().numpy(), alone.detach().numpy(), rtol=0, atol=1e-12)


def test_a_learned_model_is_never_taken_for_the_construction():
    model = build_learned_model(3, 2, dtype="float64")
    assert VARIANTS["learned"].trainable and not VARIANTS["lloyd"].trainable
    assert not model.has_analytic_weights()
    with torch.no_grad():
        assert model.engine() == "tokens"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all(name.startswith("layers.0.") for name in trainable)
    # every projection of the four blocks has a bias, and the attention runs the registered distance kernel
    layer = model.layers[0]
    for block in (layer.point_erase, layer.assign, layer.centroid_erase, layer.update):
        assert all(getattr(block, name).bias is not None for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert layer.assign.attention_function == "kmeans_distance_softmax"
    assert VARIANTS["learned"].parameter_count(model.config) == sum(p.numel() for p in model.parameters())


def test_random_init_is_seeded_and_differs_from_the_construction():
    first = build_learned_model(3, 2, init_from="random", seed=5)
    again = build_learned_model(3, 2, init_from="random", seed=5)
    analytic = build_learned_model(3, 2, init_from="lloyd")
    weight = "layers.0.assign.q_proj.weight"
    torch.testing.assert_close(first.state_dict()[weight], again.state_dict()[weight], rtol=0, atol=0)
    assert not torch.equal(first.state_dict()[weight], analytic.state_dict()[weight])
    bound = 1 / np.sqrt(first.config.hidden_size)  # nn.Linear's draw: |w| <= 1/sqrt(fan_in)
    assert float(first.state_dict()[weight].abs().max()) <= bound
    torch.testing.assert_close(first.embeddings.cluster_embeddings, analytic.embeddings.cluster_embeddings)


def test_bad_inputs_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"`init_from` must be one of \['lloyd', 'random'\], got 'kmeans'"):
        KMeansTransformerConfig(num_clusters=3, point_dim=2, variant="learned", init_from="kmeans")
    with pytest.raises(ValueError, match="`init_from` is not a parameter of variant 'lloyd'"):
        KMeansTransformerConfig(num_clusters=3, point_dim=2, init_from="random")
    model = build_learned_model(3, 2)
    with pytest.raises(ValueError, match="dimension 5, but this model was built for point_dim=2"):
        model(torch.rand(10, 5))
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_learned_model(3, 2, dtype="float16")
    with pytest.raises(ValueError, match="loss_inverse_temperature must be a finite number > 0"):
        train_learned(tmp_path / "run", loss_inverse_temperature=0.0, max_steps=1, **TINY)
    with pytest.raises(ValueError, match="evaluate_learned takes variant='learned' models"):
        evaluate_learned([KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2))])
    with pytest.raises(ValueError, match="unknown start 'best'"):
        evaluate_learned([model], starts=["best"])
    with pytest.raises(ValueError, match="trainable layer"):
        KMeans(3, variant="learned").fit(np.random.default_rng(0).random((20, 2)))
    assert main(["train", "--output", str(tmp_path / "cli"), "--point-dim", "0", "--steps", "1"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def held_out_loss(model, lam=10.0):
    batch = TaskDistribution(TINY["num_points"], TINY["num_clusters"], TINY["point_dim"]).batch(99, 0, 16)
    with torch.no_grad():
        centroids = model(torch.tensor(batch["points"]).to(model.dtype), torch.tensor(batch["initial_centroids"]).to(model.dtype),
                          num_iterations=1).centroids.double().numpy()
    return np.mean([numpy_soft_objective(p, c, lam) for p, c in zip(batch["points"], centroids)])


def test_a_tiny_run_lowers_the_loss_and_writes_checkpoints(tmp_path):
    result = train_learned(
        tmp_path / "run", **TINY, init_from="lloyd", max_steps=60, batch_size=8, learning_rate=0.02, log_steps=10,
        save_steps=30, card_tasks=8, card_steps=5, progress=False,
    )
    before = held_out_loss(build_learned_model(3, 2, init_from="lloyd"))  # soft k-means at γ = 1: too soft here
    after = held_out_loss(result.model)
    assert after < 0.8 * before
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [10, 20, 30, 40, 50, 60]
    for directory in (tmp_path / "run", tmp_path / "run" / "checkpoint-30"):
        assert {"model.safetensors", "config.json", "README.md", "task_distribution.json", "training_state.pt"} <= {
            path.name for path in directory.iterdir()
        }
    card = ModelCard.load(tmp_path / "run" / "README.md")
    names = [result.metric_type for result in card.data.eval_results]
    assert names == ["mean_log_objective", "mean_log_objective_lloyd", "fraction_below_lloyd"]
    # the card's Lloyd figure is the reference's: mean log inertia of 5 Lloyd iterations on the unseen tasks
    tasks = TaskDistribution(24, 3, 2).batch(1_000_003, 0, 8)
    expected = np.mean([np.log(lloyd(p, p[:3], 5).inertia) for p in tasks["points"]])
    assert card.data.eval_results[1].metric_value == pytest.approx(expected, rel=1e-9)


def test_resuming_gives_the_uninterrupted_run(tmp_path):
    common = dict(**TINY, init_from="random", batch_size=4, log_steps=2, save_steps=4, card_tasks=0, progress=False,
                  dtype="float64")
    whole = train_learned(tmp_path / "whole", max_steps=8, **common)
    train_learned(tmp_path / "first", max_steps=4, **common)
    resumed = train_learned(tmp_path / "second", max_steps=8, resume_from_checkpoint=str(tmp_path / "first"), **common)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-12)


def test_checkpoints_reload_with_automodel_and_trust_remote_code(tmp_path):
    result = train_learned(tmp_path / "run", **TINY, max_steps=6, batch_size=4, save_steps=6, card_tasks=0,
                           progress=False, dtype="float64")
    points = TaskDistribution(30, 3, 2).task(5, 0)["points"]
    loaded_model = AutoModel.from_pretrained(tmp_path / "run")
    assert isinstance(loaded_model, KMeansTransformerModel) and loaded_model.config.init_from == "lloyd"
    with torch.no_grad():
        trained = result.model(torch.tensor(points), num_iterations=7)
        loaded = loaded_model(torch.tensor(points), num_iterations=7)
    torch.testing.assert_close(loaded.centroids, trained.centroids, rtol=0, atol=0)
    torch.testing.assert_close(loaded.labels, trained.labels, rtol=0, atol=0)
    np.save(tmp_path / "points.npy", points)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "run")!r}, trust_remote_code=True)
        assert "kmeans_transformer" not in sys.modules, "the package must not be imported"
        with torch.no_grad():
            out = model(torch.tensor(np.load({str(tmp_path / "points.npy")!r})), num_iterations=7)
        np.save({str(tmp_path / "remote.npy")!r}, out.centroids.numpy())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), trained.centroids.numpy())


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(tmp_path):
    arguments = ["train", "--num-clusters", "3", "--point-dim", "2", "--num-points", "24", "--init-from", "random",
                 "--steps", "6", "--batch-size", "8", "--log-steps", "2", "--save-steps", "6", "--card-tasks", "0",
                 "--dtype", "float64", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for processes in (1, 2):
        command = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), "-m", "kmeans_transformer.cli",
                   *arguments, "--output", str(tmp_path / f"p{processes}")]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = load_file(tmp_path / "p1" / "model.safetensors"), load_file(tmp_path / "p2" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:  # the same trajectory up to the order of floating-point additions in the gradient average
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-10)
    initial = build_learned_model(3, 2, init_from="random", dtype="float64")
    assert not torch.equal(one["layers.0.assign.q_proj.weight"], initial.state_dict()["layers.0.assign.q_proj.weight"])


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def test_farthest_first_follows_a_plain_loop():
    points = np.random.default_rng(3).random((2, 30, 3))
    found = farthest_first(torch.tensor(points), 4).numpy()
    for task, centres in zip(points, found):
        chosen = [task[0]]
        for _ in range(3):
            distances = [min(((x - c) ** 2).sum() for c in chosen) for x in task]
            chosen.append(task[int(np.argmax(distances))])
        np.testing.assert_array_equal(centres, np.array(chosen))


def test_evaluation_against_the_lloyd_reference(tmp_path):
    model = build_learned_model(3, 2, inverse_temperature=50.0, dtype="float64")
    evaluation = evaluate_learned([model, model], num_points=[24], families=["normal", "laplace"],
                                  starts=["random", "farthest"], num_tasks=6, num_steps=4, batch_size=4, progress=False)
    first = evaluation.results[0][0]
    assert (first.num_points, first.family, first.start) == (24, "normal", "random")
    tasks = TaskDistribution(24, 3, 2, family="normal").batch(1_000_003, 0, 6)["points"]
    histories = [lloyd(p, p[:3], 4).centroid_history for p in tasks]
    for step in range(5):
        objective = [((p[:, None] - h[step][None]) ** 2).sum(-1).min(1).sum() for p, h in zip(tasks, histories)]
        assert first.lloyd[step] == pytest.approx(np.mean(np.log(objective)), rel=1e-10)
    assert first.learned[0] == pytest.approx(first.lloyd[0], rel=1e-12)  # the same starts
    # the learned (soft k-means at γ) side, from the reference too
    soft = [soft_kmeans(p, p[:3], 4, 50.0).centroid_history[-1] for p in tasks]
    objective = [((p[:, None] - c[None]) ** 2).sum(-1).min(1).sum() for p, c in zip(tasks, soft)]
    assert first.learned[-1] == pytest.approx(np.mean(np.log(objective)), rel=1e-9)
    below = np.mean([a < b for a, b in zip(np.log(objective), [np.log(lloyd(p, p[:3], 4).inertia) for p in tasks])])
    assert first.fraction_below == pytest.approx(below)

    write_evaluation(evaluation, tmp_path / "evaluation")
    table = (tmp_path / "evaluation" / "table.md").read_text()
    assert table.count("\n| 24 |") == 4 and "median [min, max] over 2 trained models" in table
    assert {p.name for p in (tmp_path / "evaluation").iterdir()} == {
        "table.md", "evaluation.json", "objective_random.png", "objective_farthest.png"
    }
    with pytest.raises(FileExistsError):
        write_evaluation(evaluation, tmp_path / "evaluation")


def test_both_loops_of_the_untrained_layer_are_soft_kmeans():
    model = build_learned_model(3, 2, inverse_temperature=8.0, dtype="float64")
    task = TaskDistribution(30, 3, 2).task(4, 0)
    points, initial = torch.tensor(task["points"])[None], torch.tensor(task["initial_centroids"])[None]
    expected = soft_kmeans(task["points"], task["initial_centroids"], 6, 8.0).centroid_history
    for loop in ("reembed", "tokens"):
        found = learned_trajectory(model, points, initial, 6, loop=loop)[:, 0].numpy()
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="unknown loop 'layers'"):
        evaluate_learned([model], loop="layers")


def test_evaluate_command(tmp_path):
    model = build_learned_model(3, 2, inverse_temperature=50.0)
    model.save_pretrained(tmp_path / "checkpoint")
    output = tmp_path / "out"
    arguments = ["evaluate", str(tmp_path / "checkpoint"), "--output", str(output), "--num-points", "24",
                 "--families", "gumbel", "--starts", "kmeans++", "--num-tasks", "4", "--steps", "3", "--no-progress"]
    assert main(arguments) == 0
    assert "| 24 | gumbel | k-means++ |" in (output / "table.md").read_text()
    assert main(arguments) == 2  # the output exists
    assert main([*arguments[:3], str(tmp_path / "checkpoint" / "out"), *arguments[4:]]) == 2  # inside the input
