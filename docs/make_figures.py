#!/usr/bin/env python
# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Figures of `docs/variants.md`: every variant of the k-means transformer on one generated 2-D Gaussian mixture.

Each variant's model runs in float64 from the same initial centroids, with `output_hidden_states=True`; the centroid
trajectory is read off the hidden states (the `position` slice of the centroid tokens, which come after the point
tokens), and the final centroids are compared with the variant's independent NumPy reference
(`kmeans_transformer.reference`), whose largest difference is printed in each panel's subtitle. The trimmed and sparse
panels get a few far outliers added to the data.

Outputs, in `--output DIR` (default `docs/figures`): `<variant>.png` for every variant (and `kmedoids_gumbel.png` for
the randomised k-medoids), about 1000 × 800 pixels, and `variants.png`, an overview grid of all of them.

Usage:

    python docs/make_figures.py                      # writes docs/figures/*.png
    python docs/make_figures.py --output /tmp/figures --seed 3

Needs matplotlib (`pip install matplotlib`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer import reference
from kmeans_transformer.validation import gaussian_mixture


NUM_CLUSTERS = 4
NUM_POINTS = 400
NUM_ITERATIONS = 10
NUM_OUTLIERS = 8
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Panel:
    """One figure: a variant, the parameters it is built with, and how it is drawn."""

    name: str
    variant: str
    description: str
    parameters: dict = field(default_factory=dict)
    with_outliers: bool = False


PANELS = (
    Panel("lloyd", "lloyd", "Lloyd's k-means"),
    Panel("soft", "soft", "soft k-means", {"inverse_temperature": 0.2}),
    Panel("spherical", "spherical", "spherical k-means"),
    Panel("trimmed", "trimmed", "trimmed k-means", {"trim_quantile": 0.95}, with_outliers=True),
    Panel("sparse", "sparse", "sparsemax update", {"inverse_temperature": 0.01}, with_outliers=True),
    Panel("kmedoids", "kmedoids", "k-medoids", {"medoid_selection": "deterministic"}),
    Panel(
        "kmedoids_gumbel", "kmedoids", "randomised k-medoids", {"medoid_selection": "gumbel", "inverse_temperature": 1.0}
    ),
    Panel("gmm", "gmm", "EM, isotropic Gaussian mixture", {"reg_covar": 0.0}),
)


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clean points `(n, 2)`, far outliers `(m, 2)` and `k` initial centroids drawn from the clean points."""
    generator = np.random.default_rng(seed)
    points = gaussian_mixture(generator, NUM_POINTS, 2, NUM_CLUSTERS)
    angles = generator.uniform(0, 2 * np.pi, size=NUM_OUTLIERS)
    radius = 1.7 * np.abs(points).max()
    outliers = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1) * generator.uniform(0.8, 1.0, (NUM_OUTLIERS, 1))
    initial = points[generator.choice(NUM_POINTS, size=NUM_CLUSTERS, replace=False)]
    return points, outliers, initial


def default_mixture_start(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's default initial variances (total variance per coordinate) and weights (1/k)."""
    variance = ((points - points.mean(axis=0)) ** 2).sum(axis=1).mean() / points.shape[1]
    return np.full(NUM_CLUSTERS, variance), np.full(NUM_CLUSTERS, 1.0 / NUM_CLUSTERS)


def run_reference(config: KMeansTransformerConfig, points, initial, variances=None, weights=None):
    """The variant's independent NumPy reference, or None for the randomised k-medoids."""
    T = config.num_iterations
    if config.variant == "lloyd":
        return reference.lloyd(points, initial, T)
    if config.variant == "soft":
        return reference.soft_kmeans(points, initial, T, config.inverse_temperature)
    if config.variant == "spherical":
        return reference.spherical_kmeans(points, initial, T)
    if config.variant == "trimmed":
        return reference.trimmed_kmeans(points, initial, T, config.trim_quantile, config.trim_fraction)
    if config.variant == "sparse":
        return reference.sparse_kmeans(points, initial, T, config.inverse_temperature)
    if config.variant == "kmedoids" and config.medoid_selection == "deterministic":
        return reference.kmedoids(points, initial, T)
    if config.variant == "gmm":
        return reference.gaussian_mixture_em(points, initial, variances, weights, T, config.reg_covar)
    return None


REFERENCE_NAMES = {
    "lloyd": "lloyd",
    "soft": "soft_kmeans",
    "spherical": "spherical_kmeans",
    "trimmed": "trimmed_kmeans",
    "sparse": "sparse_kmeans",
    "kmedoids": "kmedoids",
    "gmm": "gaussian_mixture_em",
}


@torch.no_grad()
def run_panel(panel: Panel, clean: np.ndarray, outliers: np.ndarray, initial: np.ndarray, seed: int) -> dict:
    """Run the panel's model (float64) and its reference; return what the figure draws."""
    points = np.concatenate([clean, outliers]) if panel.with_outliers else clean
    config = KMeansTransformerConfig(
        num_clusters=NUM_CLUSTERS, point_dim=2, num_iterations=NUM_ITERATIONS, variant=panel.variant, **panel.parameters
    )
    model = KMeansTransformerModel(config).to(torch.float64).eval()
    inputs = {"centroids": torch.tensor(initial)}
    variances = weights = None
    if panel.variant == "gmm":
        variances, weights = default_mixture_start(points)
        inputs.update(variances=torch.tensor(variances), weights=torch.tensor(weights))
    gumbel = panel.variant == "kmedoids" and config.medoid_selection == "gumbel"
    if gumbel:
        inputs["generator"] = torch.Generator().manual_seed(seed)
    output = model(torch.tensor(points), output_hidden_states=True, **inputs)

    n, slices = len(points), config.token_slices
    trajectory = np.stack([h[0, n:, slices["position"]].numpy() for h in output.hidden_states])  # (T + 1, k, 2)
    seen_points = output.hidden_states[0][0, :n, slices["position"]].numpy()  # unit vectors for "spherical"
    centroids = output.centroids[0].numpy()
    result = {
        "panel": panel,
        "config": config,
        "points": seen_points,
        "labels": output.labels[0].numpy(),
        "trajectory": trajectory,
        "centroids": centroids,
        "alpha": np.full(n, 0.55),
        "outliers": output.outliers[0].numpy() if output.outliers is not None else None,
        "deviations": output.variances[0].sqrt().numpy() if output.variances is not None else None,
        "soft": output.responsibilities is not None,
        "added": np.arange(n) >= len(clean),
        "lloyd": reference.lloyd(points, initial, NUM_ITERATIONS).centroids if panel.with_outliers else None,
    }
    if output.responsibilities is not None:
        largest = output.responsibilities[0].amax(dim=-1).numpy()  # from 1/k (undecided) to 1 (certain)
        result["alpha"] = 0.12 + 0.83 * ((largest - 1 / NUM_CLUSTERS) / (1 - 1 / NUM_CLUSTERS)).clip(0, 1)

    expected = run_reference(config, points, initial, variances, weights)
    if expected is None:  # a random draw: check what it must satisfy
        members = all((points == centre).all(axis=1).any() for centre in centroids)
        result["check"] = f"every medoid is a data point: {'yes' if members else 'NO'} (generator seed {seed})"
        result["difference"] = 0.0 if members else float("inf")
    else:
        difference = np.abs(centroids - expected.centroids).max()
        if expected.variances is not None:
            difference = max(difference, np.abs(output.variances[0].numpy() - expected.variances).max())
        agree = (output.labels[0].numpy() == expected.labels).all()
        if expected.outliers is not None:
            agree = agree and (result["outliers"] == expected.outliers).all()
        result["difference"] = float(difference)
        result["check"] = (
            f"matches reference {REFERENCE_NAMES[panel.variant]}: max |Δ| = {difference:.1e}"
            f"{'' if agree else ' (labels differ)'}"
        )
    return result


def panel_title(result: dict) -> str:
    panel, config = result["panel"], result["config"]
    parameters = ", ".join(f"{key}={value}" for key, value in panel.parameters.items())
    return f"{panel.variant} ({panel.description})\nk={config.num_clusters}, T={config.num_iterations}" + (
        f", {parameters}" if parameters else ""
    )


def draw(ax, result: dict, marker_scale: float = 1.0) -> None:
    """Points coloured by label, centroid trajectories, final centroids, and the variant's own marks."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Circle

    panel, points, labels = result["panel"], result["points"], result["labels"]
    kept = labels >= 0
    colours = np.array([to_rgba(COLOURS[label % len(COLOURS)]) for label in labels.clip(min=0)])
    colours[:, 3] = result["alpha"]
    if panel.variant == "spherical":
        theta = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(theta), np.sin(theta), color="0.8", linewidth=1, zorder=0)
    ax.scatter(points[kept, 0], points[kept, 1], s=12 * marker_scale, c=colours[kept], linewidths=0, zorder=1)
    if result["soft"]:
        ax.scatter([], [], s=12 * marker_scale, color="0.4", label="point, opacity = largest responsibility")
    if result["outliers"] is not None and result["outliers"].any():
        trimmed = result["outliers"]
        ax.scatter(points[trimmed, 0], points[trimmed, 1], s=30 * marker_scale, marker="x", color="0.45",
                   linewidths=1.2, zorder=2, label="trimmed (outlier)")
    else:
        added = result["added"] & kept
        if added.any():
            ax.scatter(points[added, 0], points[added, 1], s=40 * marker_scale, facecolors="none",
                       edgecolors="0.3", linewidths=1, zorder=2, label="far points added to the data")
    if result["lloyd"] is not None:
        ax.scatter(result["lloyd"][:, 0], result["lloyd"][:, 1], s=90 * marker_scale, marker="X", facecolors="none",
                   edgecolors="0.35", linewidths=1.2, zorder=6, label="Lloyd's centroids, same data and start")

    trajectory = result["trajectory"]
    for j in range(trajectory.shape[1]):
        colour = COLOURS[j % len(COLOURS)]
        ax.plot(trajectory[:, j, 0], trajectory[:, j, 1], color="black", linewidth=2.2 * marker_scale, zorder=3)
        ax.plot(trajectory[:, j, 0], trajectory[:, j, 1], color=colour, linewidth=1.2 * marker_scale, marker="o",
                markersize=2.5 * marker_scale, zorder=4)
        ax.scatter(*trajectory[0, j], s=45 * marker_scale, facecolors="white", edgecolors=colour, linewidths=1.5,
                   zorder=5, label="initial centroid" if j == 0 else None)
    final = result["centroids"]
    medoids = panel.variant == "kmedoids"
    ax.scatter(final[:, 0], final[:, 1], s=(170 if medoids else 120) * marker_scale, marker="*" if medoids else "X",
               c=[COLOURS[j % len(COLOURS)] for j in range(len(final))], edgecolors="black", linewidths=1.2, zorder=6,
               label="final medoid (a data point)" if medoids else "final centroid")
    if result["deviations"] is not None:
        for j, (centre, deviation) in enumerate(zip(final, result["deviations"])):
            ax.add_patch(Circle(centre, 2 * deviation, fill=False, color=COLOURS[j % len(COLOURS)], linewidth=1.5,
                                linestyle="--", zorder=5))
        ax.plot([], [], color="0.3", linestyle="--", label="radius 2σ_j")
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=8 * marker_scale)
    ax.grid(alpha=0.2)


def save_single(result: dict, output: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(10, 8), dpi=100)
    draw(ax, result)
    fig.suptitle(panel_title(result).replace("\n", ": ", 1), fontsize=14)
    ax.set_title(result["check"], fontsize=11, color="0.25")
    ax.legend(loc="best", fontsize=9, framealpha=0.85)
    fig.tight_layout()
    path = output / f"{result['panel'].name}.png"
    fig.savefig(path, pil_kwargs={"optimize": True})
    plt.close(fig)
    return path


def save_overview(results: list[dict], output: Path, plt) -> Path:
    columns = 4
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), dpi=72)
    for ax, result in zip(axes.flat, results):
        draw(ax, result, marker_scale=0.6)
        ax.set_title(f"{panel_title(result)}\n{result['check']}", fontsize=8)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    fig.suptitle("k-means transformer variants: the same data, the same initial centroids, float64", fontsize=13)
    fig.tight_layout()
    path = output / "variants.png"
    fig.savefig(path, pil_kwargs={"optimize": True})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "figures"),
                        help="directory for the PNG files (default: docs/figures)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initial centroids and the draws")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    clean, outliers, initial = make_data(args.seed)
    results = [run_panel(panel, clean, outliers, initial, args.seed) for panel in PANELS]
    for result in results:
        path = save_single(result, output, plt)
        print(f"{path}: {result['check']}")
    print(save_overview(results, output, plt))
    failed = [result["panel"].name for result in results if not result["difference"] <= 1e-9]
    if failed:
        print(f"disagrees with the reference: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
