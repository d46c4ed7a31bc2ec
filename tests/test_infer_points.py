"""Points mode: one problem whose points are the rows of a dataset, read in chunks, on one or two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from test_fast_path import require_compiled
from torch.utils._python_dispatch import TorchDispatchMode

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel, cpu_kernels
from kmeans_transformer import modeling_kmeans_transformer, reference
from kmeans_transformer.points import cluster_points
from kmeans_transformer.reference import lloyd
from kmeans_transformer.variants import VARIANTS, variants_with


K, D, T = 6, 3, 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Small chunks: one thread is faster than several on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(rng, n=3000, k=K, d=D):
    centres = rng.normal(scale=6.0, size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    return X


def make_model(k=K, d=D, T=T, **config_kwargs):
    config = KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=T, **config_kwargs)
    return KMeansTransformerModel(config).double().eval()


def write_parquet(path, X, row_group_size=700, **extra):
    columns = {f"x{i}": X[:, i] for i in range(X.shape[1])}
    pq.write_table(pa.table({**columns, **extra}), path, row_group_size=row_group_size)
    return path


def read_labels(directory):
    parts = sorted(Path(directory).glob("part-*.parquet"))
    table = pd.concat([pd.read_parquet(part) for part in parts]).sort_values("index")
    return table["index"].to_numpy(), table["label"].to_numpy()


def assert_matches_lloyd(result, labels_dir, X, initial, T=T):
    reference = lloyd(X, initial, T)
    np.testing.assert_allclose(result.centroids, reference.centroids, rtol=1e-12, atol=1e-12)
    index, labels = read_labels(labels_dir)
    np.testing.assert_array_equal(index, np.arange(len(X)))
    np.testing.assert_array_equal(labels, reference.labels)
    assert result.inertia == pytest.approx(reference.inertia, rel=1e-12)
    np.testing.assert_array_equal(result.cluster_sizes, np.bincount(reference.labels, minlength=len(initial)))
    assert result.num_points == len(X) and result.num_iterations == T


def _no_model_calls(model):
    def fail(*args, **kwargs):
        raise AssertionError("the model was called")

    model.forward = fail
    return model


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("variant", ["lloyd", "soft", "fuzzy", "gmm"])
def test_chunk_statistics_are_the_update_sums(variant, compiled, rng, monkeypatch):
    """
    A chunk's statistics (`model.statistics`) are the update's sums `Σ_i w_ij s_i x_i` and `Σ_i w_ij s_i` (gmm: and
    `Σ_i r_ij s_i |x_i|^2`, `Σ_i s_i`), in float64, with the compiled pass and with the PyTorch chunks; 4 < k points.
    """
    X, C, s = blobs(rng, n=4), blobs(rng, n=K), rng.uniform(0.0, 2.0, size=4)
    state = {"variances": rng.uniform(1.0, 3.0, K), "weights": rng.dirichlet(np.ones(K))}
    if variant == "lloyd":
        weights = np.eye(K)[reference.assign_labels(X, C)]
    elif variant == "soft":
        weights = reference.soft_responsibilities(reference.squared_distances(X, C), 1.0)
    elif variant == "fuzzy":
        weights = reference.fuzzy_memberships(X, C, 2.0) ** 2.0
    else:
        weights = reference.gaussian_responsibilities(X, C, state["variances"], state["weights"])
    if not compiled:
        monkeypatch.setattr(cpu_kernels, "_module", None)
        monkeypatch.setattr(cpu_kernels, "_failed", True)
    model = make_model(variant=variant)
    parameters = {"centroids": torch.from_numpy(C)[None]}
    if variant == "gmm":
        parameters.update({name: torch.from_numpy(value)[None] for name, value in state.items()})
    statistics = model.statistics(torch.from_numpy(X)[None], parameters, torch.from_numpy(s)[None])
    width = D + (3 if variant == "gmm" else 1)
    assert statistics.dtype == torch.float64 and statistics.shape == (1, K, width)
    expected = [(weights * s[:, None]).T @ X, (weights * s[:, None]).sum(axis=0)]
    if variant == "gmm":
        expected[1:1] = [(weights * s[:, None]).T @ (X * X).sum(axis=1)]
        expected.append(np.full(K, s.sum()))
    found = [statistics[0, :, :D], *statistics[0, :, D:].T]
    for value, sums in zip(found, expected, strict=True):
        np.testing.assert_allclose(value.numpy(), sums, rtol=1e-12, atol=1e-12)


def test_parquet_file_matches_lloyd(tmp_path, rng):
    X = blobs(rng)
    path = write_parquet(tmp_path / "points.parquet", X, label=np.array(["a"] * len(X)))  # a text column is skipped
    result = cluster_points(make_model(), path, chunk_size=256, progress=False, labels_output=tmp_path / "labels")
    assert_matches_lloyd(result, tmp_path / "labels", X, X[:K])


def test_streaming_dataset_matches_lloyd(tmp_path, rng):
    X = blobs(rng)
    path = write_parquet(tmp_path / "points.parquet", X)
    stream = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    result = cluster_points(make_model(), stream, chunk_size=300, progress=False, labels_output=tmp_path / "labels")
    assert_matches_lloyd(result, tmp_path / "labels", X, X[:K])


def test_saved_dataset_with_embedding_column_matches_lloyd(tmp_path, rng):
    X = blobs(rng, n=2000)
    dataset = datasets.Dataset.from_dict({"id": np.arange(len(X)), "embedding": X.tolist()})
    dataset.save_to_disk(str(tmp_path / "saved"))
    result = cluster_points(
        make_model(), tmp_path / "saved", columns=["embedding"], chunk_size=512, progress=False,
        labels_output=tmp_path / "labels",
    )
    assert_matches_lloyd(result, tmp_path / "labels", X, X[:K])


def test_chunks_smaller_than_k(tmp_path, rng):
    X = blobs(rng, n=200)
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(D)})
    result = cluster_points(make_model(), dataset, chunk_size=4, progress=False, labels_output=tmp_path / "labels")
    assert_matches_lloyd(result, tmp_path / "labels", X, X[:K])


@pytest.mark.parametrize("iterations", [1, T])
def test_empty_cluster_keeps_its_centroid(iterations, tmp_path, rng):
    X = blobs(rng, n=1000)
    X[1] = X[0]  # two equal initial centroids: the second one gets no point in the first iteration (lowest index)
    path = write_parquet(tmp_path / "points.parquet", X)
    result = cluster_points(
        make_model(T=iterations), path, chunk_size=128, progress=False, labels_output=tmp_path / "labels"
    )
    if iterations == 1:
        np.testing.assert_array_equal(result.centroids[1], X[1])
        assert not np.array_equal(result.centroids[0], X[0])
    assert_matches_lloyd(result, tmp_path / "labels", X, X[:K], T=iterations)


def test_fitted_centroids_are_the_start(tmp_path, rng):
    X = blobs(rng, n=1000)
    initial = np.concatenate([X[10 : 10 + K - 1], [[1e3, 1e3, 1e3]]])  # a far centroid: an empty cluster
    model = make_model(fitted_centroids=True)
    model.embeddings.fitted_centroids.data = torch.from_numpy(initial)
    path = write_parquet(tmp_path / "points.parquet", X)
    result = cluster_points(model, path, chunk_size=100, progress=False, labels_output=tmp_path / "labels")
    assert_matches_lloyd(result, tmp_path / "labels", X, initial)


@pytest.mark.parametrize("variant", ["soft", "spherical"])
def test_soft_and_spherical_match_one_forward(variant, rng):
    X = blobs(rng, n=600) + 0.5
    model = make_model(T=5, variant=variant)
    expected = model(torch.from_numpy(X))
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(D)})
    result = cluster_points(model, dataset, chunk_size=64, progress=False)
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=1e-10, atol=1e-12)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-10)
    np.testing.assert_array_equal(result.cluster_sizes, np.bincount(expected.labels[0].numpy(), minlength=K))


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_spherical_points_are_normalised_once_when_read(cache, rng, monkeypatch):
    """
    Points mode on a unit-norm variant normalises each point once, as it is read (the scratch file holds the
    normalised points), not once per pass: the rows given to `unit_normalize` beyond the centroids' are the `n`
    points of the first pass (with `cache="none"`, of every pass: each decodes anew), and the result is the float32
    in-memory forward pass's (labels and sizes exactly, centroids within 1e-6).
    """
    from kmeans_transformer import variants

    X = (blobs(rng, n=600) + 0.5).astype(np.float32)
    model = make_model(T=5, variant="spherical").float()
    expected = model(torch.from_numpy(X))
    normalised = []  # the rows of each call on more vectors than the centroids
    unit_normalize = variants.unit_normalize
    monkeypatch.setattr(
        variants, "unit_normalize",
        lambda vectors: (normalised.append(vectors.shape[-2]) if vectors.shape[-2] > K else None) or unit_normalize(vectors),
    )
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(D)})
    result = cluster_points(model, dataset, chunk_size=100, progress=False, cache=cache)
    passes = 1 if cache == "disk" else 5 + 1  # 5 iterations and the final pass (the validating read does not normalise)
    assert sum(normalised) == 600 * passes
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.cluster_sizes, np.bincount(expected.labels[0].numpy(), minlength=K))


def test_spherical_zero_point_is_refused_before_any_model_call(rng):
    X = blobs(rng, n=300)
    X[250] = 0.0
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(D)})
    with pytest.raises(ValueError, match="non-zero points, but row 250"):
        cluster_points(_no_model_calls(make_model(variant="spherical")), dataset, chunk_size=64, progress=False)


def test_other_variants_are_refused(rng):
    dataset = datasets.Dataset.from_dict({f"x{i}": blobs(rng, n=50)[:, i] for i in range(D)})
    with pytest.raises(ValueError, match="lloyd, soft, spherical.*'kmedoids'"):
        cluster_points(make_model(variant="kmedoids"), dataset, progress=False)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing column", "has no column 'x9'; available columns: x0, x1, x2, name"),
        ("text column", "Column 'name' of .* is not numeric"),
        ("wrong dimension", "dimension 2 .* point_dim=3"),
        ("empty", "has no rows"),
        ("too few points", "num_clusters=6 is larger than the number of points \\(4\\)"),
        ("nan", "NaN or infinite value in row 1234 \\(chunk of rows 1200-1299\\)"),
        ("missing value", "missing value in row 777 \\(chunk of rows 700-799\\)"),
        ("ragged embedding", "list of length 2 in row 5 .* every row needs 3 entries"),
    ],
)
def test_bad_datasets_fail_before_any_model_call(case, message, tmp_path, rng):
    X = blobs(rng, n=2000)
    columns, data = None, {f"x{i}": X[:, i] for i in range(D)}
    data["name"] = ["p"] * len(X)
    if case == "missing column":
        columns = ["x0", "x1", "x9"]
    elif case == "text column":
        columns = ["x0", "x1", "name"]
    elif case == "wrong dimension":
        columns = ["x0", "x1"]
    elif case == "empty":
        data = {name: values[:0] for name, values in data.items()}
    elif case == "too few points":
        data = {name: values[:4] for name, values in data.items()}
    elif case == "nan":
        data["x2"] = data["x2"].copy()
        data["x2"][1234] = np.nan
    elif case == "missing value":
        data["x1"] = [None if i == 777 else value for i, value in enumerate(data["x1"])]
    elif case == "ragged embedding":
        embedding = X.tolist()
        embedding[5] = embedding[5][:2]
        data, columns = {"embedding": embedding}, ["embedding"]
    path = tmp_path / "points.parquet"
    pq.write_table(pa.table(data), path)
    with pytest.raises(ValueError, match=message):
        cluster_points(_no_model_calls(make_model()), path, columns=columns, chunk_size=100, progress=False)


def test_two_gloo_processes_match_one(tmp_path, rng):
    X = blobs(rng, n=2001)
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=333)
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).parent / "scripts" / "infer_points_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(worker), str(path), str(tmp_path), str(K), str(T), "97"],
        check=True, timeout=180, env=env, capture_output=True,
    )
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(record["num_processes"] == 2 and "MULTI_CPU" in record["distributed_type"] for record in records)
    single = cluster_points(make_model(), path, chunk_size=97, progress=False, labels_output=tmp_path / "labels_single")
    _, single_labels = read_labels(tmp_path / "labels_single")
    for name in ("path", "stream"):
        assert sorted(p.name for p in (tmp_path / f"labels_{name}").iterdir()) == [
            "part-00000-of-00002.parquet", "part-00001-of-00002.parquet"
        ]
        result = np.load(tmp_path / f"result_{name}.npz")
        np.testing.assert_allclose(result["centroids"], single.centroids, rtol=1e-12, atol=1e-12)
        assert float(result["inertia"]) == pytest.approx(single.inertia, rel=1e-12)
        np.testing.assert_array_equal(result["cluster_sizes"], single.cluster_sizes)
        assert int(result["num_points"]) == len(X)
        index, labels = read_labels(tmp_path / f"labels_{name}")
        np.testing.assert_array_equal(index, np.arange(len(X)))
        np.testing.assert_array_equal(labels, single_labels)
    assert_matches_lloyd(single, tmp_path / "labels_single", X, X[:K])


# ---------------------------------------------------------------------------------------------------------------------
# Variants with weighted updates and carried state: the same statistics path, against the NumPy references
# ---------------------------------------------------------------------------------------------------------------------


def total_variance_start(X, k=K):
    """The model's default gmm start for one problem, computed here in NumPy: each coordinate's variance, 1 / k."""
    spread = ((X - X.mean(axis=0)) ** 2).sum(axis=1).mean() / X.shape[1]
    return {"variances": np.full(k, spread), "weights": np.full(k, 1.0 / k)}


def assert_close_to(result, expected, labels_dir, X):
    np.testing.assert_allclose(result.centroids, expected.centroids, rtol=1e-8, atol=1e-12)
    index, labels = read_labels(labels_dir)
    np.testing.assert_array_equal(index, np.arange(len(X)))
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_array_equal(result.cluster_sizes, np.bincount(expected.labels, minlength=K))
    assert result.inertia == pytest.approx(expected.inertia, rel=1e-8)
    assert result.num_points == len(X)


@pytest.mark.parametrize("variant", ["gmm", "fuzzy"])
def test_gmm_and_fuzzy_in_chunks_match_their_references(variant, tmp_path, rng):
    X = blobs(rng, n=1000)
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(D)})
    model = make_model(variant=variant)
    if variant == "gmm":
        state = total_variance_start(X)
        variances, weights, reg_covar = state["variances"], state["weights"], model.config.reg_covar
        expected = reference.gaussian_mixture_em(X, X[:K], variances, weights, T, reg_covar)
    else:
        state = None
        expected = reference.fuzzy_cmeans(X, X[:K], T, model.config.fuzzifier)
    assert not np.allclose(expected.centroids, X[:K])  # the iterations moved
    result = cluster_points(
        model, dataset, chunk_size=96, initial_state=state, progress=False, labels_output=tmp_path / "labels"
    )  # 96 does not divide 1000: a last chunk of 40 rows
    assert_close_to(result, expected, tmp_path / "labels", X)
    if variant == "gmm":
        assert sorted(result.state) == ["variances", "weights"]
        np.testing.assert_allclose(result.state["variances"], expected.variances, rtol=1e-8)
        np.testing.assert_allclose(result.state["weights"], expected.weights, rtol=1e-8)
    else:
        assert result.state == {}


def test_gmm_starts_from_the_stored_fitted_parameters(tmp_path, rng):
    X = blobs(rng, n=700)
    means, variances, weights = X[100 : 100 + K], rng.uniform(1.0, 3.0, K), rng.dirichlet(np.ones(K))
    model = make_model(T=4, variant="gmm", reg_covar=1e-6, fitted_centroids=True)
    model.set_fitted_parameters(
        torch.from_numpy(means), variances=torch.from_numpy(variances), weights=torch.from_numpy(weights)
    )
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=250)
    # chunks of 5 < k rows: completed with the centroids for the model, whose rows are dropped
    result = cluster_points(model, path, chunk_size=5, progress=False, labels_output=tmp_path / "labels")
    expected = reference.gaussian_mixture_em(X, means, variances, weights, 4, 1e-6)
    assert_close_to(result, expected, tmp_path / "labels", X)
    np.testing.assert_allclose(result.state["variances"], expected.variances, rtol=1e-8)


@pytest.mark.parametrize(
    "state, message",
    [
        (None, "cannot compute the model's default 'variances'.*initial_state"),
        ({"variances": np.ones(K), "weights": None}, "default 'weights'"),
        (
            {"variances": np.ones(K), "weights": np.full(K, 1 / K), "scale": np.ones(K)},
            "'scale', but variant 'gmm' carries variances, weights",
        ),
        ({"variances": -np.ones(K), "weights": np.full(K, 1 / K)}, "variances` must be > 0"),
    ],
)
def test_carried_state_must_be_given_and_valid(state, message, rng):
    dataset = datasets.Dataset.from_dict({f"x{i}": blobs(rng, n=50)[:, i] for i in range(D)})
    with pytest.raises(ValueError, match=message):
        cluster_points(_no_model_calls(make_model(variant="gmm")), dataset, initial_state=state, progress=False)


def test_a_fitted_estimator_assigns_to_its_centroids_with_zero_iterations(tmp_path, rng):
    """A saved `KMeans` (fitted centroids as trainable weights, 0 iterations by default) runs in points mode."""
    from kmeans_transformer import KMeans, KMeansTransformerModel

    points = rng.normal(size=(300, 2)) + rng.normal(scale=6, size=(3, 2)).repeat(100, axis=0)
    KMeans(n_clusters=3, random_state=0).fit(points).save_pretrained(tmp_path / "fitted")
    fitted = KMeans.from_pretrained(tmp_path / "fitted").cluster_centers_
    path = tmp_path / "points.parquet"
    pd.DataFrame(points, columns=["a", "b"]).to_parquet(path)
    model = KMeansTransformerModel.from_pretrained(tmp_path / "fitted")
    result = cluster_points(model, path, chunk_size=64, progress=False)
    assert result.num_iterations == 0
    np.testing.assert_array_equal(result.centroids, fitted)
    nearest = ((points[:, None, :] - fitted[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(result.inertia, nearest.sum(), rtol=1e-12)


@pytest.mark.parametrize("variant", ["lloyd", "soft", "fuzzy"])
def test_weight_column_matches_one_weighted_forward(variant, tmp_path, rng):
    """Weighted points mode in chunks equals the model's weighted forward pass (the weights are no feature)."""
    X = blobs(rng, n=800)
    weights = rng.uniform(0.0, 3.0, size=len(X))
    path = write_parquet(tmp_path / "points.parquet", X, w=weights)
    model = make_model(T=5, variant=variant)
    expected = model(torch.from_numpy(X), sample_weight=torch.from_numpy(weights))
    result = cluster_points(model, path, chunk_size=97, progress=False, weight_column="w")
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=1e-10, atol=1e-12)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-10)


@pytest.mark.parametrize(
    "weights, message", [(-1.0, "finite numbers >= 0"), (float("nan"), "finite numbers >= 0"), ("missing", "missing")]
)
def test_bad_weight_column_fails_before_any_model_call(weights, message, tmp_path, rng):
    X = blobs(rng, n=300)
    if weights == "missing":
        path = write_parquet(tmp_path / "points.parquet", X)
    else:
        column = np.ones(len(X))
        column[17] = weights
        path = write_parquet(tmp_path / "points.parquet", X, w=column)
    with pytest.raises(ValueError, match=message if message != "missing" else "'w'"):
        cluster_points(_no_model_calls(make_model()), path, chunk_size=100, progress=False, weight_column="w")


# ---------------------------------------------------------------------------------------------------------------------
# Points mode equals the in-memory model, for every variant it accepts
# ---------------------------------------------------------------------------------------------------------------------


def _starting_state(variant, rng):
    """Explicit carried state (points mode has no default computed over all points), given alike to both runs."""
    if not KMeansTransformerConfig(num_clusters=K, point_dim=D, variant=variant).variant_spec.state_names:
        return {}
    return {"variances": rng.uniform(1.0, 3.0, K), "weights": rng.dirichlet(np.ones(K))}


# every variant points mode runs, each with its defaults, and trimmed also by a global fraction (its other rule)
POINTS_CASES = [(variant, {}) for variant in variants_with("points_mode")] + [
    ("trimmed", {"trim_quantile": None, "trim_fraction": 0.07})
]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("variant, parameters", POINTS_CASES, ids=lambda case: str(case))
def test_points_mode_in_chunks_equals_the_in_memory_model(variant, parameters, weighted, tmp_path, rng):
    """
    Several chunks (the last one short, some shorter than k) give the one-call model's labels and, in float64, its
    centroids, inertia and carried state to 1e-12; the variants whose compact engine carries labels never build the tokens (no `forward`).
    """
    X = blobs(rng, n=1000) + 0.5
    weights = rng.uniform(0.0, 3.0, size=len(X)) if weighted else None
    state = _starting_state(variant, rng)
    model = make_model(T=6, variant=variant, **parameters)
    expected = model(
        torch.from_numpy(X), sample_weight=None if weights is None else torch.from_numpy(weights),
        **{name: torch.from_numpy(value) for name, value in state.items()},
    )
    start = model.config.variant_spec.seen_points(torch.from_numpy(X[:K]))
    assert not np.allclose(expected.centroids[0].numpy(), start)  # the iterations moved
    if model.config.variant_spec.compact and model._compact_by_labels():
        _no_model_calls(model)
    extra = {} if weights is None else {"w": weights}
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=300, **extra)
    result = cluster_points(
        model, path, chunk_size=128, initial_state=state or None, progress=False, labels_output=tmp_path / "labels",
        weight_column=None if weights is None else "w",
    )
    index, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(index, np.arange(len(X)))
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=0, atol=1e-12)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-12)
    kept = expected.labels[0].numpy()
    if model.config.variant_spec.reports_outliers:  # the trim dropped points (-1), and the same ones
        assert 0 < (kept < 0).sum() < len(X) // 5
        kept = kept[kept >= 0]
    np.testing.assert_array_equal(result.cluster_sizes, np.bincount(kept, minlength=K))
    for name in state:
        np.testing.assert_allclose(result.state[name], expected[name][0].numpy(), rtol=1e-12, atol=1e-15)


# the variants points mode runs whose assignment is weights, not labels (soft, gmm, fuzzy)
WEIGHTED = [variant for variant in variants_with("points_mode") if VARIANTS[variant].update.assignment_kind != "labels"]


@pytest.mark.filterwarnings("ignore:The .* of data this large:RuntimeWarning")
@pytest.mark.parametrize("scale", [1.0, 2.0**-500], ids=["plain", "beyond-the-safe-range"])
@pytest.mark.parametrize("variant", WEIGHTED)
def test_weighted_chunks_never_hold_a_chunk_by_k_tensor(variant, scale, rng):
    """
    Each chunk of a weighted variant goes through the compiled pass (`model.statistics`; its labels in the final
    pass too): the largest tensor points mode makes is a chunk's points with two more columns, never the `chunk × k`
    weights; also for data outside the safe range, which the whole dataset's power of two brings into it.
    """
    require_compiled()
    if scale != 1 and variant not in RESCALED:
        pytest.skip("refused outside the safe range")
    n, d, k, chunk = 5000, 4, 256, 2048
    X = blobs(rng, n=n, k=8, d=d) * scale
    dataset = datasets.Dataset.from_dict({f"x{i}": X[:, i] for i in range(d)})
    model = make_model(k=k, d=d, T=2, variant=variant)
    state = {"variances": np.full(k, scale**2), "weights": np.full(k, 1.0 / k)} if variant == "gmm" else None
    largest = []

    class TensorSizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            tensors = result if isinstance(result, (tuple, list)) else [result]
            largest.extend(t.numel() for t in tensors if isinstance(t, torch.Tensor))
            return result

    assert model.engine() == "compact"  # checks the weights once (tensors of hidden_size ** 2), outside the count
    with TensorSizes():
        result = cluster_points(model, dataset, chunk_size=chunk, initial_state=state, progress=False)
    assert result.num_iterations == 2 and result.cluster_sizes.sum() == n
    assert max(largest) <= chunk * (d + 2)  # never chunk * k = 524,288


@pytest.mark.parametrize("variant", WEIGHTED)
@pytest.mark.parametrize("setting", ["pytorch", "float32"])
def test_weighted_points_mode_equals_the_in_memory_model_off_the_float64_compiled_pass(variant, setting, tmp_path, rng,
                                                                                      monkeypatch):
    """
    Weighted points from Parquet in chunks, off the float64 compiled pass: without the compiled loops (the layer's
    PyTorch chunks of weights; the forward pass computed before they are turned off) the forward's results to 1e-12;
    float32 columns into a float32 model (float32 chunks, no float64 copy) its labels, and its centroids, inertia and
    state to float32 rounding (the forward holds its parameters in float32).
    """
    float32 = setting == "float32"
    X = blobs(rng, n=700) + 0.5
    X = X.astype(np.float32) if float32 else X
    weights = rng.uniform(0.0, 3.0, size=len(X))
    state = _starting_state(variant, rng)
    model = make_model(T=5, variant=variant, score_chunk_size=50 * K)  # chunks of 50 points within the 128 rows
    dtype = torch.float32 if float32 else torch.float64
    model = model.to(dtype)
    expected = model(
        torch.from_numpy(X), sample_weight=torch.from_numpy(weights).to(dtype),
        **{name: torch.from_numpy(value).to(dtype) for name, value in state.items()},
    )
    if not float32:
        monkeypatch.setattr(cpu_kernels, "_module", None)
        monkeypatch.setattr(cpu_kernels, "_failed", True)
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=300, w=weights)
    result = cluster_points(
        model, path, chunk_size=128, initial_state=state or None, progress=False, labels_output=tmp_path / "labels",
        weight_column="w",
    )
    _, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    tolerance = 1e-5 if float32 else 1e-12
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=0, atol=tolerance)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=tolerance)
    for name in state:
        np.testing.assert_allclose(result.state[name], expected[name][0].numpy(), rtol=tolerance, atol=1e-15)


def _rescalable(variant) -> bool:
    """Whether the model divides data outside the safe range by a power of two for `variant` at its defaults."""
    config = make_model(variant=variant).config
    spec = config.variant_spec
    return spec.scaling != "invariant" and spec.scale_dependence(config, hardmax=True) is None


RESCALED = [variant for variant in variants_with("points_mode") if _rescalable(variant)]
REFUSED = [variant for variant in variants_with("points_mode") if VARIANTS[variant].scaling != "invariant"
           and variant not in RESCALED]


# huge and tiny scales; gmm's variances at the huge one (2**1080) are past float64's largest number: tiny only
BEYOND = [(variant, scale) for variant in RESCALED for scale in (2.0**540, 2.0**-500)
          if scale < 1 or not VARIANTS[variant].state]


@pytest.mark.filterwarnings("ignore:The .* of data this large:RuntimeWarning")
@pytest.mark.parametrize("variant, scale", BEYOND, ids=lambda value: value if isinstance(value, str) else f"{value:.0e}")
def test_points_mode_on_data_beyond_the_safe_range_is_the_rescaled_model(variant, scale, tmp_path, rng):
    """
    Data whose squared distances overflow (2**540 ≈ 3.6e162) or underflow (2**-500 ≈ 3e-151) float64: points mode
    divides the whole dataset by the power of two that `forward` takes for the same points in one call, so it gives
    the in-memory model's labels, and its centroids, carried state and inertia in the data's units (inf where the
    model's are: a square past float64's largest number).
    """
    X = blobs(rng, n=500) + 0.5
    state = _starting_state(variant, rng)
    powers = {carried.name: carried.scale_power for carried in VARIANTS[variant].state}
    state = {name: value * scale ** powers[name] for name, value in state.items()}
    model = make_model(T=4, variant=variant)
    expected = model(torch.from_numpy(X * scale), **{name: torch.from_numpy(value) for name, value in state.items()})
    path = write_parquet(tmp_path / "points.parquet", X * scale)
    result = cluster_points(model, path, chunk_size=128, progress=False, labels_output=tmp_path / "labels",
                            initial_state=state or None)
    _, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    np.testing.assert_allclose(result.centroids / scale, expected.centroids[0].numpy() / scale, rtol=0, atol=1e-12)
    for name in state:
        np.testing.assert_allclose(result.state[name], expected[name][0].numpy(), rtol=1e-12)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-12)
    if scale < 1:  # everything finite, and the points far from their first centroids
        assert 0 < result.inertia < float(((X - X[:K].mean(axis=0)) ** 2).sum()) * scale**2


@pytest.mark.parametrize("variant", REFUSED)
def test_points_mode_refuses_data_beyond_the_safe_range_for_a_scale_dependent_variant(variant, tmp_path, rng):
    """soft and sparse measure their temperature in units of the data: the whole dataset is refused up front."""
    path = write_parquet(tmp_path / "points.parquet", (blobs(rng, n=300) + 0.5) * 2.0**540)
    model = make_model(T=2, variant=variant)
    with pytest.raises(ValueError, match="outside .* cannot rescale it exactly"):
        cluster_points(model, path, chunk_size=128, progress=False, initial_state=_starting_state(variant, rng) or None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_lloyd_points_mode_is_bit_for_bit_on_integer_data(dtype, weighted, tmp_path, rng):
    """
    On integer points (integer weights) every sum is exact in float64, so chunked sums equal the one-call sums bit for
    bit: the centroids (rounded once to the model's dtype) and the labels are identical, with ties and float32 data.
    """
    X = rng.integers(-6, 7, size=(1500, D)).astype(np.float64)
    weights = rng.integers(0, 4, size=len(X)).astype(np.float64) if weighted else None
    model = make_model(T=5).to(dtype)
    expected = model(torch.from_numpy(X), sample_weight=None if weights is None else torch.from_numpy(weights))
    columns = {f"x{i}": X[:, i].astype(torch.empty(0, dtype=dtype).numpy().dtype) for i in range(D)}
    if weights is not None:
        columns["w"] = weights
    pq.write_table(pa.table(columns), tmp_path / "points.parquet", row_group_size=400)
    result = cluster_points(
        _no_model_calls(model), tmp_path / "points.parquet", chunk_size=211, progress=False,
        labels_output=tmp_path / "labels", weight_column=None if weights is None else "w",
    )
    _, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    assert torch.equal(torch.from_numpy(result.centroids).to(dtype), expected.centroids[0])
    if dtype == torch.float64:  # and both are plain weighted Lloyd's algorithm
        unit = np.ones(len(X)) if weights is None else weights
        reference_labels, reference_centroids = weighted_lloyd(X, X[:K], 5, unit)
        np.testing.assert_array_equal(labels, reference_labels)
        np.testing.assert_array_equal(result.centroids, reference_centroids)


def weighted_lloyd(X, centroids, iterations, weights):
    """Weighted Lloyd's algorithm in NumPy (lowest index on ties; an empty cluster keeps its centroid)."""
    centroids = centroids.copy()
    for _ in range(iterations):
        labels = ((X[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(centroids)):
            members = labels == j
            if weights[members].sum() > 0:
                centroids[j] = (weights[members, None] * X[members]).sum(0) / weights[members].sum()
    return ((X[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1), centroids


def test_reading_ahead_keeps_order_raises_the_readers_error_and_stops_early():
    import threading

    from kmeans_transformer.points import _read_ahead

    assert list(_read_ahead(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("row 7 is bad")

    items = _read_ahead(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="row 7 is bad"):
        next(items)
    reading = _read_ahead(iter(range(10**6)))
    assert next(reading) == 0
    reading.close()  # leaving the loop early: the reader thread ends (within its 0.05 s poll)
    for thread in [thread for thread in threading.enumerate() if thread.name == "points-reader"]:
        thread.join(timeout=10)
        assert not thread.is_alive()


# ---------------------------------------------------------------------------------------------------------------------
# The scratch file: the dataset is decoded once, later passes read it back, and it is removed at the end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_scratch_file_decodes_once_and_equals_the_in_memory_model(cache, tmp_path, rng, monkeypatch):
    from kmeans_transformer import points

    X = blobs(rng, n=900)
    weights = rng.uniform(0.0, 2.0, size=len(X))
    model = make_model(T=4)
    expected = model(torch.from_numpy(X), sample_weight=torch.from_numpy(weights))
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=250, w=weights)
    scratch, decoded, seen = tmp_path / "scratch", [], []
    scratch.mkdir()
    checked_values = points._checked_values

    def counting(*args):
        decoded.append(1)
        seen.extend(entry.name for entry in scratch.iterdir())
        return checked_values(*args)

    monkeypatch.setattr(points, "_checked_values", counting)
    result = cluster_points(
        _no_model_calls(model), path, chunk_size=128, progress=False, labels_output=tmp_path / "labels",
        weight_column="w", cache=cache, cache_directory=scratch,
    )
    chunks = -(-len(X) // 128)
    assert len(decoded) == chunks * (1 if cache == "disk" else 4 + 1)  # 4 iterations and the final pass
    assert bool(seen) == (cache == "disk") and list(scratch.iterdir()) == []  # made in `scratch`, then removed
    _, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=0, atol=1e-12)
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-12)


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_scratch_file_is_removed_on_an_error_or_interrupt(error, tmp_path, rng, monkeypatch):
    from kmeans_transformer import points

    X = blobs(rng, n=500)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    iteration, calls = points._iteration, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:  # the scratch file is complete: the second pass reads it
            assert len(list(scratch.iterdir())) == 1
            raise error("stop")
        return iteration(*args)

    monkeypatch.setattr(points, "_iteration", interrupted)
    with pytest.raises(error, match="stop"):
        cluster_points(make_model(), write_parquet(tmp_path / "points.parquet", X), chunk_size=100, progress=False,
                       cache_directory=scratch)
    assert list(scratch.iterdir()) == []


def test_unknown_cache_is_refused(rng):
    dataset = datasets.Dataset.from_dict({f"x{i}": blobs(rng, n=50)[:, i] for i in range(D)})
    with pytest.raises(ValueError, match="`cache` must be one of 'disk', 'none', got 'memory'"):
        cluster_points(make_model(), dataset, cache="memory", progress=False)


@pytest.mark.slow  # about 45 s: one launch, eight runs on each of two processes
def test_every_variant_on_two_gloo_processes_equals_the_in_memory_model(tmp_path, rng):
    """
    Two processes (one launch), each variant points mode runs unweighted from the path (contiguous blocks) and
    weighted from a stream (every other row): labels identical to the one-call model's, float64 results to 1e-12.
    """
    X = blobs(rng, n=1201) + 0.5
    weights = rng.uniform(0.0, 3.0, size=len(X))
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=250, w=weights)
    cases, expected = [], {}
    for number, ((variant, parameters), weighted) in enumerate(
        [(case, weighted) for case in POINTS_CASES for weighted in (False, True)]
    ):
        name, state = f"case{number}", _starting_state(variant, rng)
        model = make_model(T=5, variant=variant, **parameters)
        expected[name] = model(
            torch.from_numpy(X), sample_weight=torch.from_numpy(weights) if weighted else None,
            **{key: torch.from_numpy(value) for key, value in state.items()},
        )
        cases.append({
            "name": name, "variant": variant, "parameters": parameters, "weighted": weighted, "k": K, "T": 5,
            "state": {key: value.tolist() for key, value in state.items()}, "chunk_size": 113,
            "source": "stream" if weighted else "path",
        })
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).parent / "scripts" / "points_variants_worker.py"
    subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(worker), str(path), str(tmp_path),
         str(tmp_path / "cases.json")],
        check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
    )
    for case in cases:
        name, output = case["name"], expected[case["name"]]
        result = np.load(tmp_path / f"{name}.npz")
        index, labels = read_labels(tmp_path / f"labels_{name}")
        np.testing.assert_array_equal(index, np.arange(len(X)))
        np.testing.assert_array_equal(labels, output.labels[0].numpy(), err_msg=str(case))
        np.testing.assert_allclose(result["centroids"], output.centroids[0].numpy(), rtol=0, atol=1e-12)
        assert float(result["inertia"]) == pytest.approx(float(output.inertia[0]), rel=1e-12)
        for key in case["state"]:
            np.testing.assert_allclose(result[f"state_{key}"], output[key][0].numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("parameters", [{}, {"trim_quantile": None, "trim_fraction": 0.15}], ids=["quantile", "fraction"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_trimmed_on_integer_data_with_ties_is_the_in_memory_trim(parameters, weighted, tmp_path, rng):
    """
    Integer points (many equal distances, so the tie rule decides: the higher row index is trimmed first) and integer
    weights: every sum is exact, so the trim across chunks is the gate's on all points, and the centroids are equal.
    """
    X = rng.integers(-3, 4, size=(800, D)).astype(np.float64)
    weights = rng.integers(0, 4, size=len(X)).astype(np.float64) if weighted else None
    model = make_model(T=4, variant="trimmed", **parameters)
    expected = model(torch.from_numpy(X), sample_weight=None if weights is None else torch.from_numpy(weights))
    extra = {} if weights is None else {"w": weights}
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=300, **extra)
    result = cluster_points(
        _no_model_calls(model), path, chunk_size=97, progress=False, labels_output=tmp_path / "labels",
        weight_column=None if weights is None else "w",
    )
    _, labels = read_labels(tmp_path / "labels")
    expected_labels = expected.labels[0].numpy()
    assert (expected_labels < 0).any()
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(result.centroids, expected.centroids[0].numpy())


def test_trimmed_needs_the_compact_engine(rng):
    dataset = datasets.Dataset.from_dict({f"x{i}": blobs(rng, n=50)[:, i] for i in range(D)})
    model = make_model(variant="trimmed")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # an edited model runs the tokens
    with pytest.raises(ValueError, match="which this model does not run"):
        cluster_points(_no_model_calls(model), dataset, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Sparse: each cluster's sparsemax threshold found across chunks and processes
# ---------------------------------------------------------------------------------------------------------------------

SPARSE_K, SPARSE_D, SPARSE_GAMMA = 4, 4, 2.0  # γ / sqrt(d) = 1: the scores are -|x - c|^2, exact on halves


def sparse_problem(rng, weighted):
    """
    Points, integer weights (or None) and initial centroids of `k = 4` clusters far apart in `d = 4`: cluster 0 a
    tight blob (its sparsemax support: every member); cluster 1 a point at its centroid, the others at squared
    distance >= 1.44 (support: that point alone); cluster 2 two points at its centroid, four tied at squared
    distance 0.25 (in the support) and four tied at 1 (out); cluster 3 far from every point (empty: keeps its
    centroid). The rows are shuffled, so every cluster spans chunks and processes.
    """
    axes = np.eye(SPARSE_D)
    blob = rng.normal(scale=0.01, size=(40, SPARSE_D))
    directions = rng.normal(size=(12, SPARSE_D))
    spread = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(1.2, 3.0, size=(12, 1))
    centre_b, centre_c = 100 * axes[0], -100 * axes[0]
    near, far = np.concatenate([axes[:2], -axes[:2]]) * 0.5, np.concatenate([axes[2:], -axes[2:]])
    groups = [blob, centre_b + np.concatenate([[np.zeros(SPARSE_D)], spread]),
              centre_c + np.concatenate([np.zeros((2, SPARSE_D)), near, far, 2 * far[:2] + 0.3])]
    X = np.concatenate(groups)
    weights = None
    if weighted:  # the single support point and the two centre points of cluster 2 weigh 1
        weights = rng.integers(0, 4, size=len(X)).astype(np.float64)
        weights[[40, 53, 54]] = 1.0
    initial = np.stack([blob.mean(axis=0) + 0.003, centre_b, centre_c, 1000 * axes[1]])
    order = rng.permutation(len(X))
    return X[order], None if weights is None else weights[order], initial


def repeated(X, weights):
    """The points, each repeated its (integer) weight times: a weighted problem for the unweighted reference."""
    return X if weights is None else np.repeat(X, weights.astype(np.int64), axis=0)


def sparse_model(initial, T=5):
    model = make_model(k=SPARSE_K, d=SPARSE_D, T=T, variant="sparse", inverse_temperature=SPARSE_GAMMA,
                       fitted_centroids=True)
    model.embeddings.fitted_centroids.data = torch.from_numpy(initial)
    return model


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sparse_problem_has_every_kind_of_support(weighted, rng):
    """The first iteration's supports (independent reference `sparsemax`) are those `sparse_problem` describes."""
    X, weights, initial = sparse_problem(rng, weighted)
    points = repeated(X, weights)
    labels = reference.assign_labels(points, initial)
    assert (labels == 3).sum() == 0
    supports = []
    for j in range(SPARSE_K - 1):
        distances = ((points[labels == j] - initial[j]) ** 2).sum(axis=1)
        p = reference.sparsemax(-SPARSE_GAMMA * distances / np.sqrt(SPARSE_D))
        assert np.isclose(p.sum(), 1.0)
        assert all(len(np.unique(p[distances == value])) == 1 for value in distances)  # ties: equal weights
        supports.append(distances[p > 0])
    assert len(supports[0]) == (labels == 0).sum()  # every member of the blob
    np.testing.assert_array_equal(supports[1], [0.0])  # the point at the centroid alone
    np.testing.assert_array_equal(np.unique(supports[2]), [0.0, 0.25])  # the centre and the near tie, not the far one


@pytest.mark.parametrize("chunk_size", [7, 1000])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_sparse_points_mode_equals_the_model_and_the_reference(weighted, chunk_size, tmp_path, rng):
    """
    Points mode (several chunks, or one) gives the one-call model's labels, centroids and inertia, and the
    independent reference `sparse_kmeans` on the points repeated by their weights, to 1e-12 in float64, whatever
    the kinds of support; the empty cluster keeps its centroid.
    """
    X, weights, initial = sparse_problem(rng, weighted)
    model = sparse_model(initial)
    expected = model(torch.from_numpy(X), sample_weight=None if weights is None else torch.from_numpy(weights))
    truth = reference.sparse_kmeans(repeated(X, weights), initial, 5, SPARSE_GAMMA)
    extra = {} if weights is None else {"w": weights}
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=30, **extra)
    result = cluster_points(
        _no_model_calls(model), path, chunk_size=chunk_size, progress=False, labels_output=tmp_path / "labels",
        weight_column=None if weights is None else "w",
    )
    _, labels = read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(labels, expected.labels[0].numpy())
    np.testing.assert_array_equal(labels, reference.assign_labels(X, truth.centroids))
    np.testing.assert_allclose(result.centroids, expected.centroids[0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.centroids, truth.centroids, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.centroids[3], initial[3])
    assert result.inertia == pytest.approx(float(expected.inertia[0]), rel=1e-12)


@pytest.mark.slow  # about 30 s: one launch of two processes
def test_sparse_on_two_gloo_processes_equals_the_model_and_the_reference(tmp_path, rng):
    """`sparse_problem` on two processes, unweighted from the path and weighted from a stream: as on one."""
    X, weights, initial = sparse_problem(rng, weighted=True)
    path = write_parquet(tmp_path / "points.parquet", X, row_group_size=30, w=weights)
    cases = [
        {"name": name, "variant": "sparse", "parameters": {"inverse_temperature": SPARSE_GAMMA}, "state": {},
         "weighted": name == "weighted", "source": "stream" if name == "weighted" else "path", "k": SPARSE_K, "T": 5,
         "chunk_size": 6, "centroids": initial.tolist()}
        for name in ("unweighted", "weighted")
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).parent / "scripts" / "points_variants_worker.py"
    subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(worker), str(path), str(tmp_path),
         str(tmp_path / "cases.json")],
        check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
    )
    model = sparse_model(initial)
    for case in cases:
        sample_weight = weights if case["weighted"] else None
        expected = model(torch.from_numpy(X), sample_weight=None if sample_weight is None else torch.from_numpy(weights))
        truth = reference.sparse_kmeans(repeated(X, sample_weight), initial, 5, SPARSE_GAMMA)
        result = np.load(tmp_path / f"{case['name']}.npz")
        index, labels = read_labels(tmp_path / f"labels_{case['name']}")
        np.testing.assert_array_equal(index, np.arange(len(X)))
        np.testing.assert_array_equal(labels, expected.labels[0].numpy())
        np.testing.assert_allclose(result["centroids"], expected.centroids[0].numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["centroids"], truth.centroids, rtol=0, atol=1e-12)
        assert float(result["inertia"]) == pytest.approx(float(expected.inertia[0]), rel=1e-12)


def test_sparse_needs_the_compact_engine(rng):
    dataset = datasets.Dataset.from_dict({f"x{i}": blobs(rng, n=50)[:, i] for i in range(D)})
    model = make_model(variant="sparse")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # an edited model runs the tokens
    with pytest.raises(ValueError, match="runs 'sparse' on the compact engine's labels, which this model does not run"):
        cluster_points(_no_model_calls(model), dataset, progress=False)


def on_threads(world, function):
    """
    `function(rank, reduce_sum)` on `world` threads, whose `reduce_sum` adds up their tensors (as an all-reduce),
    which must have one dtype and shape on every thread (gloo sums the same bytes everywhere).
    """
    import threading

    barrier, slots, results = threading.Barrier(world, timeout=60), [None] * world, [None] * world

    def reduce_sum(tensor, rank):
        slots[rank] = tensor
        barrier.wait()
        assert len({(slot.dtype, slot.shape) for slot in slots}) == 1, [(slot.dtype, slot.shape) for slot in slots]
        total = sum(slots[1:], slots[0].clone())
        barrier.wait()  # every thread has read the slots before any writes the next
        return total

    def run(rank):
        results[rank] = function(rank, lambda tensor: reduce_sum(tensor, rank))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sparse_statistics_across_processes_are_the_sparsemax_of_each_cluster(world, compiled, rng, monkeypatch):
    """
    `_sharded_sparsemax` over shards in chunks (threads standing for processes) sums to the sparsemax update of every
    cluster, computed in NumPy on the members repeated by their integer weights (`reference.sparsemax`): a cluster of
    one member, one whose members are all tied, one with weights 0 to 3 (0: not a member), and an empty one; with the
    compiled loops (scores, grouped members, rounds, sums) and with their PyTorch fallback; with 3 processes, the last
    shard is empty.
    """
    from kmeans_transformer.points import _sharded_sparsemax

    if compiled:
        require_compiled()
    else:
        monkeypatch.setattr(cpu_kernels, "_module", None)
        monkeypatch.setattr(cpu_kernels, "_failed", True)

    d, k = 4, 4
    centroids = np.array([[0.0, 0, 0, 0], [50, 0, 0, 0], [-50, 0, 0, 0], [0, 500, 0, 0]])
    tied = centroids[1] + np.concatenate([np.eye(d), -np.eye(d)]) * 0.75
    spread = centroids[2] + rng.normal(scale=0.6, size=(40, d))
    X = np.concatenate([centroids[:1] + 0.1, tied, spread])
    weights = np.concatenate([[2.0], rng.integers(1, 4, size=len(tied)), rng.integers(0, 4, size=len(spread))])
    order = rng.permutation(len(X))
    X, weights = X[order], weights[order]
    model = make_model(k=k, d=d, T=1, variant="sparse", inverse_temperature=1.5)
    parameters = {"centroids": torch.from_numpy(centroids)[None]}

    def shard(rank, reduce_sum):
        owners = 2 if world == 3 else world  # with 3 processes the last shard is empty
        rows = np.array_split(np.arange(len(X)), owners)[rank] if rank < owners else np.arange(0)

        def chunks():
            for part in np.array_split(rows, 3):
                yield part, torch.from_numpy(X[part]), torch.from_numpy(weights[part])

        return _sharded_sparsemax(model, chunks, parameters, reduce_sum, len(rows))

    statistics = sum(on_threads(world, shard))[0].numpy()
    labels = reference.assign_labels(X, centroids)
    for j in range(k):
        members = (labels == j) & (weights > 0)
        points = np.repeat(X[members], weights[members].astype(np.int64), axis=0)
        assert statistics[j, d] == len(points)
        if not len(points):
            np.testing.assert_array_equal(statistics[j], 0.0)
            continue
        p = reference.sparsemax(-1.5 * ((points - centroids[j]) ** 2).sum(axis=1) / np.sqrt(d))
        np.testing.assert_allclose(statistics[j, :d], p @ points, rtol=0, atol=1e-12)
    assert (labels == 0).sum() == 1 and (labels == 3).sum() == 0
    p_tied = reference.sparsemax(-1.5 * ((tied - centroids[1]) ** 2).sum(axis=1) / np.sqrt(d))
    assert np.all(p_tied == p_tied[0])  # all tied: every member in the support


# ---------------------------------------------------------------------------------------------------------------------
# Trimmed: the smallest key at which enough weight lies, found across chunks and processes
# ---------------------------------------------------------------------------------------------------------------------


def smallest_keys_reference(keys, groups, weights, shape, upper, enough):
    """
    Sorted weighted order statistics in NumPy: per group, its keys sorted and their cumulative weights; `S(v)` is the
    cumulative weight at the last key at most `v`, and the answer is the first of 0 and the group's keys below
    `upper` where `enough` holds (`enough` of a `shape` array of `S`, read at the group), else `upper`.
    """
    result = np.full(shape, upper, dtype=np.int64)
    for g in range(shape[1]):
        order = np.argsort(keys[groups == g], kind="stable")
        ordered, cumulative = keys[groups == g][order], np.cumsum(weights[groups == g][order])
        candidates = np.unique(np.concatenate([[0], ordered]))
        for candidate in candidates[candidates < upper]:
            count = np.searchsorted(ordered, candidate, side="right")
            reached = enough(np.full(shape, cumulative[count - 1] if count else 0.0))[:, g]
            result[:, g] = np.where(reached & (result[:, g] == upper), candidate, result[:, g])
    return result


SMALLEST_KEYS_RULES = {
    # `v(p)`: the smallest key whose weight at or below it exceeds `p` (trimmed's quantiles)
    "exceeds": lambda sums, totals, bounds: sums > bounds,
    # the smallest key with at most `bound` of weight above it (trimmed's fraction and its tie rule)
    "above": lambda sums, totals, bounds: totals - sums <= bounds,
}


@pytest.mark.parametrize("rule", list(SMALLEST_KEYS_RULES))
@pytest.mark.parametrize("weighting", ["integer", "fractional", "none"])
@pytest.mark.parametrize("kind", ["float32", "float64", "index"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_smallest_keys_across_processes_are_the_sorted_order_statistics(world, kind, weighting, rule, rng):
    """
    `_smallest_keys` over shards (threads standing for processes; with 3, the last shard is empty) against the sorted
    order statistics in NumPy, for 4 targets of 5 groups: many tied keys, keys at 0 and at the upper bound (the bit
    pattern of infinity for distances, 2^62 for row indices), NaN distances (above infinity), integer or dyadic
    weights (exact sums) with zeros and a group with weight 0 only, or none (1 each), an empty group, and bounds that
    the group's weight never reaches, reaches at `S = 0` already, or at its first key (0). Keys and groups come in
    the dtypes the trim passes (a float32 distance's bit pattern as int32, int32 labels). Every process makes the
    same all-reduces, one per 8 bits of `upper`, of float64 sums (an empty shard or candidate set too).
    """
    from kmeans_transformer.points import _smallest_keys

    n, shape = 400, (4, 5)
    if kind == "index":
        upper = 2**62
        keys = rng.choice(np.array([0, 1, 2, 3, 2**40, upper - 1, upper]), size=n)
        keys = np.where(rng.random(n) < 0.5, keys, rng.integers(0, 60, size=n))
    else:
        dtype = np.dtype(kind)
        pool = np.array([0.0, np.finfo(dtype).smallest_subnormal, 1e-30, 0.5, 1.5, 2.0, 1e30, np.finfo(dtype).max,
                         np.inf, np.nan], dtype=dtype)
        values = np.where(rng.random(n) < 0.6, rng.choice(pool, size=n), rng.integers(0, 40, size=n) / 8)
        keys = values.astype(dtype).view(np.int32 if kind == "float32" else np.int64).astype(np.int64)
        upper = int(np.array(np.inf, dtype=dtype).view(np.int32 if kind == "float32" else np.int64))
    groups = rng.integers(0, 3, size=n)
    groups[rng.random(n) < 0.05] = 3  # weight 0 only (below); group 4 is empty
    choices = np.array([0.0, 0.25, 0.5, 1.75, 3.0]) if weighting == "fractional" else np.array([0.0, 1.0, 2.0, 3.0])
    weights = np.where(groups == 3, 0.0, rng.choice(choices, size=n)) if weighting != "none" else np.ones(n)
    keys[0], groups[0], weights[0] = 0, 0, 1.0
    totals = np.bincount(groups, weights, minlength=shape[1])
    bounds = rng.integers(-4, 4 * totals.max() + 8, size=shape) / 4  # beyond the totals too
    bounds[0, :3] = totals[:3]  # "exceeds": never; "above": at S = 0 already
    bounds[1, :3] = np.floor(totals[:3] / 2)
    bounds[2, :3] = bounds[1, :3] + 1  # the quantiles' pair of ranks
    bounds[3, :3] = 0  # "exceeds": the first key of positive weight (0 in group 0)
    bounds[0, 3] = -1  # "exceeds": at S = 0 already; "above": never
    rule_of = SMALLEST_KEYS_RULES[rule]
    narrow = np.int32 if kind == "float32" else np.int64
    shards = rng.integers(0, max(world - 1, 1), size=n) if world == 3 else rng.integers(0, world, size=n)
    calls, dtypes = [0] * world, [set() for _ in range(world)]

    def shard(rank, reduce_sum):
        def counted(tensor):
            calls[rank] += 1
            dtypes[rank].add(tensor.dtype)  # gloo sums the same bytes everywhere: float64 on every process
            return reduce_sum(tensor)

        mine = shards == rank
        enough = lambda sums: rule_of(sums, torch.from_numpy(totals), torch.from_numpy(bounds))  # noqa: E731
        given = None if weighting == "none" else torch.from_numpy(weights[mine])
        return _smallest_keys(torch.from_numpy(keys[mine].astype(narrow)), torch.from_numpy(groups[mine]).int(),
                              given, shape, upper, enough, counted)

    results = on_threads(world, shard)
    expected = smallest_keys_reference(keys, groups, weights, shape, upper, lambda s: rule_of(s, totals, bounds))
    for result in results:
        np.testing.assert_array_equal(result.numpy(), expected)
    assert calls == [-(-upper.bit_length() // 8)] * world and dtypes == [{torch.float64}] * world
    assert (expected == 0).any() and (expected == upper).any() and ((expected > 0) & (expected < upper)).any()


def test_row_indices_of_positions_are_those_of_the_chunks(rng):
    """
    `_RowIndices` (trim_fraction's tied points' rows) against the concatenated chunks' indices: progressions of
    steps 1 and 3 (as the sources yield), a chunk of one row, empty chunks, and chunks that are no progression.
    """
    from kmeans_transformer.points import _RowIndices

    chunks = [np.arange(10, 17), np.array([], dtype=np.int64), 5 + 3 * np.arange(6), np.array([40]),
              np.array([3, 1, 2, 9]), np.array([], dtype=np.int64), np.array([7, 8, 10]), np.arange(100, 104)]
    rows = _RowIndices()
    for indices in chunks:
        rows.append(indices)
    every = np.concatenate(chunks)
    for positions in [np.arange(len(every)), np.sort(rng.choice(len(every), size=9, replace=False)), []]:
        found = rows.at(torch.as_tensor(positions, dtype=torch.int64))
        assert found.dtype == torch.int64
        np.testing.assert_array_equal(found.numpy(), every[np.asarray(positions, dtype=np.int64)])


@pytest.mark.parametrize("variant", ["lloyd", "trimmed", "soft"])
def test_points_mode_compares_the_weights_once_per_iteration_not_per_chunk(variant, tmp_path, rng, monkeypatch):
    """
    Points mode looks at the weights (`has_analytic_weights`' element-wise comparison) once per iteration
    (`_weights_held`), not once per chunk; a user's call still compares them on every call, and an edit through
    `.data` between calls is seen at once.
    """
    from kmeans_transformer import modeling_kmeans_transformer as modeling

    calls = []
    compare = modeling._compare_weights
    monkeypatch.setattr(modeling, "_compare_weights", lambda pairs: calls.append(1) or compare(pairs))
    X = blobs(rng, n=2000)
    path = write_parquet(tmp_path / "points.parquet", X)
    model, iterations = make_model(variant=variant, T=3), 3
    cluster_points(model, path, chunk_size=100, progress=False)  # 20 chunks a pass, 4 passes (5 for trimmed's)
    assert len(calls) <= 1 + iterations + 1  # the engine's check before the passes, then one per pass
    calls.clear()
    points = torch.from_numpy(X[:50])[None]
    parameters = {"centroids": torch.from_numpy(X[:K])[None]}
    model.statistics(points, parameters)
    model.statistics(points, parameters)
    assert len(calls) == 2
    embeddings = model.embeddings.cluster_embeddings
    embeddings.data[0, 0] += 1.0  # `.data` does not bump the version counter
    assert model.engine() == "tokens"
    with model._weights_held():
        embeddings.data[0, 0] -= 1.0
        assert model.engine() == "compact"
        embeddings.data[0, 0] += 1.0  # within the context the first answer holds
        assert model.engine() == "compact"
    assert model.engine() == "tokens"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lloyd_chunk_statistics_from_the_fused_loop_are_the_separate_kernels(dtype, rng, monkeypatch):
    """
    An unweighted Lloyd chunk's statistics in points mode (`model.statistics`) come from the fused compiled loop
    (`lloyd_step`) and equal bit for bit those of the separate kernels (the nearest-centroid kernel, then
    `segment_sums`, where the loop does not run), over more rows than a block of the sums (2**15) and with ties, and
    far from the origin (translated in float32); the labels behind them are the float64 plain loop's where its
    distances are exact (integer points), and the sums are the float64 sums of each label's points.
    """
    from kmeans_transformer import points as points_mode

    require_compiled()
    runs, fused_loop = [], [True]
    step = modeling_kmeans_transformer.lloyd_step
    monkeypatch.setattr(
        modeling_kmeans_transformer, "lloyd_step",
        lambda *args: (runs.append(1) or step(*args)) if fused_loop[0] else None,
    )
    model = make_model(k=7, d=5).to(dtype)
    far = rng.normal(scale=3.0, size=(70_001, 5)) + 1e4  # in float32, in the `CompactFrame` of `model.statistics`
    for X in (rng.integers(-4, 5, size=(70_001, 5)), rng.normal(scale=3.0, size=(70_001, 5)), far):
        X = torch.from_numpy(X.astype(np.float64)).to(dtype)
        parameters = {"centroids": X[:7][None].to(torch.float64) + 0.25}
        translated = model._labels_origin(parameters["centroids"].to(dtype)) is not None
        assert translated == (dtype == torch.float32 and bool(X.mean() > 1e3))
        runs.clear()
        fused = points_mode._statistics(model, X, parameters)
        assert runs == [1]
        fused_loop[0] = False
        expected = model.statistics(X[None], parameters)
        fused_loop[0] = True
        assert fused.dtype == torch.float64 and torch.equal(fused, expected)
    X = rng.integers(-4, 5, size=(70_001, 5)).astype(np.float64)
    centroids = X[:7] + 0.5  # distances exact in float32 too: ties broken by the lowest index alike
    labels = ((X[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    found = points_mode._statistics(model, torch.from_numpy(X).to(dtype), {"centroids": torch.from_numpy(centroids)[None]})
    for j in range(7):
        np.testing.assert_array_equal(found[0, j, :5].numpy(), X[labels == j].sum(0))
        assert found[0, j, 5] == (labels == j).sum()
