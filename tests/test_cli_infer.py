"""`kmeans-transformer infer`: both modes end to end, one process and two gloo processes under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel, reference
from kmeans_transformer.cli import main
from conftest import mixture


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture
def checkpoint(tmp_path):
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=6)).double()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def problems_dataset(rng, count):
    sizes = rng.integers(3, 30, size=count)
    return [mixture(rng, int(n), 2, 3) for n in sizes]


def test_problems_mode_writes_each_problems_clustering_in_input_order(tmp_path, rng, checkpoint):
    problems = problems_dataset(rng, 37)
    datasets.Dataset.from_dict({"points": [p.tolist() for p in problems]}).save_to_disk(tmp_path / "problems")
    code = main(["infer", "--model", str(checkpoint), "--dataset", str(tmp_path / "problems"), "--output",
                 str(tmp_path / "out.parquet"), "--batch-size", "8", "--cpu", "--no-progress"])
    assert code == 0
    results = pd.read_parquet(tmp_path / "out.parquet")
    assert results["problem"].tolist() == list(range(37))
    for points, labels, centroids, inertia in zip(problems, results["labels"], results["centroids"], results["inertia"]):
        expected = reference.lloyd(points, points[:3], 6)
        np.testing.assert_array_equal(np.asarray(labels), expected.labels)
        np.testing.assert_allclose(np.stack(centroids), expected.centroids, rtol=1e-12, atol=1e-12)
        assert inertia == pytest.approx(expected.inertia, rel=1e-12)


def run_points(tmp_path, checkpoint, data, output, processes):
    arguments = ["infer", "--mode", "points", "--model", str(checkpoint), "--dataset", str(data), "--output",
                 str(output), "--chunk-size", "97", "--cpu", "--no-progress"]
    if processes == 1:
        assert main(arguments) == 0
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(TORCHRUN), "--nproc_per_node", str(processes), "-m", "kmeans_transformer.cli", *arguments],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def read_points_output(output):
    """The labels, centroids and summary of a complete points-mode output (checked: summary.json, the parts)."""
    from kmeans_transformer.points import load_points_output

    complete = load_points_output(output)
    assert complete.summary == json.loads((output / "summary.json").read_text())
    return complete.labels, complete.centroids, complete.summary


def test_points_mode_on_two_gloo_processes_matches_one_process_and_lloyd(tmp_path, rng, checkpoint):
    points = mixture(rng, 1500, 2, 3)
    pd.DataFrame(points, columns=["x", "y"]).to_parquet(tmp_path / "points.parquet")
    run_points(tmp_path, checkpoint, tmp_path / "points.parquet", tmp_path / "one", 1)
    run_points(tmp_path, checkpoint, tmp_path / "points.parquet", tmp_path / "two", 2)
    one_labels, one_centroids, one_summary = read_points_output(tmp_path / "one")
    two_labels, two_centroids, two_summary = read_points_output(tmp_path / "two")
    assert len(list((tmp_path / "two" / "labels").glob("*.parquet"))) == 2  # one part per process

    expected = reference.lloyd(points, points[:3], 6)
    np.testing.assert_array_equal(one_labels["index"].to_numpy(), np.arange(1500))
    np.testing.assert_array_equal(one_labels["label"].to_numpy(), expected.labels)
    np.testing.assert_array_equal(two_labels["label"].to_numpy(), one_labels["label"].to_numpy())
    coordinates = [c for c in one_centroids.columns if c not in ("cluster", "size")]
    np.testing.assert_allclose(one_centroids[coordinates].to_numpy(), expected.centroids, rtol=1e-12)
    np.testing.assert_allclose(two_centroids[coordinates].to_numpy(), one_centroids[coordinates].to_numpy(), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(one_centroids["size"].to_numpy(), np.bincount(expected.labels, minlength=3))
    assert two_summary["inertia"] == pytest.approx(one_summary["inertia"], rel=1e-12)
    assert one_summary["inertia"] == pytest.approx(expected.inertia, rel=1e-12)
    assert one_summary["num_points"] == two_summary["num_points"] == 1500


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing model", ["cannot load the model"]),
        ("output exists", ["exists", "--overwrite"]),
        ("missing column", ["points"]),
    ],
)
def test_infer_errors_are_one_line_and_write_nothing(tmp_path, rng, checkpoint, capsys, case, words):
    datasets.Dataset.from_dict({"values": [[[0.0, 1.0]] * 4] * 3}).save_to_disk(tmp_path / "problems")
    model = str(tmp_path / "nowhere") if case == "missing model" else str(checkpoint)
    output = tmp_path / "out.parquet"
    if case == "output exists":
        output.write_text("keep me")
    capsys.readouterr()
    code = main(["infer", "--model", model, "--dataset", str(tmp_path / "problems"), "--output", str(output), "--cpu",
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("kmeans-transformer infer: error:")
    assert all(word in err for word in words), err
    if case == "output exists":
        assert output.read_text() == "keep me"
    else:
        assert not output.exists()


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_points_mode_cache_options(cache, tmp_path, rng, checkpoint):
    """`--cache disk` makes its scratch file in `--cache-directory` and removes it; both give Lloyd's result."""
    points = mixture(rng, 600, 2, 3)
    pd.DataFrame(points, columns=["x", "y"]).to_parquet(tmp_path / "points.parquet")
    (tmp_path / "scratch").mkdir()
    arguments = ["infer", "--mode", "points", "--model", str(checkpoint), "--dataset", str(tmp_path / "points.parquet"),
                 "--output", str(tmp_path / "out"), "--chunk-size", "97", "--cpu", "--no-progress", "--cache", cache,
                 "--cache-directory", str(tmp_path / "scratch")]
    assert main(arguments) == 0
    labels, _, _ = read_points_output(tmp_path / "out")
    np.testing.assert_array_equal(labels["label"].to_numpy(), reference.lloyd(points, points[:3], 6).labels)
    assert list((tmp_path / "scratch").iterdir()) == []
