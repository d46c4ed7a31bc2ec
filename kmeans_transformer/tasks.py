# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Clustering tasks: seeded mixture instances, one at a time or streamed as a `datasets.IterableDataset`.

One task is `n` points drawn from a mixture of `k` components in `d` dimensions:

- the component centres `μ_j` are uniform in `[0, 1]^d`;
- each point is `μ_{z_i} + ε_i` with `ε_i` drawn coordinate-wise from a noise `family` at `scale`
  (`normal`: N(0, scale²); `cauchy`, `gumbel`, `laplace`: location 0 and that scale; `lognormal`:
  `exp(N(0, scale²))`, a multiplicative family placed at the centre as `μ_j + exp(scale·z)`, the
  distribution of `torch.distributions.LogNormal(μ_j, scale)` shifted so that it is centred near `μ_j`:
  see `_noise`);
- the component sizes are multinomial with the mixture `weights` (equal by default) or, with
  `exact_counts=True`, exactly `n // k` points per component (the remaining `n mod k` dropped);
- every coordinate is then min-max scaled to `[0, upper_bound]` (a coordinate with no spread becomes 0), and the
  centres go through the same affine map;
- the points are shuffled, and the first `k` shuffled points are the initial centroids.

This is the task family of the k-means transformer's authors (Park et al., arXiv:2506.19125): their training tasks
(`family="normal"`, `scale=0.1`, `upper_bound=1`), their out-of-distribution families and their parameter sweep
(`exact_counts=True`, `upper_bound` in 1..10). Each task is drawn from its own generator,
`numpy.random.default_rng([seed, index])`, so a stream is reproducible, can be resumed at any index and can be split
across processes without two processes ever drawing the same task.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np


FAMILIES = ("normal", "cauchy", "gumbel", "laplace", "lognormal")


def _noise(family: str, rng: np.random.Generator, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """Coordinate-wise noise of one family at `scale` (location 0)."""
    if family == "normal":
        return rng.normal(0.0, scale, shape)
    if family == "cauchy":
        return scale * rng.standard_cauchy(shape)
    if family == "gumbel":
        return rng.gumbel(0.0, scale, shape)
    if family == "laplace":
        return rng.laplace(0.0, scale, shape)
    if family == "lognormal":
        # LogNormal(μ, s) = exp(μ + s z): placed additively at the centre, its noise is exp(s z) - 1 (median 0).
        return np.expm1(rng.normal(0.0, scale, shape))
    raise ValueError(f"unknown noise family {family!r}; choose one of {', '.join(FAMILIES)}")


@dataclasses.dataclass(frozen=True)
class TaskDistribution:
    """A distribution of clustering tasks (see the module docstring for the generative process).

    Attributes:
        num_points: points per task, `n`.
        num_clusters: mixture components and initial centroids per task, `k` (at most `n`).
        dim: dimension `d`.
        family: noise family, one of `FAMILIES`.
        scale: per-coordinate noise scale (0.1 in the authors' tasks).
        upper_bound: every coordinate is min-max scaled to `[0, upper_bound]`.
        weights: mixture weights (`k` non-negative numbers, normalised here); `None` for equal weights.
        exact_counts: exactly `n // k` points per component instead of multinomial counts.
    """

    num_points: int
    num_clusters: int
    dim: int
    family: str = "normal"
    scale: float = 0.1
    upper_bound: float = 1.0
    weights: tuple[float, ...] | None = None
    exact_counts: bool = False

    def __post_init__(self):
        for name in ("num_points", "num_clusters", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_clusters > self.num_points:
            raise ValueError(f"num_clusters ({self.num_clusters}) must not exceed num_points ({self.num_points})")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown noise family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if not (np.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be a finite non-negative number, got {self.scale!r}")
        if not (np.isfinite(self.upper_bound) and self.upper_bound > 0):
            raise ValueError(f"upper_bound must be a finite positive number, got {self.upper_bound!r}")
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float64)
            if weights.shape != (self.num_clusters,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError(f"weights must be {self.num_clusters} finite non-negative numbers, got {self.weights!r}")
            if weights.sum() <= 0:
                raise ValueError("weights must not all be zero")
            object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        if self.exact_counts and self.weights is not None:
            raise ValueError("exact_counts draws equal components; it cannot be combined with weights")

    def replace(self, **changes) -> "TaskDistribution":
        """A copy with some fields changed (for example another noise family)."""
        return dataclasses.replace(self, **changes)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One task: `points` (n', d), `initial_centroids` (k, d), `centres` (k, d), `labels` (n',), all float64
        except the integer component labels; n' = n, or `k·(n // k)` with `exact_counts`."""
        n, k, d = self.num_points, self.num_clusters, self.dim
        centres = rng.random((k, d))
        if self.exact_counts:
            labels = np.repeat(np.arange(k), n // k)
        else:
            probabilities = None if self.weights is None else np.asarray(self.weights) / sum(self.weights)
            labels = np.sort(rng.choice(k, size=n, p=probabilities))
        points = centres[labels] + _noise(self.family, rng, self.scale, (labels.size, d))
        low = points.min(axis=0)
        spread = points.max(axis=0) - low
        spread[spread == 0] = 1.0
        factor = self.upper_bound / spread
        points = (points - low) * factor
        centres = (centres - low) * factor
        order = rng.permutation(labels.size)
        points, labels = points[order], labels[order]
        return {
            "points": points,
            "initial_centroids": points[:k].copy(),
            "centres": centres,
            "labels": labels.astype(np.int64),
        }

    def task(self, seed: int, index: int) -> dict[str, np.ndarray]:
        """Task number `index` of the stream seeded by `seed` (independent of every other index)."""
        return self.sample(np.random.default_rng([int(seed), int(index)]))

    def tasks(self, seed: int, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[dict]:
        """Tasks `start, start + step, ...` (before `stop`; forever when `stop` is None) of the stream `seed`."""
        indices = itertools.count(start, step) if stop is None else range(start, stop, step)
        for index in indices:
            yield self.task(seed, index)

    def batch(self, seed: int, start: int, size: int) -> dict[str, np.ndarray]:
        """Tasks `start .. start + size - 1` stacked along a leading batch axis."""
        tasks = [self.task(seed, index) for index in range(start, start + size)]
        return {key: np.stack([task[key] for task in tasks]) for key in tasks[0]}


def _generate(distribution: dict, seed: int, shards: list[int], num_shards: int, start: int, stop: int | None):
    distribution = TaskDistribution(**distribution)
    for shard in shards:
        yield from distribution.tasks(seed, start=start + shard, stop=stop, step=num_shards)


def task_stream(
    distribution: TaskDistribution, seed: int = 0, start: int = 0, num_tasks: int | None = None, num_shards: int = 1
):
    """Tasks `start, start + 1, ...` of the stream `seed` as a `datasets.IterableDataset` of NumPy examples (the fields
    of `TaskDistribution.sample`, float64 coordinates kept as they are: a `torch.utils.data.DataLoader` collates them
    into float64 tensors, where the dataset's torch or numpy formats would round them to float32).

    With `num_tasks=None` the stream is endless. `num_shards` > 1 splits it into interleaved shards (shard `s`
    holds the tasks `start + s, start + s + num_shards, ...`), which `datasets.distributed.split_dataset_by_node` hands
    to different processes; with one shard every process that iterates the stream sees the same tasks in the same
    order. Starting at `start` costs nothing: every task is drawn from its own generator.
    """
    from datasets import IterableDataset

    if num_tasks is not None and num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer or None, got {num_tasks!r}")
    if start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    return IterableDataset.from_generator(
        _generate,
        gen_kwargs={
            "distribution": dataclasses.asdict(distribution),
            "seed": int(seed),
            "shards": list(range(num_shards)),
            "num_shards": num_shards,
            "start": int(start),
            "stop": None if num_tasks is None else int(start) + num_tasks,
        },
    )
