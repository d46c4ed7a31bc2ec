#!/usr/bin/env python
# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""What attention learns about clusters: the three experiments of docs/learning.md.

- `heads`: the k-head attention clustering layer (`AttentionClusteringModel`) trained by stochastic gradient on fresh
  samples of a fixed mixture (`MixturePopulation`), over separation, dimension and initialisation scale; alignment of
  the heads with the true centroids against the number of steps; nearest-head labels against Lloyd and EM.
- `identity`: identity attention (`IdentityAttentionModel`) on contexts of mixture points: quantisation error and
  number of output clusters against the inverse temperature, the context length and the depth; centred and
  uncentred data against plain Gaussian mean shift.
- `in-context`: the in-context clustering transformer (`InContextClusteringModel`), initialised from the gmm
  construction or at random, pre-trained on random instances (`MixtureInstances`), against EM, Lloyd and the Bayes
  classifier; log error against Δ²; out-of-distribution instances.

Each writes its figures into `<output>/figures/learning_*.png` and its tables into `<output>/learning/<name>.md`
(with the machine and date). Existing files are replaced only with `--overwrite`.

Usage (the runs of docs/learning.md; each uses one thread):

    nice python scripts/learning_experiments.py heads --output docs --overwrite
    nice python scripts/learning_experiments.py identity --output docs --overwrite
    nice python scripts/learning_experiments.py in-context --output docs --overwrite
    python scripts/learning_experiments.py heads --quick --output /tmp/learning    # a few seconds
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kmeans_transformer import (
    AttentionClusteringConfig,
    AttentionClusteringModel,
    IdentityAttentionConfig,
    IdentityAttentionModel,
    InContextClusteringConfig,
    InContextClusteringModel,
)
from kmeans_transformer.attention_clustering import head_alignment, quantisation
from kmeans_transformer.files import replacing_file
from kmeans_transformer.in_context import misclustering_rate
from kmeans_transformer.reference import gaussian_mixture_em, lloyd
from kmeans_transformer.tasks import MixtureInstances, MixturePopulation, kmeans_plusplus_numpy, task_stream
from kmeans_transformer.training import TrainingArguments, train


def machine() -> str:
    """`lscpu`'s model name, the number of CPUs and the date (UTC)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    import os

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} on 1 thread; {date}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str, overwrite: bool) -> None:
    with replacing_file(path, overwrite=overwrite) as temporary:
        temporary.write_text(text)
    print(f"wrote {path}")


def save_figure(figure, path: Path, overwrite: bool) -> None:
    import matplotlib.pyplot as plt

    with replacing_file(path, overwrite=overwrite) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {path}")


def errors(labels_list, truth, k) -> float:
    return float(misclustering_rate(torch.as_tensor(np.asarray(labels_list)), torch.as_tensor(np.asarray(truth)), k).mean())


def bayes_labels(points, centres, weights, scale) -> np.ndarray:
    """`argmax_j log π_j - |x - μ_j|² / (2σ²)`: the Bayes classifier of the Gaussian mixture with the true parameters."""
    scores = np.log(weights)[None] - ((points[:, None] - centres[None]) ** 2).sum(-1) / (2 * scale**2)
    return scores.argmax(-1)


def em_labels(points, initial, iterations, reg_covar=1e-6) -> np.ndarray:
    k = len(initial)
    variance = ((points - points.mean(0)) ** 2).sum(1).mean() / points.shape[1]
    return gaussian_mixture_em(points, initial, [variance] * k, [1 / k] * k, iterations, reg_covar=reg_covar).labels


# ---------------------------------------------------------------------------------------------------------------------
# 1. The k-head attention clustering layer
# ---------------------------------------------------------------------------------------------------------------------


def train_heads(k, d, separation, init_scale, steps, seed=0):
    population = MixturePopulation(k, d, separation, num_points=64, seed=seed)
    centres = population.centres
    torch.manual_seed(seed)  # the heads' random initialisation
    model = AttentionClusteringModel(AttentionClusteringConfig(num_heads=k, point_dim=d, initializer_range=init_scale))

    model.card_training = {"separation": separation, "initializer_range": init_scale, "steps": steps, "batch_size": 4,
                           "learning_rate": 0.01, "seed": seed}

    def loss_function(model, batch):
        output = model(batch["points"].float().reshape(-1, d))
        return output.loss, head_alignment(model.heads, centres)

    with tempfile.TemporaryDirectory() as directory:
        arguments = TrainingArguments(
            output_dir=directory, max_steps=steps, batch_size=4, learning_rate=0.01, log_steps=25,
            save_steps=10**9, seed=seed, progress=False, plateau_patience=20,
        )
        result = train(model, loss_function, lambda start: task_stream(population, seed=seed + 1, start=start), arguments)
    model.card_evaluation = {  # what a saved checkpoint's card reports
        "task": "Alignment of the heads with the mixture centres", "dataset": "the training mixture",
        "dataset_config": f"k={k}, d={d}, separation {separation}", "metrics": head_alignment(model.heads, centres),
    }
    return model, population, result.history


def heads_experiment(args):
    import matplotlib.pyplot as plt

    quick = args.quick
    steps = 200 if quick else 2000
    # The grid, cut to what a shared two-core machine runs in about half an hour: every separation and dimension at
    # initialisation scale 0.1 for k = 2; the other scales at d = 16; k = 3 at d = 16.
    separations = [1.0, 4.0] if quick else [0.5, 1.0, 2.0, 4.0, 6.0]
    dims = [2, 16] if quick else [2, 16, 64]
    runs = [(2, d, separation, 0.1) for d in dims for separation in separations]
    if not quick:
        runs += [(2, 16, separation, scale) for scale in (0.01, 1.0) for separation in (1.0, 4.0)]
        runs += [(3, 16, separation, 0.1) for separation in (2.0, 4.0)]
    grid = {"d": dims, "separation": separations, "init_scale": [0.01, 0.1, 1.0]}
    rows, histories = [], {}
    for k, d, separation, scale in runs:
        start = time.time()
        model, population, history = train_heads(k, d, separation, scale, steps)
        histories[(k, d, separation, scale)] = history
        alignment = head_alignment(model.heads, population.centres)
        reached = next((h["step"] for h in history if h["min_cos"] >= 0.99), None)
        # nearest-head labels against Lloyd and EM (100 iterations from k-means++) on 2,000 fresh points
        sample = MixturePopulation(k, d, separation, num_points=2000, seed=0).task(12345, 0)
        points, truth = sample["points"], sample["labels"]
        with torch.no_grad():
            head_labels = model(torch.tensor(points, dtype=torch.float32)).labels[0].numpy()
        initial = kmeans_plusplus_numpy(np.random.default_rng(7), points, k)
        row = {
            "k": k, "d": d, "separation": separation, "init_scale": scale,
            **alignment, "steps_to_0.99": reached if reached is not None else f"> {steps}",
            "error_heads": errors(head_labels, truth, k),
            "error_lloyd": errors(lloyd(points, initial, 100).labels, truth, k),
            "error_em": errors(em_labels(points, initial, 100), truth, k),
            "error_bayes": errors(bayes_labels(points, population.centres, np.full(k, 1 / k), 1.0), truth, k),
            "seconds": time.time() - start,
        }
        rows.append(row)
        print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}), flush=True)

    output = Path(args.output)
    header = ["k", "d", "Δ/σ", "init scale", "min |cos|", "mean |cos|", "scaled dist.", "dist.", "steps to 0.99",
              "err heads", "err Lloyd", "err EM", "err Bayes"]
    keys = ["k", "d", "separation", "init_scale", "min_cos", "mean_cos", "scaled_distance", "distance", "steps_to_0.99",
            "error_heads", "error_lloyd", "error_em", "error_bayes"]
    table = markdown_table(header, [[row[key] for key in keys] for row in rows])
    target = [r for r in rows if r["separation"] >= 4 and r["d"] <= 16]
    met = sum(r["min_cos"] >= 0.99 for r in target)
    text = (
        f"# Attention clustering layer: alignment after {steps} steps\n\n"
        f"Machine: {machine()}.\n\nCommand: `nice python scripts/learning_experiments.py heads --output docs"
        f"{' --quick' if quick else ''} --overwrite`\n\n"
        f"Target |cos| >= 0.99 at Δ/σ >= 4, d <= 16 within {steps} steps: met in {met} of {len(target)} runs.\n\n"
        f"{table}\n"
    )
    write_text(output / "learning" / "heads.md", text, args.overwrite)

    figure, axes = plt.subplots(1, 3, figsize=(16, 4))
    d_show, early = 16, 250
    for separation in grid["separation"]:
        history = histories.get((2, d_show, separation, 0.1))
        if history:
            axes[0].plot([h["step"] for h in history], [h["min_cos"] for h in history], label=f"Δ/σ = {separation:g}")
    axes[0].set(xlabel="step", ylabel="min matched |cos(θ_h, μ_h)|", title=f"k = 2, d = {d_show}, init scale 0.1", ylim=(0, 1.02))
    axes[0].axhline(0.99, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    for d in grid["d"]:
        for scale, style in zip(grid["init_scale"], (":", "-", "--")):
            keys = [key for key in histories if key[0] == 2 and key[1] == d and key[3] == scale]
            if not keys:
                continue
            keys.sort(key=lambda key: key[2])
            cosines = [next(h["min_cos"] for h in histories[key] if h["step"] >= min(early, steps)) for key in keys]
            axes[1].plot([key[2] for key in keys], cosines, style, marker="o", ms=3, label=f"d = {d}, scale {scale:g}")
            selected = sorted((r["separation"], r["distance"]) for r in rows if r["k"] == 2 and r["d"] == d and r["init_scale"] == scale)
            axes[2].plot(*zip(*selected), style, marker="o", ms=3, label=f"d = {d}, scale {scale:g}")
    axes[1].set(xlabel="separation Δ/σ", ylabel=f"min |cos| after {min(early, steps)} steps", title="k = 2: alignment against separation", ylim=(0, 1.02))
    axes[1].axhline(0.99, color="grey", lw=0.8, ls=":")
    axes[2].set(xlabel="separation Δ/σ", ylabel=f"max |θ_h - μ_h| / |μ_h| after {steps} steps", yscale="log", title="k = 2: distance to the centroids")
    for axis in axes[1:]:
        axis.legend(fontsize=7)
    save_figure(figure, output / "figures" / "learning_heads.png", args.overwrite)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Identity attention
# ---------------------------------------------------------------------------------------------------------------------


def mean_shift(points: torch.Tensor, inverse_temperature: float, steps: int) -> torch.Tensor:
    """Plain (blurring) Gaussian mean shift: every point moves to `Σ_j softmax_j(-λ|x_i - x_j|²/2) x_j`, `steps` times."""
    for _ in range(steps):
        weights = torch.softmax(-inverse_temperature * torch.cdist(points, points) ** 2 / 2, dim=-1)
        points = weights @ points
    return points


def identity_experiment(args):
    import matplotlib.pyplot as plt

    quick = args.quick
    k, d, separation = 3, 2, 6.0
    lambdas = [0.1, 0.3] if quick else [0.03, 0.1, 0.3, 1.0, 3.0]
    lengths = [50] if quick else [50, 200, 1000]
    depths = [1, 4] if quick else [1, 2, 4, 8, 16]
    contexts = 3 if quick else 10
    tolerance = 0.25
    population = MixturePopulation(k, d, separation, num_points=max(lengths), seed=3)
    centres = population.centres - population.centres.mean(0)  # centred mixture
    rows = []
    for n, lam in itertools.product(lengths, lambdas):
        model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=d, inverse_temperature=lam, num_layers=max(depths))).double()
        measured = {L: [] for L in depths}
        for index in range(contexts):
            sample = population.task(seed=5, index=index)
            points = sample["points"][:n] - population.centres.mean(0)
            with torch.no_grad():
                states = model(torch.tensor(points)).hidden_states
            for L in depths:
                measured[L].append(quantisation(states[L][0], centres, tolerance))
        for L in depths:
            rows.append({
                "n": n, "lambda": lam, "L": L,
                "error": float(np.mean([m["error"] for m in measured[L]])),
                "clusters": float(np.mean([m["clusters"] for m in measured[L]])),
            })
    input_error = float(np.mean([quantisation(population.task(5, i)["points"][: lengths[0]] - population.centres.mean(0), centres, tolerance)["error"] for i in range(contexts)]))

    # centred against uncentred data: identity attention (λ = 0.1 and 1) and plain mean shift (λ = 1), L = 8
    depth, offset = 8, np.array([8.0, 0.0])
    sample = population.task(seed=5, index=0)["points"][:200] - population.centres.mean(0)
    comparison = []
    figure, axes = plt.subplots(2, 3, figsize=(13, 8))
    for row, shift in enumerate((np.zeros(2), offset)):
        points = torch.tensor(sample + shift)
        outputs = {}
        for lam_compared in (0.1, 1.0):
            model = IdentityAttentionModel(IdentityAttentionConfig(point_dim=d, inverse_temperature=lam_compared, num_layers=depth)).double()
            with torch.no_grad():
                outputs[f"identity attention, λ = {lam_compared:g}"] = model(points).last_hidden_state[0]
        outputs["plain mean shift, λ = 1"] = mean_shift(points, 1.0, depth)
        for column, (name, result) in enumerate(outputs.items()):
            measured = quantisation(result, centres + shift, tolerance)
            data = "centred" if row == 0 else f"shifted by {offset.tolist()}"
            comparison.append([data, name, measured["error"], measured["clusters"]])
            axis = axes[row, column]
            axis.scatter(*(sample + shift).T, s=4, c="lightgrey", label="points")
            axis.scatter(*result.numpy().T, s=10, c="C3", label=f"outputs (L = {depth})")
            axis.scatter(*(centres + shift).T, marker="x", s=60, c="k", label="true centres")
            axis.set_title(f"{name}, {data}\nerror {measured['error']:.3g}, {measured['clusters']} clusters", fontsize=9)
            axis.set_aspect("equal")
    axes[0, 0].legend(fontsize=7)
    output = Path(args.output)
    save_figure(figure, output / "figures" / "learning_identity_weights.png", args.overwrite)

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    n_show = lengths[-1] if not quick else lengths[0]
    for lam in lambdas:
        selected = [r for r in rows if r["n"] == n_show and r["lambda"] == lam]
        axes[0].plot([r["L"] for r in selected], [r["error"] for r in selected], marker="o", ms=3, label=f"λ = {lam:g}")
        axes[1].plot([r["L"] for r in selected], [r["clusters"] for r in selected], marker="o", ms=3, label=f"λ = {lam:g}")
    for n in lengths:
        selected = [r for r in rows if r["n"] == n and r["L"] == depths[-1]]
        axes[2].plot([r["lambda"] for r in selected], [r["error"] for r in selected], marker="o", ms=3, label=f"n = {n}")
    axes[0].set(xscale="log", yscale="log", xlabel="layers L", ylabel="mean squared distance to nearest centre", title=f"n = {n_show}")
    axes[1].set(xscale="log", xlabel="layers L", ylabel=f"output clusters (merged within {tolerance})", title=f"n = {n_show} (k = {k})")
    axes[1].axhline(k, color="grey", lw=0.8, ls=":")
    axes[2].set(xscale="log", yscale="log", xlabel="inverse temperature λ", ylabel="quantisation error", title=f"L = {depths[-1]}")
    for axis in axes:
        axis.legend(fontsize=7)
    save_figure(figure, output / "figures" / "learning_identity.png", args.overwrite)

    table = markdown_table(["n", "λ", "L", "quantisation error", "output clusters"], [[r["n"], r["lambda"], r["L"], r["error"], r["clusters"]] for r in rows])
    weights_table = markdown_table(["data", "method", "quantisation error", "output clusters"], comparison)
    text = (
        f"# Identity attention: in-context quantisation\n\nMachine: {machine()}.\n\n"
        f"Command: `nice python scripts/learning_experiments.py identity --output docs{' --quick' if quick else ''} --overwrite`\n\n"
        f"Mixture: k = {k}, d = {d}, Δ/σ = {separation:g}, σ = 1, centred; {contexts} contexts per cell; clusters merged "
        f"within {tolerance}. Error of the raw points (L = 0): {input_error:.4g}.\n\n{table}\n\n"
        f"## Point weights on uncentred data (L = {depth}, n = 200)\n\n{weights_table}\n"
    )
    write_text(output / "learning" / "identity.md", text, args.overwrite)


# ---------------------------------------------------------------------------------------------------------------------
# 3. The in-context clustering transformer against EM
# ---------------------------------------------------------------------------------------------------------------------


def train_in_context(k, d, initialization, steps, num_points=100, seed=0):
    distribution = MixtureInstances(num_points, k, d, separation_low=1.0, separation_high=6.0)
    config = InContextClusteringConfig(
        num_clusters=k, point_dim=d, num_em_iterations=10 if initialization == "gmm" else 0, initialization=initialization
    )
    torch.manual_seed(seed)  # the random initialisation
    model = InContextClusteringModel(config)
    model.card_training = {"instances": f"{num_points} points, separation in [1, 6]", "steps": steps, "batch_size": 8,
                           "learning_rate": 1e-3, "max_grad_norm": 1.0, "seed": seed}

    def loss_function(model, batch):
        output = model(batch["points"].float(), centroids=batch["initial_centroids"].float(), labels=batch["labels"])
        return output.loss, {"error": float(misclustering_rate(output.labels, batch["labels"], k).mean())}

    with tempfile.TemporaryDirectory() as directory:
        arguments = TrainingArguments(
            output_dir=directory, max_steps=steps, batch_size=8, learning_rate=1e-3, log_steps=25,
            save_steps=10**9, seed=seed, progress=False, max_grad_norm=1.0,
        )
        result = train(model, loss_function, lambda start: task_stream(distribution, seed=seed + 1, start=start), arguments)
    return result.model.eval(), result.history


def evaluate_in_context(models, k, d, n, separation, instances, **distribution):
    test = MixtureInstances(n, k, d, separation_low=separation, separation_high=separation, **distribution)
    batch = test.batch(seed=777, start=0, size=instances)
    truth = torch.tensor(batch["labels"])
    result = {}
    for name, model in models.items():
        with torch.no_grad():
            output = model(torch.tensor(batch["points"], dtype=torch.float32), centroids=torch.tensor(batch["initial_centroids"], dtype=torch.float32))
        result[name] = float(misclustering_rate(output.labels, truth, k).mean())
    points, initial = batch["points"], batch["initial_centroids"]
    methods = {
        "EM (10 it.)": lambda i: em_labels(points[i], initial[i], 10),
        "EM (100 it.)": lambda i: em_labels(points[i], initial[i], 100),
        "Lloyd (100 it.)": lambda i: lloyd(points[i], initial[i], 100).labels,
        "Bayes": lambda i: bayes_labels(points[i], batch["centres"][i], batch["weights"][i], 1.0),
    }
    for name, method in methods.items():
        result[name] = errors(np.stack([method(i) for i in range(instances)]), truth, k)
    return result


def in_context_experiment(args):
    import matplotlib.pyplot as plt

    quick = args.quick
    steps = 30 if quick else args.steps
    # cut to what a shared two-core machine runs in about half an hour: k = 5 and d = 10 only where listed
    pairs = [(2, 2)] if quick else [(2, 2), (3, 2), (2, 10), (5, 2)]
    lengths = [100] if quick else [100, 500]
    separations = [2.0, 4.0] if quick else [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    instances = 20 if quick else args.instances
    rows, trained = [], {}
    for k, d in pairs:
        models = {}
        for initialization in ("gmm", "random"):
            start = time.time()
            model, history = train_in_context(k, d, initialization, steps)
            models[f"transformer ({initialization} init)"] = model
            print(f"trained k={k} d={d} {initialization}: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f} "
                  f"in {time.time() - start:.0f} s", flush=True)
        trained[(k, d)] = models
        for n, separation in itertools.product(lengths, separations):
            result = evaluate_in_context(models, k, d, n, separation, instances)
            rows.append({"setting": "training", "k": k, "d": d, "n": n, "separation": separation, **result})
            print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v) for key, v in rows[-1].items()}), flush=True)
    # out of distribution: heavier tails and unequal weights, n = 100, the d = 2 models
    ood_settings = {
        "Student t (ν = 3)": {"noise": "student_t", "degrees_of_freedom": 3.0},
        "unequal weights": {},
    }
    for k, d in [pair for pair in pairs if pair[1] == 2 and pair[0] in (2, 3)]:
        for label, setting in ood_settings.items():
            if label == "unequal weights":
                setting = {"weights": (0.8, 0.2) if k == 2 else (0.6, 0.3, 0.1)}
            for separation in separations:
                result = evaluate_in_context(trained[(k, d)], k, d, 100, separation, instances, **setting)
                rows.append({"setting": label, "k": k, "d": d, "n": 100, "separation": separation, **result})
                print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v) for key, v in rows[-1].items()}), flush=True)

    output = Path(args.output)
    methods = [key for key in rows[0] if key not in ("setting", "k", "d", "n", "separation")]
    header = ["setting", "k", "d", "n", "Δ/σ", *methods, "gmm / EM(10)"]
    table_rows = []
    for r in rows:
        em = r["EM (10 it.)"]
        ratio = r["transformer (gmm init)"] / em if em > 0 else (1.0 if r["transformer (gmm init)"] == 0 else float("inf"))
        table_rows.append([r["setting"], r["k"], r["d"], r["n"], r["separation"], *[r[m] for m in methods], ratio])
    training = [r for r in rows if r["setting"] == "training" and r["separation"] >= 2]

    def within(name, reference):
        return sum(r[name] <= 1.2 * r[reference] + 1e-12 for r in training)

    slopes = []
    for k, d in pairs:
        for n in lengths:
            for method in methods:
                selected = [(r["separation"] ** 2, r[method]) for r in rows
                            if r["setting"] == "training" and (r["k"], r["d"], r["n"]) == (k, d, n) and r["separation"] >= 2 and r[method] > 0]
                if len(selected) >= 2:
                    x, y = np.array(selected).T
                    slopes.append([k, d, n, method, float(np.polyfit(x, np.log(y), 1)[0]), len(selected)])
    text = (
        f"# In-context clustering transformer against EM\n\nMachine: {machine()}.\n\n"
        f"Command: `nice python scripts/learning_experiments.py in-context --output docs{' --quick' if quick else ''} --overwrite`\n\n"
        f"Training: {steps} steps of 8 instances (n = 100, Δ/σ uniform in [1, 6], normal noise, equal weights). "
        f"Evaluation: {instances} instances per cell (seed 777), k-means++ initialisation shared by every method.\n\n"
        f"Target, gmm-initialised transformer within 1.2 x EM (10 it.) at every Δ/σ >= 2 on the training distribution: "
        f"{within('transformer (gmm init)', 'EM (10 it.)')} of {len(training)} cells; against EM (100 it.): "
        f"{within('transformer (gmm init)', 'EM (100 it.)')} of {len(training)}. Random initialisation within 1.2 x EM (10 it.): "
        f"{within('transformer (random init)', 'EM (10 it.)')} of {len(training)}.\n\n"
        f"{markdown_table(header, table_rows)}\n\n"
        f"## Slope of log(error) against Δ² (Δ/σ in [2, 6], cells with error > 0; σ = 1)\n\n"
        f"Classical minimax exponent (Lu and Zhou, 2016): -1/(8σ²) = -0.125.\n\n"
        f"{markdown_table(['k', 'd', 'n', 'method', 'slope', 'points'], slopes)}\n"
    )
    write_text(output / "learning" / "in_context.md", text, args.overwrite)

    figure, axes = plt.subplots(1, len(lengths) + 1, figsize=(5 * (len(lengths) + 1), 4))
    k_show, d_show = pairs[0]
    for axis, n in zip(axes, lengths):
        selected = [r for r in rows if r["setting"] == "training" and (r["k"], r["d"], r["n"]) == (k_show, d_show, n)]
        for method in methods:
            values = [(r["separation"] ** 2, r[method]) for r in selected if r[method] > 0]
            if values:
                axis.plot(*zip(*values), marker="o", ms=3, label=method)
        bayes = [(r["separation"] ** 2, r["Bayes"]) for r in selected if r["Bayes"] > 0]
        if bayes:
            x0, y0 = bayes[0]
            xs = np.array([x0, max(x for x, _ in bayes)])
            axis.plot(xs, y0 * np.exp(-(xs - x0) / 8), "k:", label="slope -1/(8σ²) (Lu and Zhou, 2016)")
        axis.set(yscale="log", xlabel="Δ² (σ = 1)", ylabel="misclustering rate", title=f"k = {k_show}, d = {d_show}, n = {n}")
        axis.legend(fontsize=7)
    axis = axes[-1]
    for k, d in pairs:
        selected = [r for r in rows if r["setting"] == "training" and (r["k"], r["d"], r["n"]) == (k, d, lengths[0])]
        axis.plot([r["separation"] for r in selected], [r["transformer (gmm init)"] / max(r["EM (10 it.)"], 1e-12) for r in selected],
                  marker="o", ms=3, label=f"k = {k}, d = {d}")
    axis.axhline(1.2, color="grey", ls=":", lw=0.8)
    axis.set(xlabel="Δ/σ", ylabel="error ratio: transformer (gmm init) / EM (10 it.)", title=f"n = {lengths[0]}")
    axis.legend(fontsize=7)
    save_figure(figure, output / "figures" / "learning_in_context.png", args.overwrite)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("heads", "identity", "in-context"))
    parser.add_argument("--output", default="docs", help="directory receiving figures/ and learning/ (default: docs)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid, for a check in seconds")
    parser.add_argument("--overwrite", action="store_true", help="replace existing figures and tables")
    parser.add_argument("--steps", type=int, default=300, help="in-context: training steps per model (default 300)")
    parser.add_argument("--instances", type=int, default=50, help="in-context: instances per evaluation cell (default 50)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    {"heads": heads_experiment, "identity": identity_experiment, "in-context": in_context_experiment}[args.experiment](args)


if __name__ == "__main__":
    main()
