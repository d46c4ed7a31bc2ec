#!/usr/bin/env python
# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Exactness sweep: the k-means transformer against Lloyd's algorithm over a grid of clustering problems.

Park et al. (*Finding Clustering Algorithms in the Transformer Architecture*, arXiv:2506.19125) compare the k-means
objective reached by their transformer after 10 iterations with the one reached by Lloyd's algorithm, over a grid of
dimensions, cluster counts, point counts and data scales, with softmax attention at inverse temperatures
γ in {1, 10, 100}. This script repeats that study for `KMeansTransformerModel`, with softmax attention
(`attn_implementation="eager"`) at each γ and with the exact `"hardmax"` attention (the default).

For every configuration `(d, k, n, scale)` and seed, the points are a Gaussian mixture of `k` components
(`kmeans_transformer.validation.gaussian_mixture`) multiplied by `scale`, the initial centroids are `k` distinct points
drawn at random from the data, and the model (float64, all seeds of a configuration in one batch) and the reference
loop (`kmeans_transformer.reference.lloyd`) run the same number of iterations from the same centroids. Recorded per
run and method:

- `abs_log_difference = |log J_model - log J_lloyd|` (natural logarithm), where `J` is the k-means objective of the
  returned centroids: the sum of squared distances of the points to their nearest returned centroid;
- `label_agreement`: the fraction of points whose nearest returned centroid has the same index in both (centroid `j`
  of the model starts from centroid `j` of Lloyd's, so indices are comparable without matching).

Outputs, in `--output DIR`: `sweep.csv` (one row per configuration, seed and method), `summary.md` (per method: the
fraction of runs within 1e-3, the largest and median difference, the machine, date and library versions) and one
heatmap per method (`heatmap_<method>.png`).

Hardmax is Lloyd's algorithm computed through attention, so it must take the same decision at every assignment; its
objective then differs from the reference only by floating-point rounding (the mean of a cluster is a weighted sum
in the model and a sum divided by a count in the reference), a few units in the last place. The run fails (exit
status 1) if a hardmax run disagrees on any label or differs by more than `--hardmax-tolerance` (default 1e-12), so
the script doubles as a check.

Park et al.'s grid (`--grid park`) repeats their sweep as they ran it, to compare with their published fractions
(3.5 %, 34 % and 62 % of runs within 1e-3 at γ = 1, 10, 100): their generator (`park_task`: k centres uniform in
[0, 1]^d, n // k points around each with N(0, 0.1²) coordinates, every coordinate min-max scaled to [0, ub], shuffled,
the first k points the initial centroids; `kmeans_transformer.tasks.TaskDistribution` with `exact_counts=True`), their
grid (d in 1..10, k in 5..50 step 5, n in logspace(2, 6, 10), ub in 1..10, one task per configuration), float32 and
10 iterations. Their swept model is soft k-means (softmax assignment, normalised linear update), which is
`variant="soft"` here; the run also records softmax Lloyd (`variant="lloyd"` under eager softmax at γ) and hardmax
Lloyd. The full grid (10,000 configurations, n up to 10^6) is slow on a CPU: `--subsample N --seed S` draws N cells
(d, k, n) and runs each at every ub as one batch, and `--max-points` caps n. The summary gives, per γ, their published
fraction, their fraction over the same configurations (from their results file, shipped as
`scripts/park_sweep_authors.csv`) and ours per method, with the paired difference and its standard error.

Usage:

    python scripts/exactness_sweep.py --output /tmp/sweep            # the default grid
    python scripts/exactness_sweep.py --output /tmp/sweep --quick    # a small grid, a few seconds
    python scripts/exactness_sweep.py --output /tmp/sweep --dims 2 16 --gammas 1 1000 --seeds 5 --overwrite
    python scripts/exactness_sweep.py --output /tmp/park --grid park --subsample 60 --seed 0 --max-points 278

Needs matplotlib for the heatmaps (`pip install matplotlib`, or pass `--no-plots`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.tasks import TaskDistribution
from kmeans_transformer.validation import gaussian_mixture
from kmeans_transformer.reference import assign_labels, lloyd
from kmeans_transformer.reference import inertia as objective


DEFAULT_GRID = {
    "dims": (2, 8, 32),
    "clusters": (2, 4, 8, 16),
    "points": (100, 1000),
    "scales": (0.1, 1.0, 10.0),
    "seeds": 3,
    "gammas": (1.0, 10.0, 100.0),
    "iterations": 10,
}
QUICK_GRID = {
    "dims": (2, 8),
    "clusters": (2, 4),
    "points": (100,),
    "scales": (0.1, 1.0, 10.0),
    "seeds": 2,
    "gammas": (1.0, 10.0, 100.0),
    "iterations": 10,
}
COLUMNS = (
    "method",
    "gamma",
    "d",
    "k",
    "n",
    "scale",
    "seed",
    "log_objective_model",
    "log_objective_lloyd",
    "abs_log_difference",
    "label_agreement",
)
THRESHOLD = 1e-3  # the "within" threshold on |log J_model - log J_lloyd|
HEATMAP_FLOOR = 1e-17  # added before log10, so that an exact match shows as -17
HARDMAX_TOLERANCE = 1e-12
HEATMAP_AXES = {"d,k": ("d", "k", "n"), "k,n": ("k", "n", "d")}  # rows, columns, the axis the median runs over
# Fractions of configurations whose log-objective is within 1e-3 of Lloyd's, as reported by Park et al.
PAPER_FRACTIONS = {1.0: 0.035, 10.0: 0.34, 100.0: 0.62}
CSV_NAME = "sweep.csv"
SUMMARY_NAME = "summary.md"


def method_key(gamma: float | None) -> str:
    """`"hardmax"`, or `"softmax_gamma<γ>"`: the name used for a method in file names and tables."""
    return "hardmax" if gamma is None else f"softmax_gamma{gamma:g}"


def method_label(gamma: float | None) -> str:
    return "hardmax (exact)" if gamma is None else f"softmax, γ = {gamma:g}"


def build_model(
    num_clusters: int, point_dim: int, iterations: int, gamma: float | None, dtype: torch.dtype = torch.float64
) -> KMeansTransformerModel:
    """The analytic Lloyd model: exact hardmax attention if `gamma` is None, else softmax at stiffness `gamma`."""
    if gamma is None:
        config = KMeansTransformerConfig(num_clusters=num_clusters, point_dim=point_dim, num_iterations=iterations)
    else:
        config = KMeansTransformerConfig(
            num_clusters=num_clusters,
            point_dim=point_dim,
            num_iterations=iterations,
            inverse_temperature=float(gamma),
            attn_implementation="eager",
        )
    return KMeansTransformerModel(config).to(dtype).eval()


def log_difference(model_objective: float, lloyd_objective: float) -> tuple[float, float, float]:
    """`(log J_model, log J_lloyd, |difference|)`; equal objectives differ by 0, even when both are 0."""
    log_model = math.log(model_objective) if model_objective > 0 else -math.inf
    log_lloyd = math.log(lloyd_objective) if lloyd_objective > 0 else -math.inf
    if model_objective == lloyd_objective:
        return log_model, log_lloyd, 0.0
    return log_model, log_lloyd, abs(log_model - log_lloyd)


def make_problem(d: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled points `(n, d)` of a `k`-component Gaussian mixture and the indices of `k` distinct initial points.

    The generator depends on `(seed, d, k, n)` only, so every data scale rescales the same problem.
    """
    generator = np.random.default_rng([seed, d, k, n])
    points = gaussian_mixture(generator, n, d, k)
    initial = generator.choice(n, size=k, replace=False)
    return points, initial


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with huggingface_hub; without it, run silently
        return None
    return tqdm(total=total, desc="configurations", unit="config", disable=not enabled, file=sys.stderr)


@torch.inference_mode()
def run_sweep(
    dims: Iterable[int] = DEFAULT_GRID["dims"],
    clusters: Iterable[int] = DEFAULT_GRID["clusters"],
    points: Iterable[int] = DEFAULT_GRID["points"],
    scales: Iterable[float] = DEFAULT_GRID["scales"],
    seeds: int = DEFAULT_GRID["seeds"],
    gammas: Iterable[float] = DEFAULT_GRID["gammas"],
    iterations: int = DEFAULT_GRID["iterations"],
    progress: bool = True,
) -> list[dict]:
    """
    Run every configuration `(d, k, n, scale)` for seeds `0 .. seeds - 1`, with softmax attention at each γ in
    `gammas` and with hardmax, against the reference Lloyd loop. Returns one dict per configuration, seed and method,
    with the keys `COLUMNS` (`gamma` is None for hardmax). Configurations with `k > n` are skipped.
    """
    dims, clusters, points, scales = list(dims), list(clusters), list(points), list(scales)
    methods = [None, *[float(gamma) for gamma in gammas]]
    cells = [(d, k, n) for d in dims for k in clusters for n in points if k <= n]
    bar = _progress(len(cells) * len(scales), progress)
    rows: list[dict] = []
    models: dict[tuple, KMeansTransformerModel] = {}
    try:
        for d, k, n in cells:
            problems = [make_problem(d, k, n, seed) for seed in range(seeds)]
            for scale in scales:
                batch = np.stack([base * scale for base, _ in problems])  # (seeds, n, d)
                initial = np.stack([batch[s, chosen] for s, (_, chosen) in enumerate(problems)])  # (seeds, k, d)
                references = [lloyd(batch[s], initial[s], iterations) for s in range(seeds)]
                points_tensor, initial_tensor = torch.from_numpy(batch), torch.from_numpy(initial)
                for gamma in methods:
                    key = (d, k, gamma)
                    if key not in models:
                        models[key] = build_model(k, d, iterations, gamma)
                    output = models[key](points_tensor, centroids=initial_tensor)
                    # both objectives by the same formula (the reference's), so only the centroids differ
                    model_centroids = output.centroids.numpy()
                    model_objectives = [
                        objective(batch[s], assign_labels(batch[s], model_centroids[s]), model_centroids[s])
                        for s in range(seeds)
                    ]
                    model_labels = output.labels.numpy()
                    for seed, reference in enumerate(references):
                        log_model, log_lloyd, difference = log_difference(model_objectives[seed], reference.inertia)
                        rows.append(
                            {
                                "method": "hardmax" if gamma is None else "softmax",
                                "gamma": gamma,
                                "d": d,
                                "k": k,
                                "n": n,
                                "scale": scale,
                                "seed": seed,
                                "log_objective_model": log_model,
                                "log_objective_lloyd": log_lloyd,
                                "abs_log_difference": difference,
                                "label_agreement": float(np.mean(model_labels[seed] == reference.labels)),
                            }
                        )
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------------


def _gamma_of(row: dict) -> float | None:
    return None if row["gamma"] in (None, "") else float(row["gamma"])


def group_by_method(rows: Sequence[dict]) -> dict[float | None, list[dict]]:
    """Rows per method, hardmax first, then softmax by increasing γ."""
    groups: dict[float | None, list[dict]] = {}
    for row in rows:
        groups.setdefault(_gamma_of(row), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0] is not None, item[0] or 0.0)))


def summarize(rows: Sequence[dict], threshold: float = THRESHOLD) -> list[dict]:
    """Per method: runs, fraction within `threshold`, max and median difference, exact objectives, label agreement."""
    summary = []
    for gamma, group in group_by_method(rows).items():
        differences = [row["abs_log_difference"] for row in group]
        agreements = [row["label_agreement"] for row in group]
        summary.append(
            {
                "method": method_key(gamma),
                "gamma": gamma,
                "runs": len(group),
                "fraction_within": sum(difference <= threshold for difference in differences) / len(group),
                "max_difference": max(differences),
                "median_difference": statistics.median(differences),
                "identical_objective": sum(difference == 0 for difference in differences) / len(group),
                "mean_label_agreement": statistics.fmean(agreements),
                "all_labels_agree": all(agreement == 1.0 for agreement in agreements),
            }
        )
    return summary


def hardmax_failures(rows: Sequence[dict], tolerance: float = HARDMAX_TOLERANCE) -> list[dict]:
    """Hardmax runs that disagree with Lloyd's algorithm on a label or by more than `tolerance` in log-objective."""
    return [
        row
        for row in rows
        if _gamma_of(row) is None and (row["label_agreement"] != 1.0 or not row["abs_log_difference"] <= tolerance)
    ]


def summary_table(summary: Sequence[dict], threshold: float = THRESHOLD) -> str:
    """The per-method summary as a Markdown table."""
    lines = [
        f"| method | runs | within {threshold:g} | max abs log diff | median abs log diff | identical objective "
        "| mean label agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in summary:
        lines.append(
            f"| {method_label(entry['gamma'])} | {entry['runs']} | {entry['fraction_within']:.1%} "
            f"| {entry['max_difference']:.3g} | {entry['median_difference']:.3g} "
            f"| {entry['identical_objective']:.1%} | {entry['mean_label_agreement']:.4f} |"
        )
    return "\n".join(lines)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The processor's model name (`lscpu`'s "Model name", read from /proc/cpuinfo), or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def environment() -> dict[str, str]:
    """The machine, the date and the library versions, for the record."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {platform.platform()}, {os.cpu_count()} CPUs "
        f"(torch uses {torch.get_num_threads()} threads)",
        "python": platform.python_version(),
        "kmeans-transformer": _version("kmeans-transformer"),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "numpy": np.__version__,
        "matplotlib": _version("matplotlib"),
    }


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "gamma": "" if row["gamma"] is None else f"{row['gamma']:g}"})


def read_csv(path: Path) -> list[dict]:
    """Rows of a `sweep.csv`, with numbers parsed (`gamma` None for hardmax)."""
    integers, floats = ("d", "k", "n", "seed"), (
        "scale",
        "log_objective_model",
        "log_objective_lloyd",
        "abs_log_difference",
        "label_agreement",
    )
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = dict(row)
            parsed["gamma"] = None if row["gamma"] == "" else float(row["gamma"])
            parsed.update({name: int(row[name]) for name in integers})
            parsed.update({name: float(row[name]) for name in floats})
            rows.append(parsed)
    return rows


def write_summary(
    path: Path,
    summary: Sequence[dict],
    grid: dict,
    elapsed: float,
    failures: Sequence[dict],
    tolerance: float,
    heatmaps: Sequence[str],
) -> None:
    env = environment()
    lines = [
        "# Exactness sweep on this project's grid: k-means transformer vs Lloyd's algorithm",
        "",
        f"Difference measured: `|log J_model - log J_lloyd|` (natural log), `J` the k-means objective of the centroids "
        f"returned after {grid['iterations']} iterations, float64, initial centroids = k distinct data points drawn at "
        "random (the same for both). One run = one configuration and seed.",
        "",
        f"Grid: d in {list(grid['dims'])}, k in {list(grid['clusters'])}, n in {list(grid['points'])}, "
        f"data scale in {list(grid['scales'])}, {grid['seeds']} seeds, softmax γ in {list(grid['gammas'])}.",
        "",
        summary_table(summary),
        "",
        "This grid and its data (well-separated Gaussian mixtures, float64, `variant=\"lloyd\"` under softmax) are "
        "not Park et al.'s; for a comparison with their published fractions run `--grid park`.",
        "",
        f"Hardmax check (every label agrees and the difference is at most {tolerance:g}): "
        + ("passed." if not failures else f"**FAILED** in {len(failures)} runs."),
        "",
        "## Environment",
        "",
        *(f"- {name}: {value}" for name, value in env.items()),
        f"- run time: {elapsed:.1f} s",
        "",
    ]
    if heatmaps:
        lines += [
            "## Heatmaps",
            "",
            "Colour and cell text: median of log10(|log J_model - log J_lloyd| + 1e-17); -17 is an exact match.",
            "",
            *(f"![{name}]({name})" for name in heatmaps),
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Heatmaps
# ---------------------------------------------------------------------------------------------------------------------


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The heatmaps need matplotlib, which is not installed: pip install matplotlib (or pass --no-plots)."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap_grid(rows: Sequence[dict], scale: float, axes: str = "d,k") -> tuple[list, list, np.ndarray]:
    """Row values, column values and the `(rows, columns)` medians of log10(difference + floor) at one data scale."""
    row_axis, column_axis, _ = HEATMAP_AXES[axes]
    row_values = sorted({row[row_axis] for row in rows})
    column_values = sorted({row[column_axis] for row in rows})
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        if row["scale"] == scale:
            cells.setdefault((row[row_axis], row[column_axis]), []).append(
                math.log10(row["abs_log_difference"] + HEATMAP_FLOOR)
            )
    values = np.full((len(row_values), len(column_values)), np.nan)
    for i, row_value in enumerate(row_values):
        for j, column_value in enumerate(column_values):
            if (row_value, column_value) in cells:
                values[i, j] = statistics.median(cells[(row_value, column_value)])
    return row_values, column_values, values


def plot_heatmaps(rows: Sequence[dict], output: Path, axes: str = "d,k") -> list[str]:
    """One figure per method, one panel per data scale; returns the file names written."""
    plt = _require_matplotlib()
    row_axis, column_axis, median_axis = HEATMAP_AXES[axes]
    scales = sorted({row["scale"] for row in rows})
    finite = [math.log10(row["abs_log_difference"] + HEATMAP_FLOOR) for row in rows]
    vmin = math.log10(HEATMAP_FLOOR)
    vmax = max(0.0, max((value for value in finite if math.isfinite(value)), default=0.0))
    names = []
    for gamma, group in group_by_method(rows).items():
        figure, panels = plt.subplots(
            1, len(scales), figsize=(3.6 * len(scales) + 1.2, 3.4), squeeze=False, constrained_layout=True
        )
        image = None
        for panel, scale in zip(panels[0], scales):
            row_values, column_values, values = heatmap_grid(group, scale, axes)
            image = panel.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
            panel.set_xticks(range(len(column_values)), [str(value) for value in column_values])
            panel.set_yticks(range(len(row_values)), [str(value) for value in row_values])
            panel.set_xlabel(column_axis)
            panel.set_ylabel(row_axis)
            panel.set_title(f"data scale {scale:g}")
            for i in range(len(row_values)):
                for j in range(len(column_values)):
                    if np.isfinite(values[i, j]):
                        text_colour = "white" if values[i, j] < (vmin + vmax) / 2 else "black"
                        panel.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color=text_colour, fontsize=8)
        figure.colorbar(image, ax=panels[0].tolist(), label="log10(|Δ log J| + 1e-17)")
        figure.suptitle(f"{method_label(gamma)}: median over {median_axis} and seeds")
        name = f"heatmap_{method_key(gamma)}.png"
        figure.savefig(output / name, dpi=110)
        plt.close(figure)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------------------
# Park et al.'s grid (`--grid park`)
# ---------------------------------------------------------------------------------------------------------------------

# The grid of the authors' sweep (`klic_parameter_sweep.py` in github.com/rithram/kmeans-trf): 10 x 10 x 10 x 10
# configurations, one task each, float32, 10 iterations.
PARK_GRID = {
    "dims": tuple(range(1, 11)),
    "clusters": tuple(range(5, 55, 5)),
    "points": tuple(int(n) for n in np.logspace(2, 6, 10)),  # 100, 278, 774, ..., 359381, 1000000
    "upper_bounds": tuple(range(1, 11)),
    "gammas": (1.0, 10.0, 100.0),
    "iterations": 10,
}
PARK_NOISE_SCALE = 0.1  # per-coordinate standard deviation around each centre (their covariance 0.01 I)
PARK_DTYPE = torch.float32
PARK_METHODS = ("soft", "softmax", "hardmax")  # variant="soft"; variant="lloyd" under softmax; exact Lloyd
PARK_METHOD_LABELS = {
    "soft": 'soft k-means (`variant="soft"`, their algorithm)',
    "softmax": 'softmax Lloyd (`variant="lloyd"`, `attn_implementation="eager"`)',
    "hardmax": 'hardmax Lloyd (`variant="lloyd"`, exact)',
}
PARK_COLUMNS = (
    "method",
    "gamma",
    "d",
    "k",
    "n",
    "upper_bound",
    "log_objective_model",
    "log_objective_lloyd",
    "abs_log_difference",
    "label_agreement",
    "lloyd_empty_cluster",
)
# Per configuration, whether the authors' run was within 1e-3 (1), not (0) or NaN (their Lloyd loop emptied a
# cluster): derived from results/klic_parameter_sweep.csv of github.com/rithram/kmeans-trf (MIT License,
# Copyright (c) 2026 Parikshit Ram) as |Loss| < 1e-3, Loss = log J_transformer - log J_lloyd.
AUTHORS_CSV = Path(__file__).resolve().with_name("park_sweep_authors.csv")
FIGURE_NAME = "fractions.png"


def park_configurations(grid: dict = PARK_GRID, max_points: int | None = None) -> list[dict]:
    """Every configuration `{d, k, n, upper_bound}` of `grid` with `k <= n` (and `n <= max_points` if given)."""
    return [
        {"d": d, "k": k, "n": n, "upper_bound": ub}
        for d in grid["dims"]
        for k in grid["clusters"]
        for n in grid["points"]
        for ub in grid["upper_bounds"]
        if k <= n and (max_points is None or n <= max_points)
    ]


def cell_of(configuration: dict) -> tuple[int, int, int]:
    """`(d, k, n)`: the configurations of a cell differ only in `upper_bound` and run as one batch."""
    return configuration["d"], configuration["k"], configuration["n"]


def subsample(configurations: Sequence[dict], size: int | None, seed: int) -> list[dict]:
    """The configurations of `size` cells `(d, k, n)` drawn uniformly without replacement by
    `numpy.random.default_rng(seed)` (every `upper_bound` of a drawn cell), in grid order; all of them when `size` is
    None or not smaller than the number of cells."""
    cells = list(dict.fromkeys(cell_of(configuration) for configuration in configurations))
    if size is None or size >= len(cells):
        return list(configurations)
    chosen = {cells[i] for i in np.random.default_rng(seed).choice(len(cells), size=size, replace=False)}
    return [configuration for configuration in configurations if cell_of(configuration) in chosen]


def park_task(configuration: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The authors' task for one configuration, in float32: points `(k (n // k), d)` and the initial centroids.

    `k` centres uniform in `[0, 1]^d`, `n // k` points around each with N(0, 0.1²) coordinates, every coordinate
    min-max scaled to `[0, upper_bound]`, the points shuffled and the first `k` taken as initial centroids
    (`kmeans_transformer.tasks.TaskDistribution` with `exact_counts=True`). The generator is seeded by the seed and
    the configuration, so a configuration's task does not depend on which others are run.
    """
    d, k, n, ub = (configuration[name] for name in ("d", "k", "n", "upper_bound"))
    distribution = TaskDistribution(
        num_points=n, num_clusters=k, dim=d, scale=PARK_NOISE_SCALE, upper_bound=float(ub), exact_counts=True
    )
    points = distribution.sample(np.random.default_rng([seed, d, k, n, ub]))["points"].astype(np.float32)
    return points, points[:k].copy()


def build_park_model(method: str, num_clusters: int, point_dim: int, iterations: int, gamma: float | None):
    """The float32 model of one method: `soft` and `softmax` at stiffness `gamma`, `hardmax` without one."""
    if method == "soft":
        config = KMeansTransformerConfig(
            num_clusters=num_clusters, point_dim=point_dim, num_iterations=iterations, variant="soft",
            inverse_temperature=float(gamma),
        )
        return KMeansTransformerModel(config).to(PARK_DTYPE).eval()
    return build_model(num_clusters, point_dim, iterations, None if method == "hardmax" else gamma, PARK_DTYPE)


def lloyd_emptied_a_cluster(label_history: np.ndarray, k: int) -> bool:
    """Whether some iteration of Lloyd's loop left a cluster without points (the authors' loop then returns NaN)."""
    return any(np.bincount(labels, minlength=k).min() == 0 for labels in label_history)


@torch.inference_mode()
def run_park_sweep(
    configurations: Sequence[dict],
    gammas: Iterable[float] = PARK_GRID["gammas"],
    iterations: int = PARK_GRID["iterations"],
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """
    Per configuration, one task of the authors' generator (`park_task`), Lloyd's algorithm in float32
    (`kmeans_transformer.reference.lloyd`) and the float32 model of each method (`soft` and `softmax` at every γ,
    `hardmax` once) from the same initial centroids; the configurations of a cell `(d, k, n)` run as one batch.
    Both objectives are evaluated in float64 from the float32 centroids. Returns one dict per configuration and
    method with the keys `PARK_COLUMNS`.
    """
    gammas = [float(gamma) for gamma in gammas]
    methods = [("hardmax", None), *[(method, gamma) for gamma in gammas for method in ("soft", "softmax")]]
    cells: dict[tuple, list[dict]] = {}
    for configuration in configurations:
        cells.setdefault(cell_of(configuration), []).append(configuration)
    bar = _progress(len(configurations), progress)
    rows: list[dict] = []
    try:
        for (d, k, n), group in cells.items():
            tasks = [park_task(configuration, seed) for configuration in group]
            points = np.stack([task_points for task_points, _ in tasks])  # (configurations, k (n // k), d)
            initial = np.stack([task_initial for _, task_initial in tasks])
            points64 = points.astype(np.float64)
            references = [lloyd(points[b], initial[b], iterations) for b in range(len(group))]
            lloyd_objectives = [
                objective(points64[b], assign_labels(points64[b], centroids), centroids)
                for b, centroids in enumerate(reference.centroids.astype(np.float64) for reference in references)
            ]
            points_tensor, initial_tensor = torch.from_numpy(points), torch.from_numpy(initial)
            for method, gamma in methods:
                output = build_park_model(method, k, d, iterations, gamma)(points_tensor, centroids=initial_tensor)
                model_centroids = output.centroids.double().numpy()
                model_labels = output.labels.numpy()
                for b, configuration in enumerate(group):
                    labels = assign_labels(points64[b], model_centroids[b])
                    log_model, log_lloyd, difference = log_difference(
                        objective(points64[b], labels, model_centroids[b]), lloyd_objectives[b]
                    )
                    rows.append(
                        {
                            "method": method,
                            "gamma": gamma,
                            **configuration,
                            "log_objective_model": log_model,
                            "log_objective_lloyd": log_lloyd,
                            "abs_log_difference": difference,
                            "label_agreement": float(np.mean(model_labels[b] == references[b].labels)),
                            "lloyd_empty_cluster": int(lloyd_emptied_a_cluster(references[b].label_history, k)),
                        }
                    )
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()
    return rows


def read_authors_results(path: Path = AUTHORS_CSV) -> dict[tuple[int, int, int, int], dict[float, float]]:
    """The authors' outcome per configuration `(d, k, n, upper_bound)` and γ: 1.0 within 1e-3, 0.0 not, NaN where
    their run gave NaN (counted as not within in their fractions)."""
    results = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (int(row["d"]), int(row["k"]), int(row["n"]), int(row["upper_bound"]))
            results[key] = {
                float(name.removeprefix("within_gamma")): float(value)
                for name, value in row.items()
                if name.startswith("within_gamma")
            }
    return results


def authors_fraction(
    configurations: Sequence[dict], gamma: float, results: dict | None = None
) -> tuple[float, int] | None:
    """The authors' fraction within 1e-3 at `gamma` over `configurations` (NaN runs count as not within, as in their
    published fractions) and the number of configurations found; None if none is in their grid."""
    results = read_authors_results() if results is None else results
    outcomes = [
        results[key][gamma]
        for key in ((c["d"], c["k"], c["n"], c["upper_bound"]) for c in configurations)
        if key in results and gamma in results[key]
    ]
    if not outcomes:
        return None
    return sum(outcome == 1.0 for outcome in outcomes) / len(outcomes), len(outcomes)


def summarize_park(rows: Sequence[dict], results: dict | None = None, threshold: float = THRESHOLD) -> list[dict]:
    """Per method and γ: runs, the fraction within `threshold` (strictly below, as the authors count), the fraction
    of runs where Lloyd's loop emptied a cluster, the median difference, the mean label agreement, and the paired
    difference from the authors' runs of the same configurations at the same γ (`paired_difference`, with its
    standard error `paired_error`; None for hardmax)."""
    results = read_authors_results() if results is None else results
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], _gamma_of(row)), []).append(row)
    summary = []
    for (method, gamma), group in sorted(
        groups.items(), key=lambda item: (PARK_METHODS.index(item[0][0]), item[0][1] or 0.0)
    ):
        differences = [row["abs_log_difference"] for row in group]
        paired = []
        for row in group:
            theirs = results.get((row["d"], row["k"], row["n"], row["upper_bound"]), {})
            if gamma in theirs:
                paired.append(float(row["abs_log_difference"] < threshold) - float(theirs[gamma] == 1.0))
        summary.append(
            {
                "method": method,
                "gamma": gamma,
                "runs": len(group),
                "fraction_within": sum(difference < threshold for difference in differences) / len(group),
                "lloyd_empty": sum(row["lloyd_empty_cluster"] for row in group) / len(group),
                "median_difference": statistics.median(differences),
                "mean_label_agreement": statistics.fmean(row["label_agreement"] for row in group),
                "paired_difference": statistics.fmean(paired) if paired else None,
                "paired_error": statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else None,
            }
        )
    return summary


def configurations_of(rows: Sequence[dict]) -> list[dict]:
    """The distinct configurations of park rows, in order of appearance."""
    seen = {}
    for row in rows:
        seen.setdefault((row["d"], row["k"], row["n"], row["upper_bound"]), None)
    return [{"d": d, "k": k, "n": n, "upper_bound": ub} for d, k, n, ub in seen]


def park_fractions(rows: Sequence[dict], results: dict | None = None) -> list[dict]:
    """Per γ: the authors' published fraction, theirs on the same configurations, and ours per method."""
    results = read_authors_results() if results is None else results
    summary = summarize_park(rows, results)
    ours = {(entry["method"], entry["gamma"]): entry["fraction_within"] for entry in summary}
    configurations = configurations_of(rows)
    gammas = sorted({gamma for method, gamma in ours if gamma is not None})
    table = []
    for gamma in gammas:
        theirs = authors_fraction(configurations, gamma, results)
        table.append(
            {
                "gamma": gamma,
                "published": PAPER_FRACTIONS.get(gamma),
                "authors_same_configurations": None if theirs is None else theirs[0],
                "authors_configurations": 0 if theirs is None else theirs[1],
                **{method: ours.get((method, None if method == "hardmax" else gamma)) for method in PARK_METHODS},
            }
        )
    return table


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def park_table(fractions: Sequence[dict]) -> str:
    """The comparison as a Markdown table: γ, the authors' fractions, ours per method."""
    lines = [
        "| γ | Park et al., published (10,000 configurations) | Park et al., same configurations as ours "
        "| ours: soft k-means (their algorithm) | ours: softmax Lloyd | ours: hardmax Lloyd |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in fractions:
        lines.append(
            f"| {entry['gamma']:g} | {_percent(entry['published'])} | {_percent(entry['authors_same_configurations'])} "
            f"| {_percent(entry['soft'])} | {_percent(entry['softmax'])} | {_percent(entry['hardmax'])} |"
        )
    return "\n".join(lines)


def park_detail_table(summary: Sequence[dict]) -> str:
    """Per method and γ: the fraction within, the paired difference from the authors (± 2 standard errors), the median
    difference, the label agreement with Lloyd's algorithm and the runs where Lloyd's loop emptied a cluster."""
    lines = [
        "| method | γ | runs | within 1e-3 | ours − theirs, same configurations (± 2 SE) | median abs log diff "
        "| mean label agreement | Lloyd emptied a cluster |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in summary:
        gamma = "" if entry["gamma"] is None else f"{entry['gamma']:g}"
        paired = "" if entry["paired_difference"] is None else f"{100 * entry['paired_difference']:+.1f}"
        if entry["paired_error"] is not None:
            paired += f" ± {200 * entry['paired_error']:.1f} points"
        lines.append(
            f"| {entry['method']} | {gamma} | {entry['runs']} | {entry['fraction_within']:.1%} | {paired} "
            f"| {entry['median_difference']:.3g} | {entry['mean_label_agreement']:.4f} | {entry['lloyd_empty']:.1%} |"
        )
    return "\n".join(lines)


def write_park_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PARK_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "gamma": "" if row["gamma"] is None else f"{row['gamma']:g}"})


def plot_park_fractions(fractions: Sequence[dict], output: Path) -> str:
    """Grouped bars: fraction within 1e-3 per γ, the authors' and ours."""
    plt = _require_matplotlib()
    series = [
        ("published", "Park et al., published"),
        ("authors_same_configurations", "Park et al., same configurations"),
        ("soft", "ours: soft k-means"),
        ("softmax", "ours: softmax Lloyd"),
        ("hardmax", "ours: hardmax Lloyd"),
    ]
    figure, axis = plt.subplots(figsize=(7.5, 3.6), constrained_layout=True)
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        values = [np.nan if entry[key] is None else 100 * entry[key] for entry in fractions]
        axis.bar(np.arange(len(fractions)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    axis.set_xticks(range(len(fractions)), [f"γ = {entry['gamma']:g}" for entry in fractions])
    axis.set_ylabel("runs within 1e-3 of Lloyd (%)")
    axis.set_ylim(0, 105)
    axis.legend(fontsize=8, loc="upper left")
    figure.savefig(output / FIGURE_NAME, dpi=110)
    plt.close(figure)
    return FIGURE_NAME


def write_park_summary(path: Path, rows: Sequence[dict], selection: dict, elapsed: float, figure: str | None) -> None:
    env = environment()
    results = read_authors_results()
    fractions = park_fractions(rows, results)
    lines = [
        "# Park et al.'s sweep: soft k-means, softmax Lloyd and hardmax Lloyd against Lloyd's algorithm",
        "",
        "The authors' generator and grid (their `klic_parameter_sweep.py`): k centres uniform in [0, 1]^d, n // k "
        "points around each with N(0, 0.1²) coordinates, every coordinate min-max scaled to [0, ub], the points "
        "shuffled, the first k the initial centroids; d in 1..10, k in 5..50 (step 5), n in logspace(2, 6, 10), "
        "ub in 1..10; float32, 10 iterations, one task per configuration. A run is within when "
        "|log J_model - log J_lloyd| < 1e-3 (natural log; J the k-means objective of the returned centroids).",
        "",
        f"Configurations: {selection['description']}.",
        "",
        park_table(fractions),
        "",
        "Park et al., published: their fractions (arXiv:2506.19125), which their results file reproduces over all "
        "10,000 configurations. Park et al., same configurations: their results file restricted to the "
        f"configurations run here ({fractions[0]['authors_configurations'] if fractions else 0} found), which removes "
        "the sampling error of the subsample. Their runs where Lloyd's loop empties a cluster are NaN and count as "
        "not within; ours keep the empty centroid (see the last column below).",
        "",
        park_detail_table(summarize_park(rows, results)),
        "",
        "## Environment",
        "",
        f"- command: `{selection['command']}`",
        *(f"- {name}: {value}" for name, value in env.items()),
        f"- run time: {elapsed:.1f} s",
        "",
    ]
    if figure:
        lines += [f"![{figure}]({figure})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare the k-means objective of the k-means transformer (softmax at several γ, and exact "
        "hardmax) with Lloyd's algorithm over a grid of Gaussian-mixture problems: this project's grid (default) or "
        "Park et al.'s (--grid park).",
        epilog="Exit status: 0 if hardmax matches Lloyd's algorithm in every run (checked on this project's grid "
        "only), 1 if not, 2 on a usage error.",
    )
    parser.add_argument("--output", required=True, type=Path, help="directory for sweep.csv, summary.md and PNGs")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty directory (only the files "
                        "this script writes are replaced; nothing is deleted)")
    parser.add_argument("--grid", choices=("ours", "park"), default="ours",
                        help="'ours' (default): Gaussian mixtures in float64, several scales and seeds; 'park': the "
                        "authors' generator and grid in float32, soft k-means, softmax and hardmax Lloyd, compared "
                        "with their published fractions")
    parser.add_argument("--quick", action="store_true", help="a small grid (grid options given explicitly still "
                        "apply; --grid ours only)")
    grid = parser.add_argument_group(
        "grid (defaults: %s; with --grid park: %s)" % (
            ", ".join(f"{k}={v}" for k, v in DEFAULT_GRID.items()),
            ", ".join(f"{k}={v}" for k, v in PARK_GRID.items()),
        )
    )
    grid.add_argument("--dims", nargs="+", type=_positive(int), help="point dimensions d")
    grid.add_argument("--clusters", nargs="+", type=_positive(int), help="cluster counts k")
    grid.add_argument("--points", nargs="+", type=_positive(int), help="point counts n")
    grid.add_argument("--scales", nargs="+", type=_positive(float), help="data scales (multiply the points; --grid "
                      "ours only)")
    grid.add_argument("--seeds", type=_positive(int), help="number of seeds per configuration (--grid ours only)")
    grid.add_argument("--gammas", nargs="*", type=_positive(float), help="softmax inverse temperatures γ (none: "
                      "hardmax only)")
    grid.add_argument("--iterations", type=_non_negative_int, help="Lloyd iterations (model layers)")
    park = parser.add_argument_group("--grid park only")
    park.add_argument("--upper-bounds", nargs="+", type=_positive(int), help="min-max ranges ub (the points span "
                      "[0, ub] in every coordinate)")
    park.add_argument("--subsample", type=_positive(int), metavar="N", help="run N cells (d, k, n) drawn uniformly "
                      "without replacement, each at every ub (default: all)")
    park.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the subsample and of the tasks "
                      "(default %(default)s)")
    park.add_argument("--max-points", type=_positive(int), metavar="N", help="only configurations with n <= N "
                      "(the subsample is drawn from those)")
    parser.add_argument("--heatmap-axes", choices=sorted(HEATMAP_AXES), default="d,k", metavar="ROWS,COLUMNS",
                        help="rows,columns of the heatmaps, 'd,k' (default) or 'k,n'; the median runs over the "
                        "remaining axis and the seeds")
    parser.add_argument("--hardmax-tolerance", type=float, default=HARDMAX_TOLERANCE,
                        help="largest |Δ log J| accepted for hardmax (rounding only; default %(default)g)")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures (matplotlib not needed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_grid(args: argparse.Namespace) -> dict:
    """The grid: options given explicitly, else the quick grid with `--quick`, else the default grid."""
    base = QUICK_GRID if args.quick else DEFAULT_GRID
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in base.items()}


def output_files(gammas: Iterable[float]) -> list[str]:
    """The files a run writes (heatmaps included)."""
    return [CSV_NAME, SUMMARY_NAME, *(f"heatmap_{method_key(g)}.png" for g in [None, *map(float, gammas)])]


PARK_ONLY = ("upper_bounds", "subsample", "max_points")
OURS_ONLY = ("quick", "scales", "seeds")


def _misplaced_options(args: argparse.Namespace) -> list[str]:
    """The options given that the chosen grid does not read."""
    names = OURS_ONLY if args.grid == "park" else PARK_ONLY
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) not in (None, False)]


def _prepare_output(output: Path, overwrite: bool, written: Sequence[str], plots: bool) -> int:
    """0 when `output` may be written (and then exists), else 2 after printing why."""
    if output.exists() and not output.is_dir():
        print(f"error: --output {output} exists and is not a directory.", file=sys.stderr)
        return 2
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        print(
            f"error: --output {output} is not empty; pass --overwrite to write into it "
            f"(only {', '.join(written)} are replaced).",
            file=sys.stderr,
        )
        return 2
    if plots:
        try:
            _require_matplotlib()
        except ImportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    output.mkdir(parents=True, exist_ok=True)
    return 0


def resolve_park_grid(args: argparse.Namespace) -> dict:
    """Park et al.'s grid, with the options given explicitly replacing its values."""
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in PARK_GRID.items()}


def main_park(args: argparse.Namespace, argv: Sequence[str]) -> int:
    grid = resolve_park_grid(args)
    configurations = park_configurations(grid, args.max_points)
    if not configurations:
        print("error: the grid is empty (no configuration with k <= n and n <= --max-points).", file=sys.stderr)
        return 2
    status = _prepare_output(args.output, args.overwrite, [CSV_NAME, SUMMARY_NAME, FIGURE_NAME], not args.no_plots)
    if status:
        return status
    chosen = subsample(configurations, args.subsample, args.seed)
    cap = "" if args.max_points is None else f" with n <= {args.max_points}"
    if len(chosen) < len(configurations):
        description = (
            f"{len(chosen)} of the {len(configurations)} configurations{cap}: {args.subsample} cells (d, k, n) drawn "
            f"uniformly without replacement by numpy.random.default_rng({args.seed}), each at every ub in "
            f"{list(grid['upper_bounds'])}; each task drawn by numpy.random.default_rng([{args.seed}, d, k, n, ub])"
        )
    else:
        description = (
            f"all {len(configurations)} configurations{cap}; each task drawn by "
            f"numpy.random.default_rng([{args.seed}, d, k, n, ub])"
        )
    selection = {"description": description, "command": shlex.join(["python", "scripts/exactness_sweep.py", *argv])}

    start = time.perf_counter()
    rows = run_park_sweep(chosen, grid["gammas"], grid["iterations"], args.seed, progress=not args.no_progress)
    write_park_csv(rows, args.output / CSV_NAME)
    fractions = park_fractions(rows)
    figure = None if args.no_plots else plot_park_fractions(fractions, args.output)
    elapsed = time.perf_counter() - start
    write_park_summary(args.output / SUMMARY_NAME, rows, selection, elapsed, figure)
    print(park_table(fractions))
    print(f"\n{description}.\n{len(rows)} runs in {elapsed:.1f} s; results in {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    misplaced = _misplaced_options(args)
    if misplaced:
        print(f"error: {', '.join(misplaced)} do(es) not apply to --grid {args.grid}.", file=sys.stderr)
        return 2
    if args.grid == "park":
        return main_park(args, argv)
    grid = resolve_grid(args)
    output: Path = args.output
    status = _prepare_output(output, args.overwrite, output_files(grid["gammas"]), not args.no_plots)
    if status:
        return status

    start = time.perf_counter()
    rows = run_sweep(**grid, progress=not args.no_progress)
    if not rows:
        print("error: the grid is empty (every k exceeds every n).", file=sys.stderr)
        return 2
    write_csv(rows, output / CSV_NAME)
    heatmaps = [] if args.no_plots else plot_heatmaps(rows, output, args.heatmap_axes)
    elapsed = time.perf_counter() - start

    summary = summarize(rows)
    failures = hardmax_failures(rows, args.hardmax_tolerance)
    write_summary(output / SUMMARY_NAME, summary, grid, elapsed, failures, args.hardmax_tolerance, heatmaps)

    print(summary_table(summary))
    print(f"\n{len(rows)} runs in {elapsed:.1f} s; results in {output}")
    if failures:
        print(f"\nFAILED: hardmax differs from Lloyd's algorithm in {len(failures)} runs, e.g.:", file=sys.stderr)
        for row in failures[:5]:
            print(
                f"  d={row['d']} k={row['k']} n={row['n']} scale={row['scale']:g} seed={row['seed']}: "
                f"|Δ log J| = {row['abs_log_difference']:.3g}, label agreement {row['label_agreement']:.4f}",
                file=sys.stderr,
            )
        return 1
    tolerance = args.hardmax_tolerance
    print(f"hardmax matches Lloyd's algorithm in every run (labels identical, |Δ log J| <= {tolerance:g}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
