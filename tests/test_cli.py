"""The command line as a whole: every command and option documented, one error form, a parser without heavy imports."""

import argparse
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kmeans_transformer.cli import build_parser, main, report_error, standardization
from kmeans_transformer.cli import walk_parsers as walk


def test_every_command_and_option_has_help():
    missing = []
    commands = list(walk(build_parser()))
    assert len(commands) >= 10  # the main parser and its nine commands
    for path, parser in commands:
        if not parser.description:
            missing.append(" ".join(path) + " (description)")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                missing += [f"{' '.join(path)} {name} (help)" for name in action.choices if not helps.get(name)]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def options(command: str) -> dict[str, argparse.Action]:
    parser = dict((path[-1], parser) for path, parser in walk(build_parser()))[command]
    return {string: action for action in parser._actions for string in action.option_strings}


@pytest.mark.parametrize("command", ["convert", "cluster", "train"])
def test_cluster_count_has_one_name_and_its_alias(command):
    found = options(command)
    assert found["--n-clusters"] is found["--num-clusters"] and found["--n-clusters"].dest == "n_clusters"


@pytest.mark.parametrize("command", ["demo", "cluster", "train", "evaluate"])
def test_seed_has_one_name_and_its_alias(command):
    found = options(command)
    assert found["--seed"] is found["--random-state"] and found["--seed"].dest == "seed"


def test_dtype_defaults_to_float64_except_for_training():
    defaults = {command: options(command)["--dtype"].default for command in ("convert", "cluster", "zoo", "train")}
    assert defaults == {"convert": "float64", "cluster": "float64", "zoo": "float64", "train": "float32"}
    assert "float32" in options("train")["--dtype"].help and "learned" in options("train")["--dtype"].help


def test_report_error_has_argparse_form(capsys):
    report_error("cluster", "A feature is named 'x'; rename it.\n")
    report_error("infer", "HTTP 404 from the Hub.")
    assert capsys.readouterr().err.splitlines() == [
        "kmeans-transformer cluster: error: a feature is named 'x'; rename it",
        "kmeans-transformer infer: error: HTTP 404 from the Hub",
    ]


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["convert", "--n-clusters", "0", "--point-dim", "2", "--num-iterations", "1", "--output", "{tmp}/m"], "num_clusters"),
        (["cluster", "{tmp}/missing.csv", "--n-clusters", "2", "--output", "{tmp}/o.csv"], "missing.csv"),
        (["cluster", "{tmp}/x.csv", "--n-clusters", "0", "--output", "{tmp}/o.csv"], "--n-clusters must be >= 1"),
        (["infer", "--model", "{tmp}/nothing", "--dataset", "{tmp}/x.csv", "--output", "{tmp}/o.parquet"], "nothing"),
        (["evaluate", "{tmp}/nothing", "--output", "{tmp}/e"], "nothing"),
    ],
)
def test_run_errors_share_one_form(tmp_path, capsys, arguments, words):
    pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0]}).to_csv(tmp_path / "x.csv", index=False)
    capsys.readouterr()
    code = main([argument.format(tmp=tmp_path) for argument in arguments])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"kmeans-transformer {arguments[0]}: error: ") and words in line, line
    message = line.split(": error: ", 1)[1]
    assert not message[:1].isupper() or message[1:2].isupper() and not message.endswith(".")


def test_argument_errors_have_the_same_form(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["cluster", "x.csv", "--n-clusters", "many", "--output", "o.csv"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("kmeans-transformer cluster: error: argument --n-clusters")


def test_standardization_matches_standard_scaler(rng):
    from sklearn.preprocessing import StandardScaler

    X = rng.normal(size=(50, 3)) * [1.0, 100.0, 0.0] + [0.0, 5.0, 7.0]  # the last column constant
    mean, scale = standardization(X)
    np.testing.assert_allclose((X - mean) / scale, StandardScaler().fit_transform(X), rtol=1e-12, atol=1e-12)
    weights = rng.uniform(0.5, 2.0, size=50)
    mean, scale = standardization(X, weights)
    expected = StandardScaler().fit_transform(X, sample_weight=weights)
    np.testing.assert_allclose((X - mean) / scale, expected, rtol=1e-10, atol=1e-10)


def test_cluster_standardize_matches_scaler_then_kmeans(tmp_path, capsys, rng):
    """--standardize: StandardScaler then our KMeans in Python gives the same labels; centroids in the input's units."""
    from sklearn.preprocessing import StandardScaler

    from kmeans_transformer import KMeans

    centers = np.array([[0.0, 0.0], [3.0, 3000.0], [0.0, 6000.0]])  # the second feature a thousand times larger
    X = np.concatenate([center + rng.normal(size=(40, 2)) * [1.0, 1000.0] for center in centers])
    pd.DataFrame(X, columns=["a", "b"]).to_csv(tmp_path / "x.csv", index=False)
    code = main(["cluster", str(tmp_path / "x.csv"), "--n-clusters", "3", "--seed", "0", "--standardize",
                 "--output", str(tmp_path / "o.csv"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    labels = pd.read_csv(tmp_path / "o.csv")["label"].to_numpy()
    scaled = StandardScaler().fit_transform(X)
    expected = KMeans(3, random_state=0, progress_bar=False).fit(scaled).labels_
    np.testing.assert_array_equal(labels, expected)
    centroids = pd.read_csv(tmp_path / "o_centroids.csv")[["a", "b"]].to_numpy()
    np.testing.assert_allclose(centroids, [X[labels == j].mean(axis=0) for j in range(3)], rtol=1e-9)
    raw = main(["cluster", str(tmp_path / "x.csv"), "--n-clusters", "3", "--seed", "0",
                "--output", str(tmp_path / "r.csv"), "--no-progress"])
    assert raw == 0  # unscaled, the large feature alone decides: the labels differ
    assert not np.array_equal(pd.read_csv(tmp_path / "r.csv")["label"].to_numpy(), labels)


@pytest.mark.slow  # two commands in fresh processes
def test_no_library_progress_bars_unless_verbose(tmp_path, monkeypatch):
    """convert then infer: our own bar on stderr, the libraries' bars switched off unless --verbose."""
    from transformers.utils import logging as transformers_logging

    command = [sys.executable, "-m", "kmeans_transformer.cli"]
    model = tmp_path / "model"
    subprocess.run([*command, "convert", "--n-clusters", "2", "--point-dim", "2", "--num-iterations", "2",
                    "--output", str(model)], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    pd.DataFrame({"points": [rng.normal(size=(20, 2)).tolist() for _ in range(3)]}).to_parquet(tmp_path / "p.parquet")
    result = subprocess.run([*command, "infer", "--model", str(model), "--dataset", str(tmp_path / "p.parquet"),
                             "--output", str(tmp_path / "r.parquet")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "problems" in result.stderr and "Loading weights" not in result.stderr
    monkeypatch.setattr(transformers_logging, "_tqdm_active", True)
    for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(variable, "0")  # restored after the test (the command sets them when unset)
    for flag, active in (("--verbose", True), ("--no-progress", False)):
        main(["infer", "--model", str(tmp_path / "none"), "--dataset", "x", "--output", str(tmp_path / "o"), flag])
        assert transformers_logging.is_progress_bar_enabled() is active


def test_help_imports_none_of_the_heavy_libraries():
    """Every command's help from the package alone: no scikit-learn, pandas, datasets or matplotlib."""
    code = ("import sys; from kmeans_transformer.cli import build_parser, walk_parsers\n"
            "for _, parser in walk_parsers(build_parser()): parser.format_help()\n"
            "print(sorted({'sklearn', 'pandas', 'datasets', 'matplotlib'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
