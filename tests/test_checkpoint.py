"""Conversion to safetensors, the model card, and loading back with and without the package."""

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
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors import safe_open
from transformers import AutoModel
from transformers.dynamic_module_utils import get_relative_import_files

import kmeans_transformer
from kmeans_transformer.cli import main
from kmeans_transformer.convert import build_model, convert_checkpoint
from kmeans_transformer.reference import fuzzy_cmeans, lloyd
from kmeans_transformer.validation import ValidationError, validate_against_reference

from conftest import make_model, mixture


def convert(tmp_path, *extra, name="ckpt"):
    output = tmp_path / name
    argv = ["convert", "--num-clusters", "4", "--point-dim", "3", "--num-iterations", "6", "--output", str(output)]
    return output, main(argv + list(extra))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_convert_writes_a_safetensors_checkpoint_with_code_and_card(tmp_path, dtype):
    output, code = convert(tmp_path, "--dtype", dtype)
    assert code == 0
    files = {path.name for path in output.iterdir()}
    # the code for trust_remote_code: the modeling and configuration files and every module they import
    code = {Path(name).name for name in get_relative_import_files(kmeans_transformer.modeling_kmeans_transformer.__file__)}
    assert {"configuration_kmeans_transformer.py", "variants.py", "cpu_kernels.py"} <= code
    assert files == {"config.json", "model.safetensors", "README.md", "modeling_kmeans_transformer.py", *code}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # no pickle anywhere
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "kmeans_transformer" and config["dtype"] == dtype
    with safe_open(output / "model.safetensors", "pt") as weights:
        update_query = weights.get_tensor("layers.0.update.q_proj.weight")
        assert str(update_query.dtype) == f"torch.{dtype}"
        # the construction is readable in the file: the update's query is the centroid's one-hot code e_j
        assert update_query.tolist() == [[0.0] * 3 + [float(i == j) for j in range(4)] + [0.0] * 4 for i in range(4)]

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers" and "k-means" in card.data.tags
    report = validate_against_reference(make_model(4, 3, 6, dtype=getattr(torch, dtype)))
    assert f"{report.label_agreement:.6f}" in card.text
    assert f"{report.max_relative_centroid_error:.3e}" in card.text
    assert "{{" not in card.text


def test_load_with_package_gives_identical_outputs(tmp_path, rng):
    output, _ = convert(tmp_path, "--dtype", "float64")
    model = AutoModel.from_pretrained(output)
    assert isinstance(model, kmeans_transformer.KMeansTransformerModel)
    assert model.dtype == torch.float64 and model.config._attn_implementation == "kmeans_hardmax"
    points = mixture(rng, 500, 3, 4)
    loaded = model(torch.tensor(points))
    fresh = make_model(4, 3, 6)(torch.tensor(points))
    torch.testing.assert_close(loaded.centroids, fresh.centroids, rtol=0, atol=0)
    np.testing.assert_allclose(loaded.centroids[0].numpy(), lloyd(points, points[:4], 6).centroids, rtol=1e-10)


def test_fresh_process_with_remote_code_gives_identical_outputs(tmp_path, rng):
    output, _ = convert(tmp_path, "--dtype", "float64")
    points = mixture(rng, 300, 3, 4)
    np.save(tmp_path / "points.npy", points)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True)
        assert "kmeans_transformer" not in sys.modules, "the package must not be imported"
        with torch.no_grad():  # as the tests run
            out = model(torch.tensor(np.load({str(tmp_path / "points.npy")!r})))
        np.save({str(tmp_path / "remote.npy")!r}, out.centroids.detach().numpy())
        np.save({str(tmp_path / "remote_labels.npy")!r}, out.labels.numpy())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    local = AutoModel.from_pretrained(output)(torch.tensor(points))
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), local.centroids.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "remote_labels.npy"), local.labels.numpy())


def test_checkpoint_for_another_dimension_is_refused(tmp_path):
    output, _ = convert(tmp_path)
    with pytest.raises(ValueError, match="dimension 5, but this model was built for point_dim=3"):
        AutoModel.from_pretrained(output)(torch.randn(20, 5))


def test_refuses_non_empty_directory_unless_overwrite(tmp_path, capsys):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    _, code = convert(tmp_path)
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    _, code = convert(tmp_path, "--overwrite")  # replacing the folder would delete the user's file: refused
    assert code == 2 and "not part of a checkpoint (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (target / "notes.txt").unlink()
    assert convert(tmp_path)[1] == 0 and (target / "model.safetensors").exists()
    first = sorted(p.name for p in target.iterdir())
    _, code = convert(tmp_path, "--overwrite")  # a previous checkpoint is replaced whole
    assert code == 0 and sorted(p.name for p in target.iterdir()) == first


def test_a_model_that_disagrees_with_the_reference_is_not_written(tmp_path):
    model = make_model(4, 3, 6)
    model.layers[0].assign.q_proj.weight[0, 0] = 0.5  # a wrong weight: no longer Lloyd
    with pytest.raises(ValidationError, match="disagrees with the reference"):
        convert_checkpoint(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_convert_script_and_command_line_errors(tmp_path):
    script = "convert_scripts/convert_kmeans_transformer_to_safetensors.py"
    result = subprocess.run(
        [sys.executable, script, "--num-clusters", "2", "--point-dim", "2", "--num-iterations", "3", "--output", str(tmp_path / "a")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "model.safetensors").exists()
    result = subprocess.run(
        [sys.executable, "-m", "kmeans_transformer.cli", "convert", "--variant", "nope", "--num-clusters", "2",
         "--point-dim", "2", "--num-iterations", "3", "--output", str(tmp_path / "b")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "kmeans_transformer.cli", "convert", "--num-clusters", "0", "--point-dim", "2",
         "--num-iterations", "3", "--output", str(tmp_path / "c")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "`num_clusters` must be an integer >= 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "c").exists()


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    assert "labels identical to the reference: True" in capsys.readouterr().out


VARIANT_CONVERSIONS = [
    ("soft", ["--inverse-temperature", "0.5"]),
    ("spherical", []),
    ("trimmed", ["--trim-fraction", "0.1"]),
    ("trimmed", []),
    ("sparse", ["--inverse-temperature", "2"]),
    ("kmedoids", []),
    ("kmedoids", ["--medoid-selection", "gumbel"]),
    ("gmm", ["--reg-covar", "1e-6"]),
    ("fuzzy", ["--fuzzifier", "1.5"]),
]


@pytest.mark.parametrize(("variant", "extra"), VARIANT_CONVERSIONS, ids=[f"{v}{'-'.join([''] + e)}" for v, e in VARIANT_CONVERSIONS])
def test_every_variant_converts_and_loads_back(tmp_path, rng, variant, extra):
    output, code = convert(tmp_path, "--variant", variant, "--dtype", "float64", *extra)
    assert code == 0
    model = AutoModel.from_pretrained(output)
    built = make_model(4, 3, 6, variant=variant, **{
        arg.removeprefix("--").replace("-", "_"): (value if arg == "--medoid-selection" else float(value))
        for arg, value in zip(extra[::2], extra[1::2])
    })
    fields = ("variant", "inverse_temperature", "trim_quantile", "trim_fraction", "medoid_selection", "reg_covar", "fuzzifier")
    assert {f: getattr(model.config, f) for f in fields} == {f: getattr(built.config, f) for f in fields}
    points = torch.tensor(mixture(rng, 300, 3, 4))
    inputs = {"generator": torch.Generator().manual_seed(0)} if "gumbel" in extra else {}
    loaded = model(points, **inputs)
    inputs = {"generator": torch.Generator().manual_seed(0)} if "gumbel" in extra else {}
    expected = built(points, **inputs)
    for name in ("labels", "centroids", "inertia", "outliers", "weights", "variances"):
        if getattr(expected, name) is not None:
            assert torch.equal(getattr(loaded, name), getattr(expected, name)), name
    card = ModelCard.load(output / "README.md")
    assert variant in card.data.tags and "{{" not in card.text
    report = validate_against_reference(built)
    assert f"{report.label_agreement:.6f}" in card.text
    assert f"{report.max_relative_centroid_error:.3e}" in card.text
    if "gumbel" not in extra:
        assert f"reference.{report.reference}" in card.text


def test_fuzzy_checkpoint_agrees_with_its_reference_and_loads_back(tmp_path, rng):
    output = tmp_path / "fuzzy"
    report = convert_checkpoint(build_model(3, 2, 5, variant="fuzzy", dtype="float64"), output)
    assert report.passed and report.reference == "fuzzy_cmeans"
    card = ModelCard.load(output / "README.md")
    assert "fuzzy" in card.data.tags and "{{" not in card.text
    assert "fuzzy c-means" in card.text and "reference.fuzzy_cmeans" in card.text
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    figures = {result.metric_type: result.metric_value for result in results}
    assert figures["label_agreement"] == 1.0
    assert figures["max_relative_centroid_error"] == report.max_relative_centroid_error <= 1e-10
    model = AutoModel.from_pretrained(output)
    assert model.config.variant == "fuzzy" and model.config.fuzzifier == 2.0 and model.dtype == torch.float64
    points = mixture(rng, 300, 2, 3)
    initial = points[rng.choice(300, size=3, replace=False)]
    loaded = model(torch.tensor(points), torch.tensor(initial))
    expected = fuzzy_cmeans(points, initial, 5, 2.0)
    scale = np.abs(points).max()
    np.testing.assert_allclose(loaded.centroids[0].numpy(), expected.centroids, rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(loaded.responsibilities[0].numpy(), expected.responsibilities, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(loaded.labels[0].numpy(), expected.labels)
