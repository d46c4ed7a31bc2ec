"""Reference clustering algorithms in plain NumPy, written independently of the transformer code.

They are what the models are tested and validated against; they never import the model.

Every algorithm runs exactly `num_iterations` iterations from the given centroids (no early stop) and computes in the
dtype of `points`. Ties in an argmin or argmax go to the lowest index, and a cluster with no member (or zero mass)
keeps its centroid unless a function says otherwise.
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ClusteringResult:
    """
    centroids: `(k, d)` centroids after the last iteration (the means, for a Gaussian mixture).
    labels: `(n,)` label of each point against the returned centroids, by the algorithm's assignment rule (lowest index
        on ties; -1 for a trimmed outlier).
    inertia: sum of squared distances of the (kept) points to the centroid of their label.
    label_history: `(T, n)` int64, the assignment made in each iteration (from the centroids entering it).
    centroid_history: `(T + 1, k, d)` the initial centroids, then the centroids after each iteration.
    outliers: `(n,)` bool, the points trimmed against the returned centroids (trimmed k-means only).
    outlier_history: `(T, n)` bool, the points trimmed in each iteration (trimmed k-means only).
    responsibilities: `(n, k)` the soft assignment against the returned parameters (soft k-means, Gaussian mixture).
    weights, variances: `(k,)` mixture weights and isotropic variances after the last iteration (Gaussian mixture).
    weight_history, variance_history: `(T + 1, k)` the initial values, then the values after each iteration.
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    label_history: np.ndarray
    centroid_history: np.ndarray
    outliers: np.ndarray | None = None
    outlier_history: np.ndarray | None = None
    responsibilities: np.ndarray | None = None
    weights: np.ndarray | None = None
    variances: np.ndarray | None = None
    weight_history: np.ndarray | None = None
    variance_history: np.ndarray | None = None


# The name the Lloyd reference has always returned: the same class.
LloydResult = ClusteringResult


def squared_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """`(n, k)` matrix of `|x_i - c_j|^2`, one cluster at a time."""
    distances = np.empty((points.shape[0], centroids.shape[0]), dtype=points.dtype)
    for j, centroid in enumerate(centroids):
        distances[:, j] = ((points - centroid) ** 2).sum(axis=1)
    return distances


def assign_labels(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """E-step: `argmin_j |x_i - c_j|^2`, the first minimum on ties."""
    return squared_distances(points, centroids).argmin(axis=1)


def update_centroids(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """M-step: each centroid becomes the mean of its members; a cluster with no member keeps its centroid."""
    new_centroids = centroids.copy()
    for j in range(centroids.shape[0]):
        members = points[labels == j]
        if len(members):
            new_centroids[j] = members.sum(axis=0) / len(members)
    return new_centroids


def inertia(points: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the points to the centroid of their label."""
    return float(((points - centroids[labels]) ** 2).sum())


def _label_array(label_history: list, num_points: int) -> np.ndarray:
    """`(T, n)` int64 array of the per-iteration labels (also for T = 0)."""
    return np.array(label_history, dtype=np.int64).reshape(len(label_history), num_points)


def _hard_clustering(points, centroids, num_iterations: int, assign, new_centre) -> ClusteringResult:
    """The loop of the hard-assignment references: each iteration `labels = assign(points, centroids)`, then every
    cluster `j` with members becomes `new_centre(members, j, centroids)` (`members` a boolean mask; None keeps the
    centroid), and a cluster with no member keeps its centroid. `inertia` is Lloyd's, of the final labels."""
    label_history, centroid_history = [], [centroids]
    for _ in range(num_iterations):
        labels = assign(points, centroids)
        new_centroids = centroids.copy()
        for j in range(centroids.shape[0]):
            members = labels == j
            if members.any():
                centre = new_centre(members, j, centroids)
                if centre is not None:
                    new_centroids[j] = centre
        label_history.append(labels)
        centroids = new_centroids
        centroid_history.append(centroids)
    return _result(points, centroids, assign(points, centroids), label_history, centroid_history)


def lloyd(points, centroids, num_iterations: int) -> ClusteringResult:
    """Lloyd's algorithm for exactly `num_iterations` iterations from the given centroids (no early stop)."""
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    return _hard_clustering(
        points, centroids, num_iterations, assign_labels, lambda members, j, c: points[members].sum(axis=0) / members.sum()
    )


# Soft k-means


def weighted_means(points: np.ndarray, weights: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """`c_j = Σ_i w_ij x_i / Σ_i w_ij` for each cluster `j` (`weights` `(n, k)`); a cluster of total weight 0 keeps `c_j`."""
    new_centroids = centroids.copy()
    for j in range(centroids.shape[0]):
        mass = weights[:, j].sum()
        if mass > 0:
            new_centroids[j] = (weights[:, j, None] * points).sum(axis=0) / mass
    return new_centroids


def soft_responsibilities(distances: np.ndarray, inverse_temperature: float) -> np.ndarray:
    """`r_ij = softmax_j(-γ D_ij)`, stably: `exp(-γ (D_ij - min_l D_il))` normalised over `j`."""
    weights = np.exp(-float(inverse_temperature) * (distances - distances.min(axis=1, keepdims=True)))
    return weights / weights.sum(axis=1, keepdims=True)


def _result(points, centroids, labels, label_history, centroid_history, responsibilities=None) -> ClusteringResult:
    """The result of a loop: Lloyd's inertia of `labels`, the histories, and the final `responsibilities` if any."""
    return ClusteringResult(
        centroids=centroids,
        labels=labels,
        inertia=inertia(points, labels, centroids),
        label_history=_label_array(label_history, len(points)),
        centroid_history=np.array(centroid_history),
        responsibilities=responsibilities,
    )


def soft_kmeans(points, centroids, num_iterations: int, inverse_temperature: float) -> ClusteringResult:
    """Soft k-means: `r = softmax_j(-γ |x_i - c_j|^2)`, then `c_j = Σ_i r_ij x_i / Σ_i r_ij`.

    A centroid with zero mass `Σ_i r_ij` keeps its value. `label_history` and `labels` are the nearest centroids (the
    `γ → ∞` limit); `responsibilities` is `r` against the returned centroids; `inertia` is Lloyd's.
    """
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    label_history, centroid_history = [], [centroids]
    for _ in range(num_iterations):
        distances = squared_distances(points, centroids)
        responsibilities = soft_responsibilities(distances, inverse_temperature)
        label_history.append(distances.argmin(axis=1))
        centroids = weighted_means(points, responsibilities, centroids)
        centroid_history.append(centroids)
    distances = squared_distances(points, centroids)
    labels = distances.argmin(axis=1)
    responsibilities = soft_responsibilities(distances, inverse_temperature)
    return _result(points, centroids, labels, label_history, centroid_history, responsibilities)


# Spherical k-means


def _unit_rows(array: np.ndarray, name: str) -> np.ndarray:
    """`x / |x|` row by row; a zero row has no direction and raises."""
    norms = np.sqrt((array**2).sum(axis=1))
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise ValueError(f"spherical k-means needs nonzero vectors, but {name} {zero.tolist()} have zero norm")
    return array / norms[:, None]


def cosine_labels(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """`argmax_j x_i · c_j` (the largest cosine for unit vectors), one cluster at a time, the first maximum on ties."""
    similarities = np.empty((points.shape[0], centroids.shape[0]), dtype=points.dtype)
    for j, centroid in enumerate(centroids):
        similarities[:, j] = points @ centroid
    return similarities.argmax(axis=1)


def spherical_kmeans(points, centroids, num_iterations: int) -> ClusteringResult:
    """Spherical k-means on `x̂ = x / |x|`: label by the largest cosine, then `c_j = m_j / |m_j|`, `m_j` the mean of
    the members of cluster `j`.

    A cluster whose members cancel (`m_j = 0`, no direction) or that has no member keeps its centroid. Points and
    initial centroids must be nonzero (`ValueError` otherwise). `centroid_history` holds unit centroids (the first is
    the normalised initial one); `inertia` is `Σ_i |x̂_i - c_label|^2` on the normalised points.
    """
    points = _unit_rows(np.asarray(points), "points")
    centroids = _unit_rows(np.array(centroids, dtype=points.dtype), "centroids")

    def normalised_mean(members, j, centroids):
        mean = points[members].sum(axis=0) / members.sum()
        norm = np.sqrt((mean**2).sum())
        return mean / norm if norm > 0 else None

    return _hard_clustering(points, centroids, num_iterations, cosine_labels, normalised_mean)


# Trimmed k-means


def linear_quantile(values, q: float):
    """The `q`-quantile of `values` by linear interpolation between order statistics (NumPy's `"linear"` method).

    With `s_0 <= ... <= s_{m-1}` the sorted values, `h = (m - 1) q`, `lo = ⌊h⌋` and `t = h - lo`: `s_lo` when `t = 0`
    or `lo = m - 1`, else `lerp(s_lo, s_{lo+1}, t)` with `lerp(a, b, t) = a + t (b - a)` for `t < 1/2` and
    `b - (1 - t)(b - a)` otherwise.

    >>> float(linear_quantile([4.0, 1.0, 3.0, 2.0], 0.5))
    2.5
    """
    s = np.sort(np.asarray(values).ravel())
    if len(s) == 0:
        raise ValueError("the quantile of an empty set is undefined")
    h = (len(s) - 1) * q
    lo = math.floor(h)
    t = h - lo
    if t == 0 or lo == len(s) - 1:
        return s[lo]
    a, b = s[lo], s[lo + 1]
    return a + t * (b - a) if t < 0.5 else b - (b - a) * (1 - t)


def _check_trimming(trim_quantile, trim_fraction) -> None:
    if (trim_quantile is None) == (trim_fraction is None):
        raise ValueError("trimmed k-means needs exactly one of trim_quantile and trim_fraction")
    if trim_quantile is not None and not 0 < trim_quantile <= 1:
        raise ValueError(f"trim_quantile must lie in (0, 1], got {trim_quantile}")
    if trim_fraction is not None and not 0 <= trim_fraction < 1:
        raise ValueError(f"trim_fraction must lie in [0, 1), got {trim_fraction}")


def trimmed_assignment(points: np.ndarray, centroids: np.ndarray, trim_quantile=None, trim_fraction=None):
    """Nearest-centroid labels `(n,)` and the outlier mask `(n,)` of the trimming rule, with `δ_i = |x_i - c_label|^2`.

    `trim_quantile = q`: a point is an outlier iff `δ_i > Q_j`, `Q_j` the `linear_quantile` of level `q` of `δ` over
    the members of its cluster `j`. `trim_fraction = α`: the `⌊α n⌋` points with the largest `δ_i` are outliers (the
    last entries of a stable ascending sort, so among equal distances the higher index is trimmed first).
    """
    _check_trimming(trim_quantile, trim_fraction)
    distances = squared_distances(points, centroids)
    labels = distances.argmin(axis=1)
    nearest = distances[np.arange(len(points)), labels]
    outliers = np.zeros(len(points), dtype=bool)
    if trim_quantile is not None:
        for j in range(centroids.shape[0]):
            members = labels == j
            if members.any():
                outliers[members] = nearest[members] > linear_quantile(nearest[members], trim_quantile)
    else:
        num_trimmed = math.floor(trim_fraction * len(points))
        order = np.argsort(nearest, kind="stable")
        outliers[order[len(points) - num_trimmed :]] = True
    return labels, outliers


def trimmed_kmeans(points, centroids, num_iterations: int, trim_quantile=None, trim_fraction=None) -> ClusteringResult:
    """Trimmed k-means: label by the nearest centroid, trim outliers (see `trimmed_assignment`; exactly one of
    `trim_quantile` in (0, 1] and `trim_fraction` in [0, 1)), then each centroid becomes the mean of its kept members.

    A cluster with no kept member keeps its centroid. Labels are -1 for outliers; `inertia` sums `|x_i - c_label|^2`
    over the kept points only.
    """
    _check_trimming(trim_quantile, trim_fraction)
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    label_history, outlier_history, centroid_history = [], [], [centroids]
    for _ in range(num_iterations):
        labels, outliers = trimmed_assignment(points, centroids, trim_quantile, trim_fraction)
        centroids = update_centroids(points[~outliers], labels[~outliers], centroids)
        label_history.append(np.where(outliers, -1, labels))
        outlier_history.append(outliers)
        centroid_history.append(centroids)
    labels, outliers = trimmed_assignment(points, centroids, trim_quantile, trim_fraction)
    return ClusteringResult(
        centroids=centroids,
        labels=np.where(outliers, -1, labels),
        inertia=inertia(points[~outliers], labels[~outliers], centroids),
        label_history=_label_array(label_history, len(points)),
        centroid_history=np.array(centroid_history),
        outliers=outliers,
        outlier_history=np.array(outlier_history, dtype=bool).reshape(num_iterations, len(points)),
    )


# Sparsemax k-means


def sparsemax(z) -> np.ndarray:
    """Euclidean projection of `z` onto the probability simplex (Martins & Astudillo, 2016).

    With `z_(1) >= ... >= z_(m)` sorted: `K = max{r : 1 + r z_(r) > Σ_{s<=r} z_(s)}`, `τ = (Σ_{s<=K} z_(s) - 1) / K`
    and `p = max(z - τ, 0)`.

    >>> sparsemax(np.array([0.5, 0.0]))
    array([0.75, 0.25])
    >>> sparsemax(np.array([2.0, 0.0, 0.5]))
    array([1., 0., 0.])
    """
    z = np.asarray(z)
    descending = np.sort(z)[::-1]
    cumulative = np.cumsum(descending)
    ranks = np.arange(1, len(z) + 1)
    support = int(ranks[1 + ranks * descending > cumulative].max())
    threshold = (cumulative[support - 1] - 1) / support
    return np.maximum(z - threshold, 0)


def sparse_kmeans(points, centroids, num_iterations: int, inverse_temperature: float) -> ClusteringResult:
    """Sparsemax k-means: label by the nearest centroid, then `c_j = Σ_{i∈S_j} p_i x_i` with
    `p = sparsemax(-γ |x_i - c_j|^2 / √d)` over the members `S_j` (distances to the centroid entering the iteration).

    A cluster with no member keeps its centroid. As `γ → 0`, `p` is uniform over the members (Lloyd's mean); as
    `γ → ∞`, it picks the member nearest to the centroid. `inertia` is Lloyd's.
    """
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    scale = math.sqrt(points.shape[1])
    gamma = float(inverse_temperature)

    def sparsemax_average(members, j, centroids):
        distances = ((points[members] - centroids[j]) ** 2).sum(axis=1)
        weights = sparsemax(-gamma * distances / scale)
        return (weights[:, None] * points[members]).sum(axis=0)

    return _hard_clustering(points, centroids, num_iterations, assign_labels, sparsemax_average)


# k-medoids


def kmedoids(points, centroids, num_iterations: int) -> ClusteringResult:
    """k-medoids by alternation: label by the nearest centre, then each centre becomes the member `x_i` of its cluster
    with the smallest `Σ_{i'∈S_j} |x_i - x_i'|` (Euclidean, not squared; the first in index order on ties).

    A cluster with no member keeps its centre. The initial centres need not be points; `inertia` is Lloyd's (squared).
    """
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)

    def medoid(members, j, centroids):
        candidates = points[members]
        costs = np.sqrt(squared_distances(candidates, candidates)).sum(axis=1)
        return candidates[costs.argmin()]

    return _hard_clustering(points, centroids, num_iterations, assign_labels, medoid)


def medoid_probabilities(points, labels, centroids, inverse_temperature: float) -> np.ndarray:
    """`(k, n)` law of a Gumbel-max medoid draw: row `j` is `softmax_{i∈S_j}(-γ |x_i - c_j|^2)` over the members `S_j`
    of cluster `j` (computed stably, relative to the nearest member), 0 off `S_j`, and all zero for an empty cluster.
    """
    points = np.asarray(points)
    labels = np.asarray(labels)
    centroids = np.asarray(centroids, dtype=points.dtype)
    distances = squared_distances(points, centroids)
    probabilities = np.zeros((centroids.shape[0], points.shape[0]), dtype=points.dtype)
    for j in range(centroids.shape[0]):
        members = labels == j
        if members.any():
            weights = np.exp(-float(inverse_temperature) * (distances[members, j] - distances[members, j].min()))
            probabilities[j, members] = weights / weights.sum()
    return probabilities


# Isotropic Gaussian mixture


def gaussian_responsibilities(points: np.ndarray, means: np.ndarray, variances: np.ndarray, weights: np.ndarray):
    """E-step: `r = softmax_j(log ρ_ij)`, `log ρ_ij = log π_j - (d/2) log(2π σ_j^2) - |x_i - μ_j|^2 / (2 σ_j^2)`, by
    log-sum-exp (the row maximum subtracted first); a component with `π_j = 0` gets `r_ij = 0`.
    """
    d = points.shape[1]
    with np.errstate(divide="ignore"):
        log_weights = np.log(weights)
    log_rho = log_weights - (d / 2) * np.log(2 * np.pi * variances) - squared_distances(points, means) / (2 * variances)
    rho = np.exp(log_rho - log_rho.max(axis=1, keepdims=True))
    return rho / rho.sum(axis=1, keepdims=True)


def gaussian_mixture_em(points, means, variances, weights, num_iterations: int, reg_covar: float = 0.0) -> ClusteringResult:
    """EM for a mixture of isotropic Gaussians `N(μ_j, σ_j^2 I)` with weights `π_j`.

    E-step: `gaussian_responsibilities`. M-step, with `R_j = Σ_i r_ij`: `μ_j = Σ_i r_ij x_i / R_j`,
    `σ_j^2 = Σ_i r_ij |x_i - μ_j|^2 / (d R_j) + reg_covar` (the new mean) and `π_j = R_j / n`. A component with `R_j = 0` keeps
    `μ_j` and `σ_j^2` and gets `π_j = 0`. The variances must stay positive.

    `centroids` are the means; `labels = argmax_j r_ij` against the returned parameters, `label_history` the same from
    each iteration's E-step; `inertia` is `Σ_i |x_i - μ_label|^2`.
    """
    points = np.asarray(points)
    n, d = points.shape
    means = np.array(means, dtype=points.dtype)
    variances = np.array(variances, dtype=points.dtype)
    weights = np.array(weights, dtype=points.dtype)
    label_history, mean_history, variance_history, weight_history = [], [means], [variances], [weights]
    for _ in range(num_iterations):
        responsibilities = gaussian_responsibilities(points, means, variances, weights)
        means, variances, weights = means.copy(), variances.copy(), weights.copy()
        for j in range(means.shape[0]):
            mass = responsibilities[:, j].sum()
            if mass > 0:
                means[j] = (responsibilities[:, j, None] * points).sum(axis=0) / mass
                variances[j] = (responsibilities[:, j] * ((points - means[j]) ** 2).sum(axis=1)).sum() / (d * mass) + reg_covar
                weights[j] = mass / n
            else:
                weights[j] = 0
        label_history.append(responsibilities.argmax(axis=1))
        mean_history.append(means)
        variance_history.append(variances)
        weight_history.append(weights)
    responsibilities = gaussian_responsibilities(points, means, variances, weights)
    labels = responsibilities.argmax(axis=1)
    return ClusteringResult(
        centroids=means,
        labels=labels,
        inertia=inertia(points, labels, means),
        label_history=_label_array(label_history, n),
        centroid_history=np.array(mean_history),
        responsibilities=responsibilities,
        weights=weights,
        variances=variances,
        weight_history=np.array(weight_history),
        variance_history=np.array(variance_history),
    )


# Fuzzy c-means


def _check_fuzzifier(fuzzifier: float) -> float:
    fuzzifier = float(fuzzifier)
    if not fuzzifier > 1:
        raise ValueError(f"fuzzy c-means needs a fuzzifier m > 1, got {fuzzifier}")
    return fuzzifier


def euclidean_distances(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """`(n, k)` matrix of `|x_i - c_j|` (not squared), one cluster at a time, from the differences `x_i - c_j`.

    `np.hypot.reduce` accumulates `sqrt(a^2 + b^2)` without forming the squares, so neither a huge distance overflows
    nor a tiny one underflows to 0.
    """
    distances = np.empty((points.shape[0], centroids.shape[0]), dtype=points.dtype)
    for j, centroid in enumerate(centroids):
        distances[:, j] = np.hypot.reduce(points - centroid, axis=1)
    return distances


def fuzzy_memberships(points, centroids, fuzzifier: float) -> np.ndarray:
    """`(n, k)` fuzzy c-means memberships `u_ij = 1 / Σ_l (d_ij / d_il)^(2/(m-1))`, `d_ij = |x_i - c_j|`, `m > 1`.

    Computed stably against the nearest distance `δ_i = min_l d_il`: with `p = 2/(m-1)`,
    `u_ij = d_ij^-p / Σ_l d_il^-p = w_ij / Σ_l w_il`, `w_ij = (δ_i / d_ij)^p` in `[0, 1]`, so no power overflows.
    A point at zero distance from one or more centroids (`δ_i = 0`, the limit of the formula) splits its membership
    equally among those coinciding centroids and has 0 elsewhere. Each row sums to 1; `m → ∞` gives `1/k`.

    >>> fuzzy_memberships(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]), 2.0)
    array([[1. , 0. ],
           [0.5, 0.5]])
    """
    exponent = 2.0 / (_check_fuzzifier(fuzzifier) - 1.0)
    points = np.asarray(points)
    centroids = np.asarray(centroids, dtype=points.dtype)
    distances = euclidean_distances(points, centroids)
    nearest = distances.min(axis=1)
    memberships = np.empty_like(distances)
    on_centroid = nearest == 0
    coinciding = (distances[on_centroid] == 0).astype(points.dtype)
    memberships[on_centroid] = coinciding / coinciding.sum(axis=1, keepdims=True)
    off = ~on_centroid
    weights = (nearest[off, None] / distances[off]) ** exponent
    memberships[off] = weights / weights.sum(axis=1, keepdims=True)
    return memberships


def fuzzy_cmeans(points, centroids, num_iterations: int, fuzzifier: float) -> ClusteringResult:
    """Fuzzy c-means (Bezdek): `u = fuzzy_memberships(x, c, m)` from the centroids entering the iteration, then
    `c_j = Σ_i u_ij^m x_i / Σ_i u_ij^m`.

    A centroid with zero mass `Σ_i u_ij^m` keeps its value. `label_history` and `labels` are `argmax_j u_ij` (the first
    on ties), i.e. the nearest centroids; `responsibilities` holds the memberships `u` against the returned centroids;
    `inertia` is Lloyd's, of those labels. (scikit-fuzzy's `cmeans` runs each iteration as update-then-assign from
    initial memberships: started from `fuzzy_memberships(x, c0, m)` it gives the same centroids.)
    """
    fuzzifier = _check_fuzzifier(fuzzifier)
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    label_history, centroid_history = [], [centroids]
    for _ in range(num_iterations):
        memberships = fuzzy_memberships(points, centroids, fuzzifier)
        weights = memberships**fuzzifier
        label_history.append(memberships.argmax(axis=1))
        centroids = weighted_means(points, weights, centroids)
        centroid_history.append(centroids)
    memberships = fuzzy_memberships(points, centroids, fuzzifier)
    labels = memberships.argmax(axis=1)
    return _result(points, centroids, labels, label_history, centroid_history, memberships)


__all__ = [
    "ClusteringResult",
    "LloydResult",
    "assign_labels",
    "weighted_means",
    "cosine_labels",
    "euclidean_distances",
    "fuzzy_cmeans",
    "fuzzy_memberships",
    "gaussian_mixture_em",
    "gaussian_responsibilities",
    "inertia",
    "kmedoids",
    "linear_quantile",
    "lloyd",
    "medoid_probabilities",
    "soft_kmeans",
    "soft_responsibilities",
    "sparse_kmeans",
    "sparsemax",
    "spherical_kmeans",
    "squared_distances",
    "trimmed_assignment",
    "trimmed_kmeans",
    "update_centroids",
]
