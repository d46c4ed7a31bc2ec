"""Problems mode: a dataset of clustering problems, one per row, clustered in batches under Accelerate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.problems import infer_problems, load_problems, validate_problems, write_problem_results
from kmeans_transformer.reference import lloyd


K, D, T = 3, 2, 5
WORKER = Path(__file__).parent / "scripts" / "infer_problems_worker.py"


def make_problems(num_problems, seed=0, with_centroids=False):
    """Problems of k to 40 points in the plane (a few Gaussian blobs each); optionally random initial centroids."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(K, 41, num_problems)
    points = []
    for n in sizes:
        centres = rng.normal(scale=4.0, size=(K, D))
        points.append(centres[rng.integers(0, K, n)] + rng.normal(size=(n, D)))
    columns = {"points": [p.tolist() for p in points]}
    if with_centroids:
        columns["init"] = [rng.normal(scale=4.0, size=(K, D)).tolist() for _ in sizes]
    return datasets.Dataset.from_dict(columns), points


def make_model():
    return KMeansTransformerModel(KMeansTransformerConfig(num_clusters=K, point_dim=D, num_iterations=T)).double().eval()


@pytest.fixture(scope="module")
def many():
    """10,000 problems with default centroids and the same points with explicit ones, and their batched results."""
    model = make_model()
    plain, points = make_problems(10_000)
    explicit = plain.add_column("init", make_problems(10_000, with_centroids=True)[0]["init"])
    accelerator = Accelerator(cpu=True)
    results = infer_problems(model, plain, batch_size=64, accelerator=accelerator, progress=False)
    results_explicit = infer_problems(
        model, explicit, centroids_column="init", batch_size=64, accelerator=accelerator, progress=False
    )
    return model, points, np.array(explicit["init"]), results, results_explicit


def _labels(results):
    return [np.array(row, dtype=np.int64) for row in results["labels"]]


def test_many_problems_match_each_problem_alone(many):
    model, points, inits, results, results_explicit = many
    assert results.column_names == ["problem", "labels", "centroids", "inertia"]
    assert results["problem"] == list(range(len(points)))
    assert results_explicit["problem"] == list(range(len(points)))
    for outcome, centroids in ((results, None), (results_explicit, inits)):
        labels, final = _labels(outcome), np.array(outcome["centroids"])
        inertia = np.array(outcome["inertia"])
        assert [len(row) for row in labels] == [len(p) for p in points]
        assert final.shape == (len(points), K, D) and final.dtype == np.float64
        # every problem, unpadded: the problems of one size form one batch of their own
        sizes = np.array([len(p) for p in points])
        for n in np.unique(sizes):
            rows = np.flatnonzero(sizes == n)
            start = None if centroids is None else torch.from_numpy(centroids[rows])
            alone = model(torch.from_numpy(np.stack([points[i] for i in rows])), start)
            np.testing.assert_array_equal(alone.labels.numpy(), np.stack([labels[i] for i in rows]))
            np.testing.assert_array_equal(alone.centroids.numpy(), final[rows])
            # the sum over a padded row may round differently
            np.testing.assert_allclose(alone.inertia.numpy(), inertia[rows], rtol=1e-13, atol=0)
        # a sample of problems one at a time
        for i in range(0, len(points), 50):
            start = None if centroids is None else torch.from_numpy(centroids[i])
            alone = model(torch.from_numpy(points[i]), start)
            np.testing.assert_array_equal(alone.labels[0].numpy(), labels[i])
            np.testing.assert_array_equal(alone.centroids[0].numpy(), final[i])


@pytest.mark.slow
def test_every_one_of_the_many_problems_run_alone(many):
    """All 10,000 problems, each alone through the model (one call per problem): identical labels and centroids."""
    model, points, _, results, _ = many
    labels, final = _labels(results), np.array(results["centroids"])
    for i, problem in enumerate(points):
        alone = model(torch.from_numpy(problem))
        np.testing.assert_array_equal(alone.labels[0].numpy(), labels[i])
        np.testing.assert_array_equal(alone.centroids[0].numpy(), final[i])


def test_many_problems_match_lloyd(many):
    _, points, inits, results, results_explicit = many
    for outcome, centroids in ((results, None), (results_explicit, inits)):
        labels, final = _labels(outcome), np.array(outcome["centroids"])
        for i in range(3, len(points), 97):
            start = points[i][:K] if centroids is None else centroids[i]
            expected = lloyd(points[i], start, T)
            np.testing.assert_array_equal(labels[i], expected.labels)
            np.testing.assert_allclose(final[i], expected.centroids, rtol=0, atol=1e-12)
            assert outcome[i]["inertia"] == pytest.approx(expected.inertia, rel=1e-12, abs=1e-12)


def test_row_order_selection_dtype_and_num_iterations():
    model = make_model()
    dataset, points = make_problems(50, seed=3)
    # an indices mapping (shuffle) is followed; float32 values are cast to the float64 model exactly
    shuffled = dataset.shuffle(seed=1)
    order = shuffled["points"]
    narrow = shuffled.cast(datasets.Features({"points": datasets.List(datasets.List(datasets.Value("float32")))}))
    results = infer_problems(model, narrow, batch_size=7, num_iterations=2, accelerator=Accelerator(cpu=True), progress=False)
    for i in range(len(order)):
        alone = model(torch.tensor(order[i], dtype=torch.float32), num_iterations=2)
        assert results[i]["problem"] == i
        assert results[i]["labels"] == alone.labels[0].tolist()
        np.testing.assert_array_equal(np.array(results[i]["centroids"]), alone.centroids[0].numpy())
    # a float32 model gives float32 results
    single = infer_problems(model.float(), dataset, accelerator=Accelerator(cpu=True), progress=False)
    assert single.features["inertia"].dtype == "float32"
    assert single.features["centroids"].feature.feature.dtype == "float32"


def test_two_processes_match_one(tmp_path):
    num_problems, batch_size = 203, 16  # 13 batches: the second process repeats samples to even up the last one
    dataset, _ = make_problems(num_problems, seed=7)
    dataset.save_to_disk(str(tmp_path / "problems"))
    output = tmp_path / "results.parquet"
    torchrun = Path(sys.executable).parent / "torchrun"
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path / "problems"), str(output), str(batch_size)],
        capture_output=True, text=True, timeout=180, env=environment,
    )
    assert completed.returncode == 0, completed.stderr[:6000]
    ranks = [json.loads(Path(f"{output}.rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(ranks):
        assert record["num_processes"] == 2 and record["distributed_type"] == "DistributedType.MULTI_CPU"
        assert record["batches"] == 7 and record["returned"] == (rank == 0)
    assert ranks[0]["problems"] + ranks[1]["problems"] >= num_problems

    distributed = load_problems(output)
    single = infer_problems(make_model(), dataset, batch_size=batch_size, accelerator=Accelerator(cpu=True), progress=False)
    assert distributed["problem"] == single["problem"] == list(range(num_problems))
    assert distributed["labels"] == single["labels"]
    np.testing.assert_allclose(np.array(distributed["centroids"]), np.array(single["centroids"]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(distributed["inertia"], single["inertia"], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Bad datasets: refused before the model runs
# ---------------------------------------------------------------------------------------------------------------------


def _points(rows, value_type="float64"):
    features = datasets.Features({"points": datasets.List(datasets.List(datasets.Value(value_type)))})
    return datasets.Dataset.from_dict({"points": rows}, features=features)


GOOD = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    "dataset, centroids_column, words",
    [
        (datasets.Dataset.from_dict({"pts": [GOOD]}), None, ["no column 'points'", "available columns: pts"]),
        (_points([GOOD]), "init", ["no column 'init'", "available columns: points"]),
        (_points([]), None, ["empty"]),
        (_points([GOOD, GOOD[:2] + [[1.0]]]), None, ["Row 1", "different dimensions"]),
        (_points([GOOD, [[1.0, 2.0, 3.0]] * 4]), None, ["Row 1", "dimension 3", "point_dim=2"]),
        (_points([GOOD, GOOD, GOOD + [[float("nan"), 1.0]]]), None, ["Row 2", "NaN"]),
        (_points([GOOD + [[float("inf"), 1.0]]]), None, ["Row 0", "infinite"]),
        (_points([GOOD, GOOD + GOOD, GOOD[:2]]), None, ["Row 2", "2 points", "num_clusters=3"]),
        (_points([GOOD, None]), None, ["Row 1", "missing"]),
        (_points([GOOD, [[1.0, None]] * 3]), None, ["Row 1", "missing"]),
        (datasets.Dataset.from_dict({"points": ["a b c"]}), None, ["'points'", "list of 2-dimensional vectors"]),
        (datasets.Dataset.from_dict({"points": [[["a", "b"]] * 3]}), None, ["'points'", "type string"]),
        (datasets.Dataset.from_dict({"points": [GOOD, GOOD], "init": [GOOD, GOOD[:2]]}), "init", ["Row 1", "2 centroids", "num_clusters=3"]),
        (datasets.Dataset.from_dict({"points": [GOOD], "init": [[[0.0, 0.0, 0.0]] * 3]}), "init", ["Row 0", "'init'", "dimension 3"]),
        (datasets.Dataset.from_dict({"points": [GOOD], "init": [[[0.0, float("nan")]] * 3]}), "init", ["Row 0", "'init'", "NaN"]),
    ],
)
def test_bad_datasets_are_refused_before_the_model_runs(dataset, centroids_column, words):
    model = make_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError) as raised:
        infer_problems(model, dataset, centroids_column=centroids_column, accelerator=Accelerator(cpu=True), progress=False)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert calls == []
    with pytest.raises(ValueError):
        validate_problems(dataset, "points", centroids_column, model.config)


def test_integer_points_and_large_lists_are_accepted():
    model = make_model()
    rows = [[[0, 0], [4, 0], [0, 4], [5, 1]], [[1, 1], [2, 2], [9, 9]]]
    results = infer_problems(model, _points(rows, "int32"), accelerator=Accelerator(cpu=True), progress=False)
    for row, labels in zip(rows, results["labels"], strict=True):
        assert labels == model(torch.tensor(row, dtype=torch.float64)).labels[0].tolist()
    large = datasets.Dataset.from_dict(
        {"points": rows}, features=datasets.Features({"points": datasets.LargeList(datasets.List(datasets.Value("int64")))})
    )
    assert infer_problems(model, large, accelerator=Accelerator(cpu=True), progress=False)["labels"] == results["labels"]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        infer_problems(make_model(), _points([GOOD]), batch_size=0, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_results():
    dataset, _ = make_problems(20, seed=5)
    return infer_problems(make_model(), dataset, batch_size=8, accelerator=Accelerator(cpu=True), progress=False)


@pytest.mark.parametrize("name", ["results.parquet", "results"])
def test_results_round_trip_and_refuse_existing_paths(tmp_path, small_results, name):
    path = tmp_path / "out" / name
    write_problem_results(small_results, path)
    loaded = load_problems(path)
    assert loaded.to_dict() == small_results.to_dict()
    with pytest.raises(FileExistsError, match="exists"):
        write_problem_results(small_results, path)
    write_problem_results(small_results.select(range(5)), path, overwrite=True)
    assert load_problems(path)["problem"] == list(range(5))
    write_problem_results(None, tmp_path / "nothing")  # what the other processes get: nothing written
    assert not (tmp_path / "nothing").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path, small_results):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved dataset"):
        write_problem_results(small_results, tmp_path / "keep", overwrite=True)
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_load_problems_files_and_errors(tmp_path):
    rows = [{"points": GOOD, "name": "a"}, {"points": GOOD + [[2.0, 2.0]], "name": "b"}]
    lines = tmp_path / "problems.jsonl"
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_problems(lines)
    assert dataset["points"] == [row["points"] for row in rows]
    assert infer_problems(make_model(), dataset, accelerator=Accelerator(cpu=True), progress=False).num_rows == 2

    with pytest.raises(ValueError, match="does not exist"):
        load_problems(tmp_path / "absent.parquet")
    (tmp_path / "problems.csv").write_text("x\n1\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_problems(tmp_path / "problems.csv")
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ValueError, match="DatasetDict with splits train, test"):
        load_problems(tmp_path / "splits")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a dataset"):
        load_problems(tmp_path / "plain")
    with pytest.raises(ValueError, match="DatasetDict with splits train, test"):
        infer_problems(make_model(), datasets.load_from_disk(str(tmp_path / "splits")), progress=False)


def test_rows_are_named_in_the_selected_dataset():
    rows = [GOOD] * 20
    rows[12] = GOOD + [[float("nan"), 0.0]]
    dataset = _points(rows)
    config = make_model().config
    for subset, row in ((dataset.select(range(10, 20)), 2), (dataset.select([3, 12, 0]), 1)):
        with pytest.raises(ValueError, match=f"Row {row} of column 'points' has NaN"):
            validate_problems(subset, "points", None, config)
    validate_problems(dataset.select(range(13, 20)), "points", None, config)


def test_weights_column_equals_each_problem_repeated():
    """Integer weights per point give each problem the result of its points repeated (labels per point, centroids)."""
    dataset, points = make_problems(12, seed=3)
    rng = np.random.default_rng(4)
    weights = [rng.integers(1, 4, size=len(p)) for p in points]
    weighted = dataset.add_column("w", [w.astype(float).tolist() for w in weights])
    model = make_model()
    results = infer_problems(model, weighted, weights_column="w", batch_size=5, accelerator=Accelerator(cpu=True),
                             progress=False)
    for row, (p, w) in enumerate(zip(points, weights)):
        repeated = np.repeat(p, w, axis=0)
        initial = p[:K]  # the first k points (a repeat of the first point could take two slots)
        alone = model(torch.from_numpy(repeated), torch.from_numpy(initial))
        reference = lloyd(repeated, initial, T)
        np.testing.assert_allclose(np.array(results[row]["centroids"]), reference.centroids, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(np.repeat(results[row]["labels"], w), reference.labels)
        assert results[row]["inertia"] == pytest.approx(float(alone.inertia[0]), rel=1e-12)


@pytest.mark.parametrize(
    "weights, words",
    [([[1.0]], "weights for"), ([[-1.0]], "finite number >= 0"), ([[0.0]], "sum to 0"), (["x"], "list of numbers")],
)
def test_bad_weights_columns_are_refused(weights, words):
    dataset, points = make_problems(2, seed=5)
    rows = [[1.0] * len(p) for p in points]
    if weights == [[1.0]]:
        rows[1] = [1.0]
    elif weights == [[-1.0]]:
        rows[1][0] = -1.0
    elif weights == [[0.0]]:
        rows[1] = [0.0] * len(points[1])
    else:
        rows = ["x", "y"]
    with pytest.raises(ValueError, match=words):
        validate_problems(dataset.add_column("w", rows), "points", None, make_model().config, weights_column="w")
