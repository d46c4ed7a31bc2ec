# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Initial centroids in torch for a batch of restarts: greedy k-means++ and uniform random points."""

import math

import torch


def _translated_to_mean(points: torch.Tensor, sample_weight: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """
    `x_i - m`, `m` the (weighted) mean `Σ w_i x_i / Σ w_i` summed in float64 `chunk_size` rows at a time, then
    rounded to the points' dtype: `x_i - m` of two numbers of that dtype is rounded once, relative to `|x_i - m|`,
    as exact as a float64 difference rounded back (distances do not depend on `m`, only on one `m` for all).
    """
    total = torch.zeros(points.shape[1], dtype=torch.float64, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        block = points[start : start + chunk_size].to(torch.float64)
        total += block.sum(dim=0) if sample_weight is None else sample_weight[start : start + chunk_size] @ block
    mean = total / (points.shape[0] if sample_weight is None else sample_weight.sum())
    return points - mean.to(points.dtype)


def _squared_distances(points: torch.Tensor, square_norms: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """`(n, d)`, `(n,)`, `(batch, m, d)` -> `(batch, m, n)`: `|c|^2 - 2 c.x + |x|^2`, clamped at 0."""
    scores = torch.matmul(centers, points.T)
    return ((centers * centers).sum(dim=-1, keepdim=True) - 2 * scores + square_norms).clamp_(min=0)


@torch.no_grad()
def batched_kmeans_plusplus(
    points: torch.Tensor,
    n_clusters: int,
    n_restarts: int = 1,
    generator: torch.Generator | None = None,
    n_local_trials: int | None = None,
    chunk_size: int = 65536,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Greedy k-means++ (Arthur and Vassilvitskii, 2007), as scikit-learn's `kmeans_plusplus`, for `n_restarts`
    independent restarts at once.

    The first centre is a uniform draw. Each next centre: draw `n_local_trials` candidates `x` with probability
    `D(x)^2 / Σ D^2`, where `D(x)` is the distance to the nearest centre chosen so far, and keep the candidate that
    leaves the smallest potential `Σ_i min(D(x_i)^2, |x_i - x|^2)`. With `sample_weight` `w` (scikit-learn's
    weighted k-means++): the first centre is drawn with probability `w_i / Σ w` (equal weights draw exactly as
    none), candidates with probability `w(x) D(x)^2 / Σ w D^2`, and the potential is `Σ_i w_i min(...)`, so a point
    of weight 0 is never drawn.

    Distances are translation-invariant, so they are computed on the points translated to their (weighted) mean
    `m` (summed in float64), as scikit-learn centres the data: the expanded `|c|^2 - 2 c.x + |x|^2` then errs by
    about `ε (|x - m|^2 + |c - m|^2)`, relative to the data's spread rather than to its distance from the origin
    (in float32 at `|x| ~ 1e4`, `ε |x|^2` exceeds the squared gaps between nearby clusters). The centres returned
    are the original rows. Memory: the `(n, d)` translated points, then `n_restarts * n_local_trials * chunk_size`
    distances (and `chunk_size * d` float64 values) at a time, plus `(n_restarts, n)` nearest distances.

    Args:
        points (`torch.Tensor` of shape `(n, d)`): the data, finite.
        n_clusters (`int`): number of centres `k <= n`.
        n_restarts (`int`): number of independent initialisations.
        generator (`torch.Generator`, *optional*): the random source (on the points' device); seed it to reproduce.
        n_local_trials (`int`, *optional*): candidates per centre; defaults to `2 + floor(ln k)`, as scikit-learn.
        chunk_size (`int`): points per block when scoring candidates.
        sample_weight (`torch.Tensor` of shape `(n,)`, *optional*): non-negative weights, not all 0.

    Returns:
        `(centers, indices)`: `(n_restarts, k, d)` centres, which are data points, and their `(n_restarts, k)` indices.

    Example:

    ```python
    >>> import torch
    >>> points = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    >>> centers, indices = batched_kmeans_plusplus(points, 2, generator=torch.Generator().manual_seed(0))
    >>> sorted(int(i) // 2 for i in indices[0])  # one centre in each group
    [0, 1]

    ```
    """
    n = points.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(n_clusters))
    device = points.device
    indices = torch.empty(n_restarts, n_clusters, dtype=torch.long, device=device)
    if sample_weight is not None:
        sample_weight = sample_weight.to(device=device, dtype=torch.float64)
    translated = _translated_to_mean(points, sample_weight, chunk_size)
    square_norms = (translated * translated).sum(dim=-1)
    if sample_weight is None or bool((sample_weight == sample_weight[0]).all()):  # equal weights draw as none
        indices[:, 0] = torch.randint(n, (n_restarts,), generator=generator, device=device)
    else:
        indices[:, 0] = torch.multinomial(sample_weight.expand(n_restarts, -1), 1, generator=generator)[:, 0]
    closest = _squared_distances(translated, square_norms, translated[indices[:, :1]])[:, 0]  # (restarts, n)
    rows = torch.arange(n_restarts, device=device)
    for c in range(1, n_clusters):
        weighted = closest if sample_weight is None else closest.to(torch.float64) * sample_weight
        cumulative = torch.cumsum(weighted, dim=1, dtype=torch.float64)
        targets = torch.rand(n_restarts, trials, generator=generator, device=device, dtype=torch.float64)
        targets = targets * cumulative[:, -1:]
        candidates = torch.searchsorted(cumulative, targets).clamp_(max=n - 1)  # (restarts, trials)
        potentials = torch.zeros(n_restarts, trials, dtype=torch.float64, device=device)
        for start in range(0, n, chunk_size):
            block = slice(start, start + chunk_size)
            distances = _squared_distances(translated[block], square_norms[block], translated[candidates])
            nearest = torch.minimum(distances, closest[:, None, block])
            if sample_weight is not None:
                nearest = nearest.to(torch.float64) * sample_weight[block]
            potentials += nearest.sum(dim=-1, dtype=torch.float64)
        best = candidates[rows, potentials.argmin(dim=1)]
        indices[:, c] = best
        closest = torch.minimum(closest, _squared_distances(translated, square_norms, translated[best][:, None])[:, 0])
    return points[indices], indices


@torch.no_grad()
def random_points(
    points: torch.Tensor,
    n_clusters: int,
    n_restarts: int = 1,
    generator: torch.Generator | None = None,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `n_clusters` distinct data points drawn uniformly without replacement, per restart (scikit-learn's
    `init="random"`); with `sample_weight`, drawn one after the other with probability proportional to the weight
    among those left (the keys `u^(1/w)` of Efraimidis and Spirakis, 2006; a point of weight 0 comes last). Returns
    `(centers, indices)` of shapes `(n_restarts, k, d)` and `(n_restarts, k)`.
    """
    n = points.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    keys = torch.rand(n_restarts, n, generator=generator, device=points.device)
    if sample_weight is not None:
        weights = sample_weight.to(device=points.device, dtype=torch.float64)
        keys = torch.where(weights > 0, torch.log(keys.to(torch.float64)) / weights.clamp(min=1e-300), -torch.inf)
    indices = keys.topk(n_clusters, dim=1).indices
    return points[indices], indices


__all__ = ["batched_kmeans_plusplus", "random_points"]
