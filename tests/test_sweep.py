"""The exactness sweep script (`scripts/exactness_sweep.py`) on its quick grid."""

import csv
import sys
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import exactness_sweep as sweep  # noqa: E402


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    output = tmp_path_factory.mktemp("sweep") / "out"
    status = sweep.main(["--output", str(output), "--quick", "--no-progress"])
    return status, output


def test_quick_sweep_writes_expected_rows(quick_run):
    status, output = quick_run
    assert status == 0
    with open(output / "sweep.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == sweep.COLUMNS
        raw = list(reader)
    grid = sweep.QUICK_GRID
    methods = 1 + len(grid["gammas"])
    configurations = len(grid["dims"]) * len(grid["clusters"]) * len(grid["points"]) * len(grid["scales"])
    assert len(raw) == configurations * grid["seeds"] * methods

    rows = sweep.read_csv(output / "sweep.csv")
    assert {(row["method"], row["gamma"]) for row in rows} == {("hardmax", None)} | {
        ("softmax", gamma) for gamma in grid["gammas"]
    }
    assert all(raw_row["gamma"] == "" for raw_row in raw if raw_row["method"] == "hardmax")
    seen = {(row["method"], row["gamma"], row["d"], row["k"], row["n"], row["scale"], row["seed"]) for row in rows}
    assert len(seen) == len(rows)  # one row per configuration, seed and method
    for row in rows:
        assert row["abs_log_difference"] == pytest.approx(
            abs(row["log_objective_model"] - row["log_objective_lloyd"]), abs=1e-15
        )
        assert 0.0 <= row["label_agreement"] <= 1.0


def test_hardmax_matches_lloyd_and_softmax_does_not(quick_run):
    _, output = quick_run
    rows = sweep.read_csv(output / "sweep.csv")
    hardmax = [row for row in rows if row["method"] == "hardmax"]
    # Same labels everywhere; the objectives differ at most by rounding (means are summed in another order).
    assert all(row["label_agreement"] == 1.0 for row in hardmax)
    assert max(row["abs_log_difference"] for row in hardmax) <= 1e-12
    assert not sweep.hardmax_failures(rows)
    soft = [row for row in rows if row["gamma"] == 1.0]
    assert max(row["abs_log_difference"] for row in soft) > 1e-3


def test_summary_and_heatmaps(quick_run):
    _, output = quick_run
    summary = (output / "summary.md").read_text()
    for text in ("hardmax", "γ = 1", "γ = 100", "torch", "date", "passed"):
        assert text in summary
    names = sorted(path.name for path in output.glob("heatmap_*.png"))
    assert names == sorted(
        ["heatmap_hardmax.png", *(f"heatmap_softmax_gamma{gamma:g}.png" for gamma in sweep.QUICK_GRID["gammas"])]
    )
    for name in names:
        data = (output / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


TINY = ["--dims", "2", "--clusters", "2", "--points", "100", "--scales", "1", "--seeds", "1", "--gammas", "1",
        "--no-progress", "--no-plots"]


def test_non_empty_output_refused_without_overwrite(tmp_path, capsys):
    output = tmp_path / "busy"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    (output / "sweep.csv").write_text("old")

    assert sweep.main(["--output", str(output), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt", "sweep.csv"]
    assert (output / "notes.txt").read_text() == "keep me"
    assert (output / "sweep.csv").read_text() == "old"

    assert sweep.main(["--output", str(output), "--overwrite", *TINY]) == 0
    assert (output / "notes.txt").read_text() == "keep me"
    assert len(sweep.read_csv(output / "sweep.csv")) == 2  # hardmax and softmax at γ = 1


def test_hardmax_disagreement_is_a_failure():
    row = {"method": "hardmax", "gamma": None, "abs_log_difference": 0.0, "label_agreement": 0.99}
    assert sweep.hardmax_failures([row]) == [row]
    assert sweep.hardmax_failures([{**row, "label_agreement": 1.0}]) == []
    assert sweep.hardmax_failures([{**row, "label_agreement": 1.0, "abs_log_difference": 1e-9}])
    assert sweep.hardmax_failures([{**row, "gamma": 1.0}]) == []  # softmax rows are not checked
