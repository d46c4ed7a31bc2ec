"""The exactness sweep script (`scripts/exactness_sweep.py`) on its quick grid."""

import csv
import sys
from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------------------------------------------------------------
# Park et al.'s grid (--grid park)
# ---------------------------------------------------------------------------------------------------------------------


def their_generator(rng, n, k, d, ub, noise=0.1):
    """The authors' sweep task, written from its description: k centres uniform in [0, 1]^d, n // k points per centre
    with N(0, 0.01 I) noise, each coordinate shifted to 0 and divided by its maximum, times ub, then shuffled."""
    centres = rng.uniform(size=(k, d))
    covariance = noise**2 * np.eye(d)
    points = np.concatenate([rng.multivariate_normal(centre, covariance, size=n // k) for centre in centres])
    points = points - points.min(axis=0)
    points = ub * points / points.max(axis=0)
    points = points[rng.permutation(len(points))].astype(np.float32)
    return points, points[:k].copy()


def test_park_task_structure():
    from kmeans_transformer.tasks import TaskDistribution

    for d, k, n, ub in [(1, 5, 100, 1), (3, 15, 278, 7), (10, 50, 774, 10)]:
        configuration = {"d": d, "k": k, "n": n, "upper_bound": ub}
        points, initial = sweep.park_task(configuration, seed=3)
        assert points.dtype == np.float32 and initial.dtype == np.float32
        assert points.shape == (k * (n // k), d) and initial.shape == (k, d)
        np.testing.assert_array_equal(initial, points[:k])  # the first k shuffled points
        np.testing.assert_allclose(points.min(axis=0), 0.0, atol=1e-6)  # every coordinate spans [0, ub]
        np.testing.assert_allclose(points.max(axis=0), ub, rtol=1e-6)
        # balanced components: exactly n // k points each (the remainder dropped)
        task = TaskDistribution(n, k, d, scale=0.1, upper_bound=float(ub), exact_counts=True).sample(
            np.random.default_rng([3, d, k, n, ub])
        )
        assert np.bincount(task["labels"], minlength=k).tolist() == [n // k] * k
        np.testing.assert_array_equal(task["points"].astype(np.float32), points)
    # a configuration's task depends on the seed and the configuration only
    again, _ = sweep.park_task({"d": 3, "k": 15, "n": 278, "upper_bound": 7}, seed=3)
    other, _ = sweep.park_task({"d": 3, "k": 15, "n": 278, "upper_bound": 7}, seed=4)
    assert np.array_equal(again, sweep.park_task({"d": 3, "k": 15, "n": 278, "upper_bound": 7}, seed=3)[0])
    assert not np.array_equal(again, other)


def test_park_task_matches_their_generator_in_distribution():
    """Statistics of 200 tasks from the sweep's generator and from the independent reimplementation agree: the mean
    coordinate variance, the mean log objective at the initial centroids and after 10 Lloyd iterations (z < 4)."""
    from kmeans_transformer.reference import assign_labels, inertia, lloyd

    d, k, n, ub, tasks = 2, 5, 100, 3, 200

    def statistics_of(points, initial):
        points, initial = points.astype(np.float64), initial.astype(np.float64)
        start = inertia(points, assign_labels(points, initial), initial)
        return points.var(axis=0).mean(), np.log(start), np.log(lloyd(points, initial, 10).inertia)

    def z_scores(first, second):
        return (first.mean(0) - second.mean(0)) / np.sqrt(first.var(0, ddof=1) / tasks + second.var(0, ddof=1) / tasks)

    rng = np.random.default_rng(0)
    ours = np.array([
        statistics_of(*sweep.park_task({"d": d, "k": k, "n": n, "upper_bound": ub}, seed)) for seed in range(tasks)
    ])
    theirs = np.array([statistics_of(*their_generator(rng, n, k, d, ub)) for _ in range(tasks)])
    assert np.all(np.abs(z_scores(ours, theirs)) < 4), z_scores(ours, theirs)
    # the statistics would notice a different noise scale
    wider = np.array([statistics_of(*their_generator(rng, n, k, d, ub, noise=0.15)) for _ in range(tasks)])
    assert np.abs(z_scores(ours, wider)).max() > 4


def test_park_grid_and_authors_results():
    configurations = sweep.park_configurations()
    assert len(configurations) == 10_000
    assert sweep.PARK_GRID["points"] == (100, 278, 774, 2154, 5994, 16681, 46415, 129154, 359381, 1_000_000)
    results = sweep.read_authors_results()
    for gamma, published in sweep.PAPER_FRACTIONS.items():
        fraction, found = sweep.authors_fraction(configurations, gamma, results)
        assert found == 10_000
        assert abs(fraction - published) < 0.005  # their results file gives their published fractions
    capped = sweep.park_configurations(max_points=278)
    assert len(capped) == 2000 and max(c["n"] for c in capped) == 278


def test_park_subsample_draws_whole_cells():
    configurations = sweep.park_configurations(max_points=774)
    chosen = sweep.subsample(configurations, 7, seed=5)
    assert chosen == sweep.subsample(configurations, 7, seed=5)
    assert chosen != sweep.subsample(configurations, 7, seed=6)
    cells = {sweep.cell_of(c) for c in chosen}
    assert len(cells) == 7 and len(chosen) == 70  # every ub of each drawn cell
    assert all(c["n"] <= 774 for c in chosen)
    assert sweep.subsample(configurations, 10_000, seed=5) == configurations


def test_park_run_against_references(tmp_path):
    """A tiny park run: hardmax is Lloyd's algorithm, soft is soft k-means (NumPy reference at γ), float32."""
    from kmeans_transformer.reference import assign_labels, inertia, soft_kmeans

    output = tmp_path / "park"
    status = sweep.main(["--grid", "park", "--output", str(output), "--dims", "2", "--clusters", "5", "--points",
                         "100", "--upper-bounds", "2", "6", "--gammas", "1", "100", "--no-progress", "--no-plots"])
    assert status == 0
    with open(output / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == sweep.PARK_COLUMNS
    assert len(rows) == 2 * (1 + 2 * 2)  # two configurations; hardmax, then soft and softmax at each γ
    for row in rows:
        points, initial = sweep.park_task({"d": 2, "k": 5, "n": 100, "upper_bound": int(row["upper_bound"])}, 0)
        points = points.astype(np.float64)
        if row["method"] == "hardmax":
            assert float(row["abs_log_difference"]) < 1e-5 and float(row["label_agreement"]) == 1.0
        if row["method"] == "soft":
            reference = soft_kmeans(points, initial.astype(np.float64), 10, float(row["gamma"])).centroids
            expected = np.log(inertia(points, assign_labels(points, reference), reference))
            assert float(row["log_objective_model"]) == pytest.approx(expected, abs=1e-4)
    summary = (output / "summary.md").read_text()
    assert "Park et al., published" in summary and "all 2 configurations" in summary
    assert "| 100 | 62.0% |" in summary


def test_park_options_refused_on_the_other_grid(tmp_path, capsys):
    assert sweep.main(["--output", str(tmp_path / "a"), "--max-points", "100", *TINY]) == 2
    assert "--max-points" in capsys.readouterr().err
    assert sweep.main(["--grid", "park", "--output", str(tmp_path / "b"), "--seeds", "2", "--no-plots"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert sweep.main(["--grid", "park", "--output", str(tmp_path / "c"), "--points", "3", "--no-plots"]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


PARK_TEST_CELLS, PARK_TEST_MAX_POINTS = 60, 278  # the run in docs/exactness_sweep/park (42 min on 2 shared CPUs)


@pytest.mark.long  # 42 minutes: left out of the default and the slow runs (run it with `-m long`)
def test_park_sweep_reproduces_the_authors_fractions():
    """Soft k-means on the authors' generator and grid, 600 configurations (60 cells (d, k, n) with n <= 278 drawn with
    seed 0, each at ub = 1..10), against the authors' own runs of the same configurations (their results file).

    Each configuration is one random task on both sides, so the paired difference of the fractions has a standard
    error of 1-2 points here (0.9, 1.8 and 2.1 points at γ = 1, 10, 100 in the recorded run): the test asserts
    agreement within 3 standard errors and 5 points. The 3-point target needs about 4x as many configurations; the
    recorded run measured +1.0, +1.8 and -3.2 points. Softmax Lloyd, a different algorithm, fails the same check at
    γ = 1 and 100 (-3.5 ± 0.75 and -14.3 ± 2.1 points), so it discriminates. Hardmax Lloyd is within 1e-3 in all runs
    but float32 near-ties (at most 1 %)."""
    configurations = sweep.subsample(sweep.park_configurations(max_points=PARK_TEST_MAX_POINTS), PARK_TEST_CELLS, 0)
    assert len(configurations) == 10 * PARK_TEST_CELLS
    rows = sweep.run_park_sweep(configurations, progress=False)
    summary = {(entry["method"], entry["gamma"]): entry for entry in sweep.summarize_park(rows)}
    for gamma in (1.0, 10.0, 100.0):
        soft = summary[("soft", gamma)]
        assert soft["runs"] == len(configurations)
        assert abs(soft["paired_difference"]) <= min(0.05, 3 * soft["paired_error"]), soft
    softmax = summary[("softmax", 100.0)]
    assert abs(softmax["paired_difference"]) > 3 * softmax["paired_error"]  # another algorithm is told apart
    assert summary[("hardmax", None)]["fraction_within"] >= 0.99
