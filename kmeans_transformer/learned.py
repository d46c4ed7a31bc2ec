# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""The learned k-means layer (`variant="learned"`): building, training and evaluating it.

- `build_learned_model`: one layer of trainable blocks (`blocks.KMeansTransformerLearned*`), looped; with
  `init_from="lloyd"` it starts as soft k-means at γ, with `"random"` from random projections.
- `train_learned`: the layer trained on streamed clustering tasks (`tasks.TaskDistribution`, family `"normal"` by
  default) through `training.train`, minimising the soft k-means objective of the centroids after T layers,

      L = mean over tasks of  Σ_i Σ_j softmax_j(-λ D_ij) D_ij,   D_ij = |x_i - c_j|^2,

  with checkpoints whose card carries a held-out evaluation (`write_learned_card`).
- `evaluate_learned`: the layer looped `num_steps` times on unseen tasks against Lloyd's algorithm for as many
  iterations from the same starts (the first k shuffled points, k-means++, farthest-first), for several `n` and
  noise families: the mean log k-means objective per step, and the fraction of tasks on which the learned loop ends
  below Lloyd; `write_evaluation` writes it as a Markdown table, a JSON file and figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .files import replacing_directory, replacing_file
from .initialization import batched_kmeans_plusplus
from .modeling_kmeans_transformer import DTYPES, KMeansTransformerModel
from .tasks import FAMILIES, TaskDistribution, task_stream
from .training import TrainingArguments, train


STARTS = ("random", "kmeans++", "farthest")
START_TITLES = {"random": "first k shuffled points", "kmeans++": "k-means++", "farthest": "farthest-first"}
EVALUATION_NUM_POINTS = (128, 256, 512, 1024, 2048)
EVALUATION_SEED = 1_000_003  # the stream of the unseen tasks: no training run uses it
TASK_FILE = "task_distribution.json"


# ---------------------------------------------------------------------------------------------------------------------
# The model and the objectives
# ---------------------------------------------------------------------------------------------------------------------


def build_learned_model(
    num_clusters: int,
    point_dim: int,
    inverse_temperature: float = 1.0,
    init_from: str = "lloyd",
    num_layers: int = 1,
    dtype: str | torch.dtype = "float32",
    seed: int | None = 0,
) -> KMeansTransformerModel:
    """
    A `"learned"` model: one shared layer (looped `num_layers` times by default, any number at call time), built in
    `dtype` (the construction's weights written in that dtype; `init_from="random"` draws from torch's generator
    seeded with `seed`). The embeddings and the assignment head are the construction's and are frozen
    (`requires_grad=False`): training moves the four blocks of the layer only.
    """
    dtype = _torch_dtype(dtype)
    config = KMeansTransformerConfig(
        num_clusters=num_clusters, point_dim=point_dim, num_iterations=num_layers, variant="learned",
        inverse_temperature=inverse_temperature, init_from=init_from,
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = KMeansTransformerModel._from_config(config, dtype=dtype)
    freeze_construction(model)
    return model


def freeze_construction(model: KMeansTransformerModel) -> KMeansTransformerModel:
    """Freeze what a learned model keeps of the construction: the embeddings and the assignment head."""
    if not model.config.variant_spec.trainable:
        raise ValueError(f"variant {model.config.variant!r} has no trainable layer; build a variant='learned' model.")
    model.embeddings.requires_grad_(False)
    model.assignment_head.requires_grad_(False)
    return model


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """`D_ij = |x_i - c_j|^2`, `(batch, n, d)` and `(batch, k, d)` -> `(batch, n, k)`, from the differences."""
    return ((points[:, :, None, :] - centroids[:, None, :, :]) ** 2).sum(dim=-1)


def soft_kmeans_objective(points: torch.Tensor, centroids: torch.Tensor, loss_inverse_temperature: float) -> torch.Tensor:
    """Per task, `Σ_i Σ_j softmax_j(-λ D_ij) D_ij` (λ = `loss_inverse_temperature`), `(batch,)`."""
    distances = squared_distances(points, centroids)
    return (torch.softmax(-loss_inverse_temperature * distances, dim=-1) * distances).sum(dim=(1, 2))


def kmeans_objective(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per task, the k-means objective `Σ_i min_j D_ij`, `(batch,)`."""
    return squared_distances(points, centroids).amin(dim=-1).sum(dim=-1)


def learned_loss(loss_inverse_temperature: float = 10.0, num_layers: int = 1):
    """
    The loss function of `training.train` for a learned model: the mean over the batch of the soft k-means
    objective at λ of the centroids after `num_layers` layers from the tasks' initial centroids; also logs the
    mean log k-means objective (`log_objective`).
    """
    if not (math.isfinite(loss_inverse_temperature) and loss_inverse_temperature > 0):
        raise ValueError(f"loss_inverse_temperature must be a finite number > 0, got {loss_inverse_temperature!r}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")

    def loss_function(model, batch):
        dtype = next(parameter for parameter in model.parameters() if parameter.requires_grad).dtype
        points, initial = batch["points"].to(dtype), batch["initial_centroids"].to(dtype)
        centroids = model(
            points, centroids=initial, num_iterations=num_layers, final_assignment=False, output_assignments=False
        ).centroids
        loss = soft_kmeans_objective(points, centroids, loss_inverse_temperature).mean()
        with torch.no_grad():
            log_objective = torch.log(kmeans_objective(points, centroids)).mean().item()
        return loss, {"log_objective": log_objective}

    return loss_function


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def train_learned(
    output_dir: str | Path,
    num_clusters: int = 6,
    point_dim: int = 8,
    num_points: int = 128,
    inverse_temperature: float = 1.0,
    init_from: str = "lloyd",
    loss_inverse_temperature: float = 10.0,
    num_layers: int = 1,
    family: str = "normal",
    scale: float = 0.1,
    dtype: str = "float32",
    card_tasks: int = 64,
    card_steps: int = 20,
    **training_arguments,
):
    """
    Train a learned layer on the task stream `TaskDistribution(num_points, num_clusters, point_dim, family, scale)`
    (stream seed = the training `seed`), `training_arguments` being the fields of `training.TrainingArguments`
    (`max_steps`, `batch_size`, `learning_rate`, `seed`, `max_grad_norm`, `save_steps`, `resume_from_checkpoint`,
    `overwrite_output_dir`, `report_to`, `progress`, ...). Every checkpoint holds the model (`save_pretrained`), the
    task distribution (`task_distribution.json`) and a card whose `model-index` carries an evaluation on
    `card_tasks` unseen tasks of the training distribution (the loop of `card_steps` steps against Lloyd from the
    first k points; 0 tasks: none). Returns `training.TrainingResult`.
    """
    args = TrainingArguments(output_dir=str(output_dir), **training_arguments)
    distribution = TaskDistribution(num_points, num_clusters, point_dim, family=family, scale=scale)
    model = build_learned_model(
        num_clusters, point_dim, inverse_temperature, init_from, num_layers, dtype=dtype, seed=args.seed
    )
    settings = {
        "distribution": dataclasses.asdict(distribution),
        "stream_seed": args.seed,
        "loss_inverse_temperature": loss_inverse_temperature,
        "num_layers": num_layers,
        "training": {k: v for k, v in dataclasses.asdict(args).items() if k not in ("output_dir", "report_to")},
    }

    def write_card(model, directory):
        with open(Path(directory) / TASK_FILE, "w") as handle:
            json.dump(settings, handle, indent=2)
        evaluation = None
        if card_tasks:
            evaluation = evaluate_learned(
                [model], num_points=(num_points,), families=(family,), starts=("random",), num_tasks=card_tasks,
                num_steps=card_steps, scale=scale, progress=False,
            )
        write_learned_card(model, directory, settings, evaluation)

    return train(
        model, learned_loss(loss_inverse_temperature, num_layers),
        lambda start: task_stream(distribution, seed=args.seed, start=start), args, write_card=write_card,
    )


def write_learned_card(model, directory, settings: dict, evaluation: "Evaluation | None" = None) -> None:
    """The card of a learned checkpoint (`hub_cards/learned.md`) in `directory/README.md`, with `evaluation`'s figures."""
    from .cards import render_learned_card

    render_learned_card(model, settings, evaluation).save(Path(directory) / "README.md")


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SettingResult:
    """One setting (n, family, start) of one model: mean log objective per step (0 .. steps) and the final comparison."""

    num_points: int
    family: str
    start: str
    learned: list[float]
    lloyd: list[float]
    fraction_below: float
    num_tasks: int


@dataclasses.dataclass
class Evaluation:
    """`evaluate_learned`'s result: `results[m]` the settings of model m; the task settings they share."""

    models: list[str]
    results: list[list[SettingResult]]
    num_clusters: int
    point_dim: int
    num_steps: int
    num_tasks: int
    scale: float
    seed: int
    loop: str = "reembed"

    def summary(self, num_points: int, family: str, start: str) -> dict:
        """Over the models: median, min and max of the final mean log objectives and of the fraction below Lloyd."""
        rows = [r for results in self.results for r in results if (r.num_points, r.family, r.start) == (num_points, family, start)]
        if not rows:
            raise KeyError((num_points, family, start))

        def spread(values):
            return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}

        return {
            "learned": spread([r.learned[-1] for r in rows]),
            "lloyd": spread([r.lloyd[-1] for r in rows]),
            "fraction_below": spread([r.fraction_below for r in rows]),
        }

    def settings(self) -> list[tuple[int, str, str]]:
        return [(r.num_points, r.family, r.start) for r in self.results[0]]

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "results": [[dataclasses.asdict(r) for r in rs] for rs in self.results]}


def farthest_first(points: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Farthest-first traversal per task: the first point, then each next the point farthest from those chosen."""
    batch = torch.arange(points.shape[0], device=points.device)
    chosen = [points[:, 0]]
    nearest = ((points - chosen[0][:, None]) ** 2).sum(dim=-1)
    for _ in range(1, num_clusters):
        chosen.append(points[batch, nearest.argmax(dim=-1)])
        nearest = torch.minimum(nearest, ((points - chosen[-1][:, None]) ** 2).sum(dim=-1))
    return torch.stack(chosen, dim=1)


def initial_centroids(points: torch.Tensor, num_clusters: int, start: str, seed: int) -> torch.Tensor:
    """The starts compared: `"random"` the first k (shuffled) points, `"kmeans++"`, `"farthest"` (farthest-first)."""
    if start == "random":
        return points[:, :num_clusters].clone()
    if start == "kmeans++":
        generator = torch.Generator().manual_seed(seed)
        return torch.stack([batched_kmeans_plusplus(task, num_clusters, generator=generator)[0][0] for task in points])
    if start == "farthest":
        return farthest_first(points, num_clusters)
    raise ValueError(f"unknown start {start!r}; choose from {list(STARTS)}")


LOOPS = ("reembed", "tokens")


@torch.no_grad()
def learned_trajectory(model, points, centroids, num_steps: int, loop: str = "reembed") -> torch.Tensor:
    """
    The centroids `(steps + 1, batch, k, d)` of the learned layer looped `num_steps` times. `loop="reembed"`: every
    step is one call of the model (its `config.num_iterations` layers, the number it was trained for) on the points
    and the current centroids embedded afresh, as the loss saw them; `"tokens"`: one call of `num_steps` layers, the
    tokens carried from layer to layer by the residual stream (read off the hidden states).
    """
    if loop == "reembed":
        trajectory = [centroids]
        for _ in range(num_steps):
            output = model(points, centroids=trajectory[-1], final_assignment=False, output_assignments=False)
            trajectory.append(output.centroids)
        return torch.stack(trajectory)
    if loop != "tokens":
        raise ValueError(f"unknown loop {loop!r}; choose from {list(LOOPS)}")
    output = model(
        points, centroids=centroids, num_iterations=num_steps, final_assignment=False, output_assignments=False,
        output_hidden_states=True,
    )
    position, n = model.config.token_slices["position"], points.shape[1]
    return torch.stack([state[:, n:, position] for state in output.hidden_states])


@torch.no_grad()
def lloyd_trajectory(points: torch.Tensor, centroids: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Lloyd's centroids `(steps + 1, batch, k, d)` from `centroids`: the hardmax `"lloyd"` model, one iteration a call."""
    k, d = centroids.shape[1:]
    lloyd = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=1))
    lloyd = lloyd.to(points.dtype).eval()
    trajectory = [centroids]
    for _ in range(num_steps):
        step = lloyd(points, trajectory[-1], num_iterations=1, final_assignment=False, output_assignments=False)
        trajectory.append(step.centroids)
    return torch.stack(trajectory)


def _load(model) -> tuple[str, KMeansTransformerModel]:
    if isinstance(model, KMeansTransformerModel):
        name = str(getattr(model, "name_or_path", "") or "model")
    else:
        name, model = str(model), KMeansTransformerModel.from_pretrained(model)
    if not model.config.variant_spec.trainable:
        raise ValueError(f"{name} is a {model.config.variant!r} model; evaluate_learned takes variant='learned' models.")
    return name, model.eval()


def evaluate_learned(
    models: Sequence,
    num_points: Iterable[int] = EVALUATION_NUM_POINTS,
    families: Iterable[str] = FAMILIES,
    starts: Iterable[str] = STARTS,
    num_tasks: int = 320,
    num_steps: int = 20,
    scale: float = 0.1,
    seed: int = EVALUATION_SEED,
    batch_size: int = 32,
    loop: str = "reembed",
    progress: bool = True,
) -> Evaluation:
    """
    Loop each learned model (a model or a checkpoint path; several: training seeds) `num_steps` times on `num_tasks`
    unseen tasks per setting and run Lloyd for as many iterations from the same starts. Per setting (n in
    `num_points`, a noise family, a start) and model: the mean over tasks of `log J` after each step (`J` the
    k-means objective `Σ_i min_j |x_i - c_j|^2` on the task's points), for both, and the fraction of tasks on which
    the learned loop ends strictly below Lloyd (a non-finite objective counts as not below). The tasks are those of
    the stream `seed` of `TaskDistribution(n, k, d, family, scale)` (k and d the models'), the same for every model
    and start; Lloyd runs in float64, the learned loop in the model's dtype, the objectives in float64. `loop`: how
    the layer is looped (`learned_trajectory`: embedded afresh at every step by default).
    """
    from tqdm.auto import tqdm

    loaded = [_load(model) for model in models]
    if not loaded:
        raise ValueError("evaluate_learned needs at least one model")
    shapes = {(m.config.num_clusters, m.config.point_dim) for _, m in loaded}
    if len(shapes) > 1:
        raise ValueError(f"the models cluster different shapes (num_clusters, point_dim): {sorted(shapes)}")
    (k, d), = shapes
    num_points, families, starts = list(num_points), list(families), list(starts)
    for start in starts:
        if start not in STARTS:
            raise ValueError(f"unknown start {start!r}; choose from {list(STARTS)}")
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; choose from {list(LOOPS)}")
    for value, name in ((num_tasks, "num_tasks"), (num_steps, "num_steps"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    distributions = [TaskDistribution(n, k, d, family=family, scale=scale) for n in num_points for family in families]
    results = [[] for _ in loaded]
    bar = tqdm(total=len(distributions) * len(starts), desc="evaluating", disable=not progress)
    for distribution in distributions:
        tasks = distribution.batch(seed, 0, num_tasks)
        for start in starts:
            log_learned, below, log_lloyd = [[] for _ in loaded], [[] for _ in loaded], []
            for first in range(0, num_tasks, batch_size):
                points = torch.as_tensor(tasks["points"][first : first + batch_size])
                initial = initial_centroids(points, k, start, seed + first)
                log_lloyd.append(_log_objectives(points, lloyd_trajectory(points, initial, num_steps)))
                for index, (_, model) in enumerate(loaded):
                    trajectory = learned_trajectory(
                        model, points.to(model.dtype), initial.to(model.dtype), num_steps, loop
                    )
                    log_learned[index].append(_log_objectives(points, trajectory))
                    below[index].append(log_learned[index][-1][-1] < log_lloyd[-1][-1])
            reference = torch.cat(log_lloyd, dim=1)
            for index in range(len(loaded)):
                learned = torch.cat(log_learned[index], dim=1)
                results[index].append(SettingResult(
                    distribution.num_points, distribution.family, start, learned.mean(dim=1).tolist(),
                    reference.mean(dim=1).tolist(), float(torch.cat(below[index]).double().mean()), num_tasks,
                ))
            bar.update(1)
    bar.close()
    return Evaluation([name for name, _ in loaded], results, k, d, num_steps, num_tasks, scale, seed, loop)


def _log_objectives(points: torch.Tensor, trajectory: torch.Tensor) -> torch.Tensor:
    """`log J` per step and task, `(steps + 1, batch)`, in float64 (inf for a non-finite objective)."""
    points = points.double()
    values = torch.stack([kmeans_objective(points, centroids.double()) for centroids in trajectory])
    return torch.where(torch.isfinite(values), values.log(), torch.full_like(values, math.inf))


def evaluation_table(evaluation: Evaluation) -> str:
    """The Markdown table: per setting, the final mean log J of the learned loop and of Lloyd, and the fraction below."""
    several = len(evaluation.models) > 1

    def show(spread, percent=False):
        scale, unit, digits = (100, "%", 0) if percent else (1, "", 3)
        text = f"{spread['median'] * scale:.{digits}f}{unit}"
        if several:
            text += f" [{spread['min'] * scale:.{digits}f}, {spread['max'] * scale:.{digits}f}]"
        return text

    lines = [
        f"| n | family | start | learned, mean log J after {evaluation.num_steps} steps | Lloyd, mean log J after "
        f"{evaluation.num_steps} iterations | tasks where learned < Lloyd |",
        "|---|---|---|---|---|---|",
    ]
    for n, family, start in evaluation.settings():
        summary = evaluation.summary(n, family, start)
        lines.append(
            f"| {n} | {family} | {START_TITLES[start]} | {show(summary['learned'])} | {show(summary['lloyd'])} | "
            f"{show(summary['fraction_below'], percent=True)} |"
        )
    note = (
        f"{evaluation.num_tasks} unseen tasks per setting (k = {evaluation.num_clusters}, d = {evaluation.point_dim}, "
        f"scale {evaluation.scale}, stream seed {evaluation.seed}; the layer looped by {evaluation.loop!r})"
    )
    if several:
        note += f"; median [min, max] over {len(evaluation.models)} trained models"
    return note + ".\n\n" + "\n".join(lines) + "\n"


def plot_evaluation(evaluation: Evaluation, start: str, path) -> None:
    """Mean log J against the step, learned loop and Lloyd, one panel per (family, n), for one start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = evaluation.settings()
    families = list(dict.fromkeys(f for _, f, s in settings if s == start))
    sizes = list(dict.fromkeys(n for n, _, s in settings if s == start))
    figure, axes = plt.subplots(
        len(families), len(sizes), figsize=(2.6 * len(sizes) + 1, 2.2 * len(families) + 0.6), squeeze=False
    )
    steps = np.arange(evaluation.num_steps + 1)
    for row, family in enumerate(families):
        for column, n in enumerate(sizes):
            axis = axes[row][column]
            for results in evaluation.results:
                (result,) = [r for r in results if (r.num_points, r.family, r.start) == (n, family, start)]
                axis.plot(steps, result.learned, color="tab:blue", lw=1.2, label="learned layer")
                axis.plot(steps, result.lloyd, color="tab:orange", lw=1.2, ls="--", label="Lloyd")
            axis.set_title(f"{family}, n = {n}", fontsize=8)
            axis.tick_params(labelsize=7)
            if row == len(families) - 1:
                axis.set_xlabel("step", fontsize=8)
            if column == 0:
                axis.set_ylabel("mean log J", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles[:2], labels[:2], loc="upper right", fontsize=8)
    figure.suptitle(f"Learned loop vs Lloyd, start: {START_TITLES[start]}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.92, 0.97))
    with replacing_file(path, overwrite=True) as partial:
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)


def write_evaluation(evaluation: Evaluation, output_dir, overwrite: bool = False) -> Path:
    """`output_dir/` with `table.md`, `evaluation.json` and `objective_<start>.png`, written complete or not at all."""
    output_dir = Path(output_dir)
    with replacing_directory(output_dir, overwrite=overwrite) as partial:
        (partial / "table.md").write_text(evaluation_table(evaluation))
        (partial / "evaluation.json").write_text(json.dumps(evaluation.to_json(), indent=1))
        for start in dict.fromkeys(s for _, _, s in evaluation.settings()):
            plot_evaluation(evaluation, start, partial / f"objective_{start.replace('+', 'p')}.png")
    return output_dir


__all__ = [
    "EVALUATION_NUM_POINTS",
    "EVALUATION_SEED",
    "Evaluation",
    "LOOPS",
    "STARTS",
    "build_learned_model",
    "evaluate_learned",
    "evaluation_table",
    "farthest_first",
    "freeze_construction",
    "kmeans_objective",
    "learned_loss",
    "soft_kmeans_objective",
    "train_learned",
    "write_evaluation",
    "write_learned_card",
]
