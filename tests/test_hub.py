"""The Hub: cards, push (command, model, estimator), pull back through the cache and offline, errors, the zoo.

Every test talks to a local server that speaks the Hub's HTTP protocol (`hub_server.py`), through the real
huggingface_hub and transformers clients, with `HF_ENDPOINT` pointing at it.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hub_server import hub  # noqa: F401  (the fixture)
from kmeans_transformer import KMeans
from kmeans_transformer.cli import main
from kmeans_transformer.cards import render_model_card
from kmeans_transformer.convert import build_model, convert_checkpoint
from kmeans_transformer.validation import gaussian_mixture, validate_against_reference
from kmeans_transformer.hub import HubError, check_checkpoint, push_checkpoint
from kmeans_transformer.reference import lloyd
from kmeans_transformer.zoo import ZooEntry, build_zoo

WORKER = Path(__file__).parent / "scripts" / "hub_pull_worker.py"


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its SHA-256 and modification time: what a push must leave unchanged."""
    return {
        str(path.relative_to(directory)): f"{hashlib.sha256(path.read_bytes()).hexdigest()} {path.stat().st_mtime_ns}"
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def write_checkpoint(directory: Path, variant="lloyd", k=3, d=2, T=4, **parameters):
    model = build_model(k, d, T, variant=variant, dtype="float64", **parameters)
    report = convert_checkpoint(model, directory)
    return model, report


def pull(repo_id: str, points: np.ndarray, centroids: np.ndarray, tmp_path: Path, name: str, **env) -> dict:
    """Load `repo_id` with remote code in a fresh process (the environment plus `env`) and return its outputs."""
    np.save(tmp_path / "points.npy", points)
    np.save(tmp_path / "centroids.npy", centroids)
    output = tmp_path / f"{name}.npz"
    result = subprocess.run(
        [sys.executable, str(WORKER), repo_id, str(tmp_path / "points.npy"), str(tmp_path / "centroids.npy"), str(output)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(output) as saved:
        return {key: saved[key] for key in saved.files}


def cli_error(capsys, *argv) -> str:
    """Run the command, expect exit status 2 and one error line (beside any upload progress bar), and return it."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kmeans-transformer")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lloyd", "trimmed", "gmm"])
def test_card_metadata_parses_and_holds_the_measured_figures(variant, hub):
    model = build_model(4, 3, 3, variant=variant, dtype="float64", **({"reg_covar": 1e-6} if variant == "gmm" else {}))
    report = validate_against_reference(model)
    card = ModelCard(str(render_model_card(model, report, repo_id="alice/checkpoint")))  # from its text, as the Hub reads it
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert {"clustering", "k-means", variant} <= set(card.data.tags)
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "alice/checkpoint"
    figures = {result.metric_type: result.metric_value for result in results}
    assert figures["label_agreement"] == report.label_agreement == 1.0
    assert figures["max_relative_centroid_error"] == report.max_relative_centroid_error
    assert ("outlier_agreement" in figures) == (variant == "trimmed")
    assert ("max_relative_parameter_error" in figures) == (variant == "gmm")
    assert all(result.dataset_type == "synthetic-gaussian-mixtures" for result in results)
    assert f"{report.max_relative_centroid_error:.3e}" in card.text and "{{" not in card.text
    assert 'AutoModel.from_pretrained("alice/checkpoint", trust_remote_code=True)' in card.text
    assert "not the analytic construction" not in card.text
    card.validate()  # the Hub's YAML validation, on the local server


def test_card_of_edited_weights_says_so_and_reports_the_failed_validation():
    model = build_model(3, 2, 3, dtype="float64")
    model.layers[0].assign.k_proj.weight.data.mul_(0.5)  # the assign score is no longer 2x·c − ‖c‖²
    report = validate_against_reference(model)
    assert not report.passed
    card = render_model_card(model, report)
    assert "not the analytic construction" in card.text and "did not pass" in card.text
    figures = {r.metric_type: r.metric_value for r in model_index_to_eval_results(card.data.to_dict()["model-index"])[1]}
    assert figures["label_agreement"] == report.label_agreement < 1.0


# ---------------------------------------------------------------------------------------------------------------
# Push and pull back
# ---------------------------------------------------------------------------------------------------------------


def test_push_command_then_pull_with_remote_code_in_fresh_processes_and_offline(hub, tmp_path, monkeypatch, capsys, rng):
    checkpoint = tmp_path / "lloyd"
    model, report = write_checkpoint(checkpoint, k=4, d=3, T=5)
    before = tree_digest(checkpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")

    assert main(["push", str(checkpoint), "--repo-id", "alice/lloyd-k4", "--commit-message", "First checkpoint"]) == 0
    assert "alice/lloyd-k4" in capsys.readouterr().out
    assert tree_digest(checkpoint) == before  # only read

    pushed = hub.files("alice/lloyd-k4")
    for name in ("config.json", "model.safetensors", "configuration_kmeans_transformer.py",
                 "modeling_kmeans_transformer.py", "cpu_kernels.py"):
        assert pushed[name] == (checkpoint / name).read_bytes(), name
    card = ModelCard(pushed["README.md"].decode())
    assert card.data.to_dict()["model-index"][0]["name"] == "alice/lloyd-k4"
    assert 'from_pretrained("alice/lloyd-k4"' in card.text and "path/to/checkpoint" not in card.text
    assert f"{report.max_relative_centroid_error:.3e}" in card.text

    points = gaussian_mixture(rng, 300, 3, 4)
    initial = points[:4].copy()
    expected = lloyd(points, initial, 5)
    fresh = {"HF_HOME": str(tmp_path / "fresh-home"), "HF_TOKEN": ""}
    online = pull("alice/lloyd-k4", points, initial, tmp_path, "online", **fresh)
    assert str(online["module"]).startswith("transformers_modules") and not online["imported_package"]
    np.testing.assert_array_equal(online["labels"][0], expected.labels)
    np.testing.assert_allclose(online["centroids"][0], expected.centroids, rtol=0, atol=1e-12)
    with torch.no_grad():
        local = model(torch.from_numpy(points), centroids=torch.from_numpy(initial))
    np.testing.assert_array_equal(online["labels"], local.labels.numpy())
    np.testing.assert_array_equal(online["centroids"], local.centroids.numpy())
    np.testing.assert_array_equal(online["inertia"], local.inertia.numpy())

    requests_before = len(hub.requests)
    offline = pull("alice/lloyd-k4", points, initial, tmp_path, "offline", HF_HUB_OFFLINE="1", **fresh)
    assert len(hub.requests) == requests_before  # everything came from the cache
    for key in ("labels", "centroids", "inertia"):
        np.testing.assert_array_equal(offline[key], online[key])


def test_model_push_to_hub_writes_the_card_with_figures_measured_now(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    model = build_model(3, 2, 4, variant="soft", dtype="float64", inverse_temperature=2.0)
    commit = model.push_to_hub("kmeans-org/soft-k3", commit_message="soft k-means")
    assert re.fullmatch(r"[0-9a-f]{40}", commit.oid)
    pushed = hub.files("kmeans-org/soft-k3")
    assert {"config.json", "model.safetensors", "modeling_kmeans_transformer.py", "README.md"} <= set(pushed)
    assert json.loads(pushed["config.json"])["inverse_temperature"] == 2.0
    card = ModelCard(pushed["README.md"].decode())
    figures = {r.metric_type: r.metric_value for r in model_index_to_eval_results(card.data.to_dict()["model-index"])[1]}
    report = validate_against_reference(model)
    assert figures["label_agreement"] == report.label_agreement
    assert figures["max_relative_centroid_error"] == report.max_relative_centroid_error
    # As transformers' push_to_hub does, a second push is a new commit on the existing repository.
    stiffer = build_model(3, 2, 4, variant="soft", dtype="float64", inverse_temperature=3.0)
    assert stiffer.push_to_hub("kmeans-org/soft-k3").oid != commit.oid
    assert json.loads(hub.files("kmeans-org/soft-k3")["config.json"])["inverse_temperature"] == 3.0


def test_fitted_estimator_pushes_and_loads_back(hub, monkeypatch):
    from sklearn.datasets import load_iris

    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    X = load_iris().data
    kmeans = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    kmeans.push_to_hub("alice/iris-kmeans", private=True)
    assert "kmeans_estimator.json" in hub.files("alice/iris-kmeans")
    card = ModelCard(hub.files("alice/iris-kmeans")["README.md"].decode())
    inertia = {r.metric_type: r.metric_value for r in model_index_to_eval_results(card.data.to_dict()["model-index"])[1]}
    assert inertia["inertia"] == pytest.approx(((X - kmeans.cluster_centers_[kmeans.labels_]) ** 2).sum(), rel=1e-9)
    loaded = KMeans.from_pretrained("alice/iris-kmeans")
    np.testing.assert_array_equal(loaded.cluster_centers_, kmeans.cluster_centers_)
    np.testing.assert_array_equal(loaded.labels_, kmeans.labels_)
    np.testing.assert_array_equal(loaded.predict(X), kmeans.predict(X))
    assert loaded.get_params() == kmeans.get_params()


def test_push_to_a_branch_creates_it_and_leaves_main(hub, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "spherical"
    write_checkpoint(checkpoint, variant="spherical")
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    assert main(["push", str(checkpoint), "--repo-id", "alice/branches", "--revision", "dev", "--private"]) == 0
    assert "model.safetensors" in hub.files("alice/branches", revision="dev")
    assert "model.safetensors" not in hub.files("alice/branches", revision="main")


# ---------------------------------------------------------------------------------------------------------------
# Errors: one line each, and the local folder untouched
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "checkpoint"
    write_checkpoint(directory)
    return directory


def test_missing_token(hub, checkpoint, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    message = cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/x")
    assert "no Hugging Face token" in message and "HF_TOKEN" in message
    assert hub.requests == []


@pytest.mark.parametrize(
    "token, repo_id, expected",
    [
        ("hf_expired_token", "carol/x", "refused the token (401"),
        ("hf_not_a_token", "alice/x", "refused the token (401"),
        ("hf_read_token", "bob/x", "may not write to bob/x (403"),
        ("hf_write_token", "someone-else/x", "may not write to someone-else/x (403"),
    ],
)
def test_refused_tokens(hub, checkpoint, monkeypatch, capsys, token, repo_id, expected):
    before = tree_digest(checkpoint)
    monkeypatch.setenv("HF_TOKEN", token)
    assert expected in cli_error(capsys, "push", str(checkpoint), "--repo-id", repo_id)
    assert tree_digest(checkpoint) == before


def test_existing_repository_needs_exist_ok(hub, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    assert main(["push", str(checkpoint), "--repo-id", "alice/twice"]) == 0
    first = hub.files("alice/twice")
    replacement = tmp_path / "spherical"
    write_checkpoint(replacement, variant="spherical")
    message = cli_error(capsys, "push", str(replacement), "--repo-id", "alice/twice")
    assert "alice/twice already exists" in message and "--exist-ok" in message
    with pytest.raises(HubError, match="pass exist_ok=True"):
        push_checkpoint(replacement, "alice/twice")
    assert hub.files("alice/twice") == first  # refused: nothing changed on the Hub
    commits = len(hub.commits("alice/twice"))
    assert main(["push", str(replacement), "--repo-id", "alice/twice", "--exist-ok"]) == 0
    assert json.loads(hub.files("alice/twice")["config.json"])["variant"] == "spherical"
    assert len(hub.commits("alice/twice")) == commits + 1


def test_unreachable_endpoint(hub, checkpoint, monkeypatch, capsys):
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    before = tree_digest(checkpoint)
    message = cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/x")
    assert f"cannot reach the Hub at http://127.0.0.1:{port}" in message
    assert tree_digest(checkpoint) == before


def test_failed_commit_leaves_the_folder_and_the_repository_untouched(hub, checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    before = tree_digest(checkpoint)
    hub.fail_next("/commit/", status=500, message="storage unavailable")
    message = cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/broken")
    assert "pushing to alice/broken" in message and "500" in message
    assert tree_digest(checkpoint) == before
    assert "model.safetensors" not in hub.files("alice/broken")


def test_incomplete_or_foreign_directories_are_refused_before_any_request(hub, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    assert "is not a directory" in cli_error(capsys, "push", str(tmp_path / "missing"), "--repo-id", "alice/x")
    (checkpoint / "model.safetensors").rename(tmp_path / "weights")
    assert "model.safetensors missing" in cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/x")
    (tmp_path / "weights").rename(checkpoint / "model.safetensors")
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "'bert' checkpoint" in cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/x")
    (checkpoint / "config.json").write_text(json.dumps(config))
    for metadata in ("tags: [unclosed", "tags: 3"):
        (checkpoint / "README.md").write_text(f"---\n{metadata}\n---\ntext\n")
        with pytest.raises(HubError, match="invalid metadata"):
            check_checkpoint(checkpoint)
    assert hub.requests == []


def test_a_module_the_code_imports_is_part_of_a_complete_checkpoint(checkpoint, tmp_path):
    check_checkpoint(checkpoint)
    (checkpoint / "variants.py").rename(tmp_path / "variants.py")  # imported by the configuration and modeling files
    with pytest.raises(HubError, match=r"is not a complete checkpoint: variants\.py missing"):
        check_checkpoint(checkpoint)
    (tmp_path / "variants.py").rename(checkpoint / "variants.py")
    (checkpoint / "reference.py").unlink()  # imported by variants.py: found by following the imports
    with pytest.raises(HubError, match=r"reference\.py missing"):
        check_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# The zoo
# ---------------------------------------------------------------------------------------------------------------


def test_zoo_writes_validated_checkpoints_and_a_table_of_their_figures(tmp_path, capsys):
    output = tmp_path / "zoo"
    argv = ["zoo", "--output", str(output), "--variants", "lloyd,kmedoids,gmm", "--sizes", "3x2x4", "--owner", "kmeans-org", "--no-progress"]
    assert main(argv) == 0
    names = ["kmeans-transformer-lloyd-k3-d2-t4", "kmeans-transformer-kmedoids-k3-d2-t4",
             "kmeans-transformer-kmedoids-gumbel-k3-d2-t4", "kmeans-transformer-gmm-k3-d2-t4"]
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == sorted(names)
    rows = [line for line in (output / "README.md").read_text().splitlines() if line.startswith("| [")]
    assert len(rows) == len(names)
    for name, row in zip(names, rows):
        check_checkpoint(output / name)
        card = ModelCard.load(output / name / "README.md")
        model_name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
        assert model_name == f"kmeans-org/{name}" and f"[kmeans-org/{name}]" in row
        figures = {result.metric_type: result.metric_value for result in results}
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[6]) == pytest.approx(figures["label_agreement"], abs=5e-7) and figures["label_agreement"] == 1.0
        assert float(cells[7]) == pytest.approx(figures["max_relative_centroid_error"], rel=1e-3, abs=1e-300)
        config = json.loads((output / name / "config.json").read_text())
        assert (config["num_clusters"], config["point_dim"], config["num_iterations"]) == (3, 2, 4)
        assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float64"
    assert json.loads((output / names[-1] / "config.json").read_text())["reg_covar"] == 1e-6
    assert "kmeans-transformer push" in (output / "README.md").read_text()
    capsys.readouterr()
    assert "not empty" in cli_error(capsys, *argv)


def test_zoo_entries_are_named_by_variant_and_size(tmp_path):
    results = build_zoo(tmp_path / "z", [ZooEntry("spherical", 2, 3, 1)], progress=False)
    assert [entry.name for entry, _ in results] == ["kmeans-transformer-spherical-k2-d3-t1"]
    assert results[0][1].passed and "[kmeans-transformer-spherical-k2-d3-t1](kmeans-transformer-spherical-k2-d3-t1/)" in (
        tmp_path / "z" / "README.md"
    ).read_text()


def test_card_of_a_model_with_fitted_centroids_says_so():
    from sklearn.datasets import load_iris

    model = KMeans(n_clusters=3, n_init=1, random_state=0).fit(load_iris().data).model_
    card = render_model_card(model, validate_against_reference(model))
    assert "stores fitted centroids" in card.text and "not the analytic construction" not in card.text


def test_card_refused_by_the_hub_is_one_line(hub, checkpoint, monkeypatch, capsys):
    card = (checkpoint / "README.md").read_text()
    (checkpoint / "README.md").write_text(card.replace("license: apache-2.0", "license: [apache-2.0, mit]", 1))  # parses
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    message = cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/bad-card")
    assert "Invalid metadata in README.md" in message and "license" in message
    assert "README.md" not in hub.files("alice/bad-card")


# ---------------------------------------------------------------------------------------------------------------------
# What a push sends: exactly the checkpoint's files, never a link's target
# ---------------------------------------------------------------------------------------------------------------------


def expected_files(directory: Path, *extra: str) -> set[str]:
    """The files of a checkpoint, found independently: config, weights, card, the code and every module it imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    import kmeans_transformer

    code = {Path(name).name for name in get_relative_import_files(kmeans_transformer.modeling_kmeans_transformer.__file__)}
    return {"config.json", "model.safetensors", "README.md", "modeling_kmeans_transformer.py", *code, *extra}


def add_what_must_not_be_pushed(directory: Path, outside: Path) -> None:
    """Data, notes, a hidden file, and links to a file and a folder outside the checkpoint."""
    (directory / "training_data.csv").write_text("x,y\n1.0,2.0\n")
    (directory / "notes").mkdir()
    (directory / "notes" / "todo.txt").write_text("ask about the licence")
    (directory / ".env").write_text("HF_TOKEN=hf_secret\n")
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the checkpoint")
    (directory / "linked.txt").symlink_to(outside / "secret.txt")
    (directory / "linked-folder").symlink_to(outside, target_is_directory=True)


def test_push_sends_exactly_the_checkpoint_files_and_lists_them_first(hub, checkpoint, tmp_path, monkeypatch, caplog):
    import logging

    add_what_must_not_be_pushed(checkpoint, tmp_path / "outside")
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    caplog.set_level(logging.INFO, logger="kmeans_transformer.hub")
    assert main(["push", str(checkpoint), "--repo-id", "alice/exact"]) == 0
    expected = expected_files(checkpoint)
    assert set(hub.files("alice/exact")) == expected | {".gitattributes"}  # the server's first commit adds it
    [message] = [record.getMessage() for record in caplog.records if record.name == "kmeans_transformer.hub"]
    assert "alice/exact (public)" in message
    assert set(message.split(": ", 1)[1].split(", ")) == expected


def test_a_fitted_estimator_directory_pushes_its_files_and_announces_them_before_the_commit(hub, tmp_path, monkeypatch):
    from sklearn.datasets import load_iris

    directory = tmp_path / "fitted"
    KMeans(3, random_state=0).fit(load_iris().data).save_pretrained(directory)
    add_what_must_not_be_pushed(directory, tmp_path / "outside")
    announced = []

    def announce(message):
        announced.append((message, set(hub.files("kmeans-org/iris"))))  # what the repository holds at that moment

    push_checkpoint(directory, "kmeans-org/iris", private=True, token="hf_write_token", announce=announce)
    expected = expected_files(directory, "kmeans_estimator.json", "kmeans_estimator.safetensors")
    assert set(hub.files("kmeans-org/iris")) == expected | {".gitattributes"}
    [(message, held)] = announced
    assert held == {".gitattributes"}  # listed before anything was sent
    assert "kmeans-org/iris (private)" in message and set(message.split(": ", 1)[1].split(", ")) == expected
    loaded = KMeans.from_pretrained("kmeans-org/iris", token="hf_write_token")
    assert loaded.n_clusters == 3 and loaded.labels_.shape == (150,)


@pytest.mark.parametrize("name", ["model.safetensors", "variants.py", "README.md", "kmeans_estimator.json"])
def test_a_symlinked_checkpoint_file_is_refused_before_any_request(hub, checkpoint, tmp_path, monkeypatch, capsys, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    source = checkpoint / name
    copy = outside / name
    copy.write_bytes(source.read_bytes() if source.exists() else b'{"parameters": {}, "fitted": {}}')
    source.unlink(missing_ok=True)
    source.symlink_to(copy)
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    message = cli_error(capsys, "push", str(checkpoint), "--repo-id", "alice/linked")
    assert f"{source} is a symbolic link" in message
    with pytest.raises(HubError, match="is a symbolic link"):
        push_checkpoint(checkpoint, "alice/linked")
    assert hub.requests == [] and copy.exists()


def test_a_sharded_checkpoint_pushes_its_index_and_the_shards_it_names(hub, checkpoint, tmp_path, monkeypatch):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="2KB")
    shards = [path.name for path in (tmp_path / "sharded").glob("model-*.safetensors")]
    assert len(shards) > 1
    for name in [*shards, "model.safetensors.index.json"]:
        (tmp_path / "sharded" / name).rename(checkpoint / name)
    (checkpoint / "model-00009-of-00009.safetensors").write_bytes(b"a shard the index does not name")
    push_checkpoint(checkpoint, "alice/sharded", token="hf_write_token")
    expected = expected_files(checkpoint, "model.safetensors.index.json", *shards) - {"model.safetensors"}
    assert set(hub.files("alice/sharded")) == expected | {".gitattributes"}

    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "../outside.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HubError, match=r"names '\.\./outside\.safetensors', which is not the name of a file"):
        check_checkpoint(checkpoint)
