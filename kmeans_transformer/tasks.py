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


def _generate(
    distribution: dict, seed: int, shards: list[int], num_shards: int, start: int, stop: int | None, kind: str = "TaskDistribution"
):
    distribution = DISTRIBUTIONS[kind](**distribution)
    for shard in shards:
        yield from distribution.tasks(seed, start=start + shard, stop=stop, step=num_shards)


def task_stream(
    distribution, seed: int = 0, start: int = 0, num_tasks: int | None = None, num_shards: int = 1
):
    """Tasks `start, start + 1, ...` of the stream `seed` as a `datasets.IterableDataset` of NumPy examples (the fields
    of the distribution's `sample`: a `TaskDistribution`, `MixturePopulation` or `MixtureInstances`; float64
    coordinates kept as they are: a `torch.utils.data.DataLoader` collates them into float64 tensors, where the
    dataset's torch or numpy formats would round them to float32).

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
            "kind": type(distribution).__name__,
        },
    )


# ---------------------------------------------------------------------------------------------------------------------
# Mixtures at a given separation: a fixed population (its centroids are what a learned layer should find) and random
# instances (what an in-context model is trained and evaluated on). Separation is measured as `Δ/σ`, the smallest
# distance between two centres in units of the noise scale.
# ---------------------------------------------------------------------------------------------------------------------

NOISES = ("normal", "student_t", "laplace")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_weights(weights, k: int) -> tuple[float, ...] | None:
    if weights is None:
        return None
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (k,) or not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise ValueError(f"weights must be {k} finite non-negative numbers, not all zero, got {weights!r}")
    return tuple(float(w) for w in array / array.sum())


def separated_centres(rng: np.random.Generator, k: int, d: int, separation: float) -> np.ndarray:
    """`k` centres in `R^d` whose smallest pairwise distance is exactly `separation`: `±(Δ/2) u` for `k = 2` (`u` a
    uniform unit vector, so the mixture is centred), otherwise `k` standard normal vectors rescaled."""
    if k == 1:
        return np.zeros((1, d))
    if k == 2:
        direction = rng.normal(size=d)
        direction /= np.linalg.norm(direction)
        return np.stack([direction, -direction]) * separation / 2
    centres = rng.normal(size=(k, d))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(k, 1)]
    return centres * separation / gaps.min()


def mixture_noise(noise: str, rng: np.random.Generator, shape: tuple[int, ...], degrees_of_freedom: float) -> np.ndarray:
    """Unit-variance noise: standard normal, Student t with `ν > 2` degrees of freedom scaled by `sqrt((ν-2)/ν)`,
    or Laplace with scale `1/√2`."""
    if noise == "normal":
        return rng.normal(size=shape)
    if noise == "student_t":
        return rng.standard_t(degrees_of_freedom, size=shape) * np.sqrt((degrees_of_freedom - 2) / degrees_of_freedom)
    if noise == "laplace":
        return rng.laplace(0.0, 1 / np.sqrt(2), size=shape)
    raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")


def _check_noise(noise: str, degrees_of_freedom: float) -> None:
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
    if noise == "student_t" and not degrees_of_freedom > 2:
        raise ValueError(f"student_t noise needs degrees_of_freedom > 2 (finite variance), got {degrees_of_freedom!r}")


def _draw(rng, centres, weights, scale, num_points, noise, degrees_of_freedom):
    k, d = centres.shape
    labels = rng.choice(k, size=num_points, p=None if weights is None else np.asarray(weights))
    points = centres[labels] + scale * mixture_noise(noise, rng, (num_points, d), degrees_of_freedom)
    return points, labels.astype(np.int64)


class _IndexedDraws:
    """Task `index` of the stream `seed` drawn from its own generator, `numpy.random.default_rng([seed, index])`."""

    def task(self, seed: int, index: int) -> dict[str, np.ndarray]:
        """Task number `index` of the stream `seed` (independent of every other index)."""
        return self.sample(np.random.default_rng([int(seed), int(index)]))

    def batch(self, seed: int, start: int, size: int) -> dict[str, np.ndarray]:
        """Tasks `start .. start + size - 1` stacked along a leading batch axis."""
        tasks = [self.task(seed, index) for index in range(start, start + size)]
        return {key: np.stack([task[key] for task in tasks]) for key in tasks[0]}

    def tasks(self, seed: int, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[dict]:
        """Tasks `start, start + step, ...` (before `stop`; forever when `stop` is None) of the stream `seed`."""
        indices = itertools.count(start, step) if stop is None else range(start, stop, step)
        for index in indices:
            yield self.task(seed, index)


@dataclasses.dataclass(frozen=True)
class MixturePopulation(_IndexedDraws):
    """One fixed mixture `Σ_j π_j N(μ_j, σ² I)` (or another unit-variance `noise` times `σ`): its centres are drawn once,
    from `seed` (`separated_centres`, smallest gap `separation · scale`); each task is `num_points` fresh draws.

    A stream of these tasks is the population a layer's risk is estimated on, one batch of fresh samples per step.
    """

    num_clusters: int
    dim: int
    separation: float
    num_points: int = 64
    scale: float = 1.0
    weights: tuple[float, ...] | None = None
    noise: str = "normal"
    degrees_of_freedom: float = 3.0
    seed: int = 0

    def __post_init__(self):
        for name in ("num_clusters", "dim", "num_points"):
            _check_positive_int(name, getattr(self, name))
        if not (np.isfinite(self.separation) and self.separation >= 0):
            raise ValueError(f"separation must be a finite non-negative number, got {self.separation!r}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {self.scale!r}")
        _check_noise(self.noise, self.degrees_of_freedom)
        object.__setattr__(self, "weights", _check_weights(self.weights, self.num_clusters))

    @property
    def centres(self) -> np.ndarray:
        """The `(k, d)` centres of the population."""
        rng = np.random.default_rng([int(self.seed), 2**31])
        return separated_centres(rng, self.num_clusters, self.dim, self.separation * self.scale)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`points` `(num_points, d)` and their component `labels`."""
        points, labels = _draw(rng, self.centres, self.weights, self.scale, self.num_points, self.noise, self.degrees_of_freedom)
        return {"points": points, "labels": labels}


def kmeans_plusplus_numpy(rng: np.random.Generator, points: np.ndarray, k: int) -> np.ndarray:
    """Plain k-means++ seeding (D² sampling, one candidate per centre) from `rng`: `(k, d)` data points."""
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        index = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(axis=1))
    return np.stack(centres)


@dataclasses.dataclass(frozen=True)
class MixtureInstances(_IndexedDraws):
    """Random mixture instances: each task draws its own centres at a separation `Δ/σ` uniform in
    `[separation_low, separation_high]` (`separated_centres`), then `num_points` points `μ_{z_i} + σ ε_i`.

    `weights`: the mixture weights, equal by default. `noise`: `normal`, `student_t` (heavy tails, `ν` degrees of
    freedom) or `laplace`, all of unit variance. `initialization`: the initial centroids every method starts from,
    `"kmeans++"` (D² seeding from the task's generator) or `"first"` (the first `k` points).

    Each task holds `points` `(n, d)`, `labels` `(n,)`, `centres` `(k, d)`, `initial_centroids` `(k, d)`,
    `separation` (the `Δ/σ` drawn), `scale` and `weights` `(k,)` (the true parameters, for the Bayes classifier).
    """

    num_points: int
    num_clusters: int
    dim: int
    separation_low: float = 1.0
    separation_high: float = 6.0
    scale: float = 1.0
    weights: tuple[float, ...] | None = None
    noise: str = "normal"
    degrees_of_freedom: float = 3.0
    initialization: str = "kmeans++"

    def __post_init__(self):
        for name in ("num_points", "num_clusters", "dim"):
            _check_positive_int(name, getattr(self, name))
        if self.num_clusters > self.num_points:
            raise ValueError(f"num_clusters ({self.num_clusters}) must not exceed num_points ({self.num_points})")
        if not (0 <= self.separation_low <= self.separation_high < np.inf):
            raise ValueError(
                f"separations must satisfy 0 <= separation_low <= separation_high < inf, got "
                f"{self.separation_low!r} and {self.separation_high!r}"
            )
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {self.scale!r}")
        _check_noise(self.noise, self.degrees_of_freedom)
        if self.initialization not in ("kmeans++", "first"):
            raise ValueError(f"initialization must be 'kmeans++' or 'first', got {self.initialization!r}")
        object.__setattr__(self, "weights", _check_weights(self.weights, self.num_clusters))

    def replace(self, **changes) -> "MixtureInstances":
        """A copy with some fields changed (another separation, noise or weights)."""
        return dataclasses.replace(self, **changes)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One instance (see the class docstring)."""
        k = self.num_clusters
        separation = rng.uniform(self.separation_low, self.separation_high)
        centres = separated_centres(rng, k, self.dim, separation * self.scale)
        points, labels = _draw(rng, centres, self.weights, self.scale, self.num_points, self.noise, self.degrees_of_freedom)
        initial = kmeans_plusplus_numpy(rng, points, k) if self.initialization == "kmeans++" else points[:k].copy()
        weights = np.full(k, 1 / k) if self.weights is None else np.asarray(self.weights)
        return {
            "points": points,
            "labels": labels,
            "centres": centres,
            "initial_centroids": initial,
            "separation": np.float64(separation),
            "scale": np.float64(self.scale),
            "weights": weights,
        }


DISTRIBUTIONS = {cls.__name__: cls for cls in (TaskDistribution, MixturePopulation, MixtureInstances)}
