"""`kmeans-transformer cluster`: tables in, labels, centroids, plot and model out; clear errors that touch nothing."""

import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from kmeans_transformer.cli import main


FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def iris() -> pd.DataFrame:
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame["species"] = data.target_names[data.target.to_numpy()]
    return frame


@pytest.fixture
def iris_csv(tmp_path, iris) -> Path:
    path = tmp_path / "iris.csv"
    iris.to_csv(path, index=False)
    return path


def cluster(capsys, *arguments) -> tuple[int, str, str]:
    """Run `kmeans-transformer cluster ARGUMENTS` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(["cluster", *map(str, arguments)])
    out, err = capsys.readouterr()
    return code, out, err


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def check_clustering(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Labels are the nearest centroids and centroids the means of their members (Lloyd's fixed point); the inertia."""
    np.testing.assert_array_equal(labels, nearest(points, centroids))
    for j, centroid in enumerate(centroids):
        np.testing.assert_allclose(centroid, points[labels == j].mean(axis=0), rtol=1e-12, atol=1e-12)
    return float(((points - centroids[labels]) ** 2).sum())


def summary_value(out: str, name: str) -> str:
    return re.search(rf"^\s*{name}: (.+)$", out, re.MULTILINE).group(1)


def test_iris_csv(tmp_path, capsys, iris, iris_csv):
    output, plot = tmp_path / "labelled.csv", tmp_path / "iris.png"
    code, out, err = cluster(
        capsys, iris_csv, "--n-clusters", 3, "--output", output, "--plot", plot, "--random-state", 0, "--tol", 0
    )
    assert code == 0, err
    labelled = pd.read_csv(output)
    assert list(labelled.columns) == [*iris.columns, "label"]
    pd.testing.assert_frame_equal(labelled[iris.columns], iris)
    centroids = pd.read_csv(tmp_path / "labelled_centroids.csv")
    assert list(centroids.columns) == ["cluster", *FEATURES]
    assert centroids["cluster"].tolist() == [0, 1, 2]

    labels = labelled["label"].to_numpy()
    inertia = check_clustering(iris[FEATURES].to_numpy(), labels, centroids[FEATURES].to_numpy())
    assert float(summary_value(out, "inertia")) == pytest.approx(inertia, rel=1e-8)
    sizes = np.bincount(labels, minlength=3)
    assert summary_value(out, "cluster sizes") == ", ".join(f"{j}: {size}" for j, size in enumerate(sizes))
    assert "150 rows" in out and "4 features: sepal length (cm)" in out
    assert plot.read_bytes().startswith(PNG_SIGNATURE) and plot.stat().st_size > 1000
    for path in (output, tmp_path / "labelled_centroids.csv", plot):
        assert f"wrote {path}" in out


def test_console_script_matches_the_in_process_command(tmp_path, capsys, iris_csv):
    script = Path(sys.executable).with_name("kmeans-transformer")
    if not script.exists():
        pytest.skip("the kmeans-transformer console script is not installed next to this Python")
    common = ["--n-clusters", "3", "--random-state", "7", "--n-init", "3", "--init", "random", "--no-progress"]
    result = subprocess.run(
        [script, "cluster", iris_csv, *common, "--output", tmp_path / "script.parquet", "--save-model", tmp_path / "model"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "inertia" in result.stdout and "3 restarts (random" in result.stdout
    assert {"config.json", "model.safetensors"} <= {path.name for path in (tmp_path / "model").iterdir()}
    code, out, err = cluster(capsys, iris_csv, *common, "--output", tmp_path / "here.parquet")
    assert code == 0, err
    assert summary_value(out, "inertia") == summary_value(result.stdout, "inertia")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "script.parquet"), pd.read_parquet(tmp_path / "here.parquet"))


def test_dataset_directory_with_selected_columns(tmp_path, capsys, iris):
    directory = tmp_path / "iris_dataset"
    datasets.Dataset.from_pandas(iris).save_to_disk(directory)
    selected = ["petal length (cm)", "petal width (cm)"]
    output = tmp_path / "out.parquet"
    code, out, err = cluster(
        capsys, directory, "--n-clusters", 2, "--columns", ",".join(selected), "--output", output,
        "--label-column", "cluster_id", "--random-state", 1, "--tol", 0, "--no-progress",
    )
    assert code == 0, err
    labelled = pd.read_parquet(output)
    assert list(labelled.columns) == [*iris.columns, "cluster_id"]
    pd.testing.assert_frame_equal(labelled[iris.columns], iris, check_dtype=False)
    centroids = pd.read_parquet(tmp_path / "out_centroids.parquet")
    assert list(centroids.columns) == ["cluster", *selected]
    check_clustering(iris[selected].to_numpy(), labelled["cluster_id"].to_numpy(), centroids[selected].to_numpy())
    assert "2 features: petal length (cm), petal width (cm)" in out


def test_embedding_column_of_a_dataset(tmp_path, capsys, rng):
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 5.0, 5.0]])
    embeddings = np.concatenate([centre + rng.normal(size=(20, 3)) for centre in centres])
    dataset = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(60)], "embedding": embeddings.tolist()})
    dataset.save_to_disk(tmp_path / "embedded")
    output = tmp_path / "out.parquet"
    code, out, err = cluster(
        capsys, tmp_path / "embedded", "--n-clusters", 3, "--columns", "embedding", "--output", output,
        "--random-state", 0, "--tol", 0, "--no-progress",
    )
    assert code == 0, err
    labelled = pd.read_parquet(output)
    assert list(labelled.columns) == ["text", "embedding", "label"]
    np.testing.assert_array_equal(np.stack(labelled["embedding"].to_numpy()), embeddings)
    centroids = pd.read_parquet(tmp_path / "out_centroids.parquet")
    assert list(centroids.columns) == ["cluster", "embedding[0]", "embedding[1]", "embedding[2]"]
    check_clustering(embeddings, labelled["label"].to_numpy(), centroids.iloc[:, 1:].to_numpy())
    assert sorted(np.bincount(labelled["label"])) == [20, 20, 20]


def test_npy_input(tmp_path, capsys, rng):
    points = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 8])
    np.save(tmp_path / "points.npy", points)
    code, out, err = cluster(
        capsys, tmp_path / "points.npy", "--n-clusters", 2, "--output", tmp_path / "out.csv",
        "--centroids", tmp_path / "centres.parquet", "--random-state", 0, "--tol", 0, "--no-progress",
    )
    assert code == 0, err
    labelled = pd.read_csv(tmp_path / "out.csv")
    assert list(labelled.columns) == ["x0", "x1", "label"]
    np.testing.assert_array_equal(labelled[["x0", "x1"]].to_numpy(), points)
    centroids = pd.read_parquet(tmp_path / "centres.parquet")
    assert list(centroids.columns) == ["cluster", "x0", "x1"]
    check_clustering(points, labelled["label"].to_numpy(), centroids[["x0", "x1"]].to_numpy())
    assert sorted(np.bincount(labelled["label"])) == [30, 30]


def test_parquet_index_is_kept(tmp_path, capsys, iris):
    frame = iris.set_index(pd.Index([f"flower {i}" for i in range(150)], name="flower"))
    frame.to_parquet(tmp_path / "iris.parquet")
    code, _, err = cluster(capsys, tmp_path / "iris.parquet", "--n-clusters", 3, "--output", tmp_path / "out.parquet")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet").drop(columns="label"), frame)


def test_trimmed_variant_reports_its_outliers(tmp_path, capsys, iris_csv, iris):
    code, out, err = cluster(
        capsys, iris_csv, "--n-clusters", 3, "--variant", "trimmed", "--trim-fraction", 0.1,
        "--output", tmp_path / "out.csv", "--random-state", 0, "--no-progress",
    )
    assert code == 0, err
    labels = pd.read_csv(tmp_path / "out.csv")["label"].to_numpy()
    centroids = pd.read_csv(tmp_path / "out_centroids.csv")[FEATURES].to_numpy()
    outliers = labels == -1
    assert outliers.any() and int(summary_value(out, r"outliers \(label -1\)")) == outliers.sum()
    points = iris[FEATURES].to_numpy()
    np.testing.assert_array_equal(labels[~outliers], nearest(points[~outliers], centroids))
    # The trimmed points are the farthest from their nearest centroid.
    distances = ((points - centroids[nearest(points, centroids)]) ** 2).sum(-1)
    assert distances[outliers].min() >= distances[~outliers].max()


def write_text_only(tmp_path, iris):
    iris[["species"]].to_csv(tmp_path / "text.csv", index=False)
    return tmp_path / "text.csv"


def write_with_nan(tmp_path, iris):
    frame = iris.copy()
    frame.loc[[3, 50, 100], "petal width (cm)"] = np.nan
    frame.to_csv(tmp_path / "nan.csv", index=False)
    return tmp_path / "nan.csv"


def write_corrupt_parquet(tmp_path, iris):
    (tmp_path / "broken.parquet").write_bytes(np.random.default_rng(0).bytes(2000))
    return tmp_path / "broken.parquet"


def write_json(tmp_path, iris):
    iris.to_json(tmp_path / "iris.json")
    return tmp_path / "iris.json"


def write_with_label(tmp_path, iris):
    iris.assign(label=1).to_csv(tmp_path / "labelled.csv", index=False)
    return tmp_path / "labelled.csv"


def write_dataset_dict(tmp_path, iris):
    dataset = datasets.Dataset.from_pandas(iris)
    datasets.DatasetDict(train=dataset, test=dataset).save_to_disk(tmp_path / "splits")
    return tmp_path / "splits"


def write_ragged(tmp_path, iris):
    pd.DataFrame({"embedding": [[1.0, 2.0], [3.0], [4.0, 5.0]]}).to_parquet(tmp_path / "ragged.parquet")
    return tmp_path / "ragged.parquet"


def write_iris(tmp_path, iris):
    iris.to_csv(tmp_path / "iris.csv", index=False)
    return tmp_path / "iris.csv"


def existing(*names):
    def make(tmp_path):
        for name in names:
            if name.endswith("/"):
                (tmp_path / name).mkdir()
                (tmp_path / name / "keep.txt").write_text("keep")
            else:
                (tmp_path / name).write_bytes(b"precious")

    return make


@pytest.mark.parametrize(
    "make_input, arguments, prepare, words",
    [
        (lambda tmp_path, iris: tmp_path / "missing.csv", [], None, ["missing.csv", "does not exist"]),
        (write_corrupt_parquet, [], None, ["cannot read", "broken.parquet", "Parquet"]),
        (write_json, [], None, ["unsupported file type '.json'", ".csv, .parquet, .npy"]),
        (write_iris, ["--columns", "sepal length (cm),petal size"], None, ["no column 'petal size'", "available columns: sepal length (cm)"]),
        (write_iris, ["--columns", "sepal length (cm),species"], None, ["'species'", "not numeric"]),
        (write_text_only, [], None, ["no numeric columns", "species"]),
        (write_with_nan, [], None, ["'petal width (cm)'", "NaN", "3 of 150 rows"]),
        (write_iris, ["--n-clusters", 151], None, ["--n-clusters 151", "larger than the number of rows (150)"]),
        (write_iris, ["--n-clusters", 0], None, ["--n-clusters must be >= 1"]),
        (write_iris, ["--n-init", "many"], None, ["--n-init", "'auto' or an integer"]),
        (write_iris, [], existing("out.csv"), ["out.csv exists", "--overwrite"]),
        (write_iris, ["--plot", "figure.png"], existing("figure.png"), ["figure.png exists", "--overwrite"]),
        (write_iris, [], existing("out_centroids.csv"), ["out_centroids.csv exists", "--overwrite"]),
        (write_iris, ["--save-model", "model"], existing("model/"), ["model is not empty", "--overwrite"]),
        (write_iris, ["--plot", "figure.jpg"], None, ["figure.jpg", ".png"]),
        (write_iris, ["--centroids", "centroids.txt"], None, ["centroids.txt", ".csv or .parquet"]),
        (write_with_label, [], None, ["already has a column 'label'", "--label-column"]),
        (write_dataset_dict, [], None, ["DatasetDict", "train, test", "splits/train"]),
        (write_ragged, ["--columns", "embedding"], None, ["'embedding'", "different lengths"]),
        (write_iris, ["--variant", "lloyd", "--trim-fraction", 0.1], None, ["trim_fraction"]),
        (write_iris, ["--centroids", "out.csv"], None, ["--output and --centroids", "same path"]),
        (write_iris, ["--device", "nowhere"], None, ["device", "'nowhere'"]),
    ],
)
def test_errors_are_one_line_and_touch_nothing(tmp_path, monkeypatch, capsys, iris, make_input, arguments, prepare, words):
    monkeypatch.chdir(tmp_path)
    source = make_input(tmp_path, iris)
    if prepare is not None:
        prepare(tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    options = {"--n-clusters": 3, "--output": "out.csv"} | dict(zip(arguments[::2], arguments[1::2]))
    code, out, err = cluster(capsys, source, *[str(item) for pair in options.items() for item in pair], "--no-progress")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmeans-transformer cluster: error: "), err
    for word in words:
        assert word in lines[0]
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before


def test_overwrite_replaces_every_output(tmp_path, monkeypatch, capsys, iris_csv):
    monkeypatch.chdir(tmp_path)
    existing("out.csv", "out_centroids.csv", "figure.png", "model/")(tmp_path)
    (tmp_path / "model" / "keep.txt").unlink()
    for name in ("config.json", "generation_config.json"):  # a previous checkpoint, with a file the new one lacks
        (tmp_path / "model" / name).write_text("{}")
    arguments = [iris_csv, "--n-clusters", 3, "--output", "out.csv", "--plot", "figure.png", "--save-model", "model"]
    code, _, err = cluster(capsys, *arguments, "--no-progress")
    assert code == 2 and "out.csv exists" in err
    code, out, err = cluster(capsys, *arguments, "--overwrite", "--random-state", 0)
    assert code == 0, err
    assert len(pd.read_csv("out.csv")) == 150 and len(pd.read_csv("out_centroids.csv")) == 3
    assert Path("figure.png").read_bytes().startswith(PNG_SIGNATURE)
    # the directory is replaced whole: nothing of the previous checkpoint survives
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "model" / "generation_config.json").exists()
    assert "wrote model: the fitted model" in out


def test_plot_without_matplotlib_fails_before_any_work(tmp_path, monkeypatch, capsys, iris_csv):
    for name in ["matplotlib", *(name for name in sys.modules if name.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now raises ImportError
    code, out, err = cluster(capsys, iris_csv, "--n-clusters", 3, "--output", tmp_path / "out.csv", "--plot", tmp_path / "f.png")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        'kmeans-transformer cluster: error: plotting needs matplotlib; install it with: pip install "kmeans-transformer[plots]"'
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["iris.csv"]


def test_weight_column_weighs_the_rows_and_is_not_a_feature(capsys, tmp_path, iris):
    """`--weight-column w` equals the fit of the rows repeated w times (integer weights), and w is no feature."""
    rng = np.random.default_rng(0)
    weighted = iris.assign(w=rng.integers(1, 4, size=len(iris)))
    weighted.to_csv(tmp_path / "weighted.csv", index=False)
    repeated = iris.loc[iris.index.repeat(weighted["w"])]
    repeated.to_csv(tmp_path / "repeated.csv", index=False)
    common = ["--n-clusters", 3, "--random-state", 0, "--init", "random", "--n-init", 1, "--tol", 0, "--no-progress"]
    code, out, err = cluster(capsys, tmp_path / "weighted.csv", "--output", tmp_path / "w.csv", "--weight-column", "w",
                             *common)
    assert code == 0, err
    centroids = pd.read_csv(tmp_path / "w_centroids.csv")
    assert list(centroids.columns) == ["cluster", *FEATURES]
    labels = pd.read_csv(tmp_path / "w.csv")["label"].to_numpy()
    points, weights = iris[FEATURES].to_numpy(), weighted["w"].to_numpy()
    centres = centroids[FEATURES].to_numpy()
    np.testing.assert_array_equal(labels, nearest(points, centres))
    for j, centre in enumerate(centres):  # the weighted means of their members
        members = labels == j
        np.testing.assert_allclose(centre, np.average(points[members], axis=0, weights=weights[members]), rtol=1e-12)


@pytest.mark.parametrize(
    "values, message",
    [([-1.0], "finite numbers >= 0"), ([float("nan")], "finite numbers >= 0"), (["x"], "not numeric")],
)
def test_a_bad_weight_column_is_a_clear_error(capsys, tmp_path, iris, values, message):
    table = iris.assign(w=1.0)
    table["w"] = table["w"].astype(object)
    table.loc[5, "w"] = values[0]
    table.to_csv(tmp_path / "in.csv", index=False)
    code, out, err = cluster(capsys, tmp_path / "in.csv", "--output", tmp_path / "out.csv", "--n-clusters", 3,
                             "--weight-column", "w", "--no-progress")
    assert code != 0 and message in err
    assert not (tmp_path / "out.csv").exists()


def test_a_missing_weight_column_is_named(capsys, iris_csv, tmp_path):
    code, out, err = cluster(capsys, iris_csv, "--output", tmp_path / "out.csv", "--n-clusters", 3,
                             "--weight-column", "nope", "--no-progress")
    assert code != 0 and "nope" in err
