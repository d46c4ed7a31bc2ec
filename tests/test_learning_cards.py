"""The cards of the models that learn to cluster: written by save_pretrained, metadata parsed by huggingface_hub."""

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel

from hub_server import hub  # noqa: F401  (the fixture)
from kmeans_transformer import (
    AttentionClusteringConfig,
    AttentionClusteringModel,
    IdentityAttentionConfig,
    IdentityAttentionModel,
    InContextClusteringConfig,
    InContextClusteringModel,
)
from kmeans_transformer.attention_clustering import head_alignment, quantisation
from kmeans_transformer.in_context import misclustering_rate
from kmeans_transformer.tasks import MixtureInstances, MixturePopulation, task_stream
from kmeans_transformer.training import TrainingArguments, train


MODELS = {
    "attention_clustering": lambda: AttentionClusteringModel(AttentionClusteringConfig(num_heads=3, point_dim=2)),
    "identity_attention": lambda: IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, num_layers=2)),
    "in_context_clustering": lambda: InContextClusteringModel(
        InContextClusteringConfig(num_clusters=2, num_em_iterations=1, hidden_size=8, num_attention_heads=2, intermediate_size=8)
    ),
}
TITLES = {
    "attention_clustering": "arXiv:2505.13112",
    "identity_attention": "arXiv:2505.13112",
    "in_context_clustering": "arXiv:2502.06007",
}


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_save_pretrained_writes_a_card_and_the_model_still_loads(model_type, tmp_path):
    model = MODELS[model_type]().double().eval()
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert {"clustering", "kmeans-transformer", model_type.replace("_", "-")} <= set(card.data.tags)
    assert card.data.eval_results is None  # untrained: no figures claimed
    assert TITLES[model_type] in card.text and "Not evaluated." in card.text
    assert "from_pretrained(\"path/to/checkpoint\")" in card.text
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    points = torch.tensor(np.random.default_rng(0).normal(size=(1, 12, 2)))
    for name, value in model(points).items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(loaded(points)[name], value, rtol=0, atol=0)


def _metrics(card) -> dict:
    return {result.metric_type: result.metric_value for result in card.data.eval_results}


def test_trained_attention_clustering_card_carries_the_training_and_the_evaluation(tmp_path):
    population = MixturePopulation(2, 2, 4.0, num_points=32, seed=0)
    torch.manual_seed(0)
    model = AttentionClusteringModel(AttentionClusteringConfig(num_heads=2, point_dim=2))
    model.card_training = {"steps": 6, "learning_rate": 0.05}
    arguments = TrainingArguments(output_dir=tmp_path / "run", max_steps=6, batch_size=2, learning_rate=0.05,
                                  log_steps=3, save_steps=3, progress=False)
    loss = lambda model, batch: (model(batch["points"].float().reshape(-1, 2)).loss, {})  # noqa: E731
    result = train(model, loss, lambda start: task_stream(population, seed=1, start=start), arguments)
    # the training loop's checkpoints carry the card too
    assert "| steps | 6 |" in ModelCard.load(tmp_path / "run" / "checkpoint-3" / "README.md").text
    figures = head_alignment(result.model.heads, population.centres)
    result.model.card_evaluation = {"task": "Head alignment", "dataset": "the training mixture", "metrics": figures}
    result.model.save_pretrained(tmp_path / "trained")
    card = ModelCard.load(tmp_path / "trained" / "README.md")
    assert _metrics(card) == figures
    assert all(result.task_type == "clustering" for result in card.data.eval_results)
    assert "| learning_rate | 0.05 |" in card.text


def test_identity_attention_card_carries_the_quantisation(tmp_path):
    task = MixtureInstances(40, 2, 2, separation_low=6.0, separation_high=6.0).task(0, 1)
    model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=2, inverse_temperature=0.5, num_layers=3)).double()
    outputs = model(torch.tensor(task["points"])).last_hidden_state[0]
    figures = quantisation(outputs, task["centres"], tolerance=0.1)
    model.card_evaluation = {"task": "Quantisation", "dataset": "one mixture", "metrics": figures}
    model.save_pretrained(tmp_path)
    assert _metrics(ModelCard.load(tmp_path / "README.md")) == pytest.approx(figures, rel=0, abs=0)


def test_in_context_card_carries_the_misclustering_rate(tmp_path):
    batch = MixtureInstances(30, 2, 2).batch(seed=3, start=0, size=4)
    model = MODELS["in_context_clustering"]().double().eval()
    output = model(torch.tensor(batch["points"]), centroids=torch.tensor(batch["initial_centroids"]))
    rate = float(misclustering_rate(output.labels, torch.tensor(batch["labels"]), 2).mean())
    model.card_evaluation = {"task": "Misclustering", "dataset": "4 instances", "metrics": {"misclustering_rate": rate}}
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert _metrics(card) == {"misclustering_rate": rate}
    assert f"| misclustering_rate | {rate} |" in card.text


def test_push_to_hub_pushes_the_card(hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    model = MODELS["identity_attention"]()
    model.card_evaluation = {"task": "Quantisation", "dataset": "one mixture", "metrics": {"error": 0.25}}
    model.push_to_hub("alice/identity-attention")
    pushed = hub.files("alice/identity-attention")
    assert {"config.json", "model.safetensors", "attention_clustering.py"} <= set(pushed)
    card = ModelCard(pushed["README.md"].decode())
    assert "kmeans-transformer" in card.data.tags and "arXiv:2505.13112" in card.text
    assert card.data.model_name == "alice/identity-attention" and 'from_pretrained("alice/identity-attention")' in card.text
    assert _metrics(card) == {"error": 0.25}


def test_models_save_into_an_existing_directory_as_transformers_does(tmp_path, monkeypatch):
    from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel

    target = tmp_path / "checkpoint"
    first = MODELS["attention_clustering"]()
    first.save_pretrained(target)
    (target / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    (target / "train.py").write_text("# mine")
    (target / "README.md").write_text("My own notes, no metadata.\n")
    second = MODELS["attention_clustering"]()
    with pytest.warns(UserWarning, match="not written by kmeans-transformer"):
        second.save_pretrained(target)
    assert (target / "README.md").read_text() == "My own notes, no metadata.\n" and (target / "train.py").exists()
    assert not (target / "model-00002-of-00002.safetensors").exists()
    torch.testing.assert_close(AutoModel.from_pretrained(target).heads, second.heads, rtol=0, atol=0)
    # an exception while writing (here, in the weights) leaves the previous checkpoint loadable
    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", failing)
    with pytest.raises(OSError, match="No space"):
        KMeansTransformerModel(KMeansTransformerConfig(num_clusters=2, point_dim=2)).save_pretrained(target)
    monkeypatch.undo()
    assert sorted(path.name for path in target.iterdir() if path.name.startswith(".")) == []
    torch.testing.assert_close(AutoModel.from_pretrained(target).heads, second.heads, rtol=0, atol=0)
    # overwrite replaces the user's README with the card
    second.save_pretrained(target, overwrite=True)
    assert "kmeans-transformer" in ModelCard.load(target / "README.md").data.tags
