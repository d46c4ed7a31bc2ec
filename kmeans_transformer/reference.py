"""Reference clustering algorithms in plain NumPy, written independently of the transformer code.

They are what the models are tested and validated against; they never import the model.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class LloydResult:
    """
    centroids: `(k, d)` centroids after the last iteration.
    labels: `(n,)` index of the nearest returned centroid (lowest index on ties).
    inertia: sum of squared distances of the points to the centroid of their label.
    label_history: `(T, n)` the assignment made in each iteration (from the centroids entering it).
    centroid_history: `(T + 1, k, d)` the initial centroids, then the centroids after each iteration.
    """

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    label_history: np.ndarray
    centroid_history: np.ndarray


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


def lloyd(points, centroids, num_iterations: int) -> LloydResult:
    """Lloyd's algorithm for exactly `num_iterations` iterations from the given centroids (no early stop)."""
    points = np.asarray(points)
    centroids = np.array(centroids, dtype=points.dtype)
    label_history, centroid_history = [], [centroids]
    for _ in range(num_iterations):
        labels = assign_labels(points, centroids)
        centroids = update_centroids(points, labels, centroids)
        label_history.append(labels)
        centroid_history.append(centroids)
    labels = assign_labels(points, centroids)
    return LloydResult(
        centroids=centroids,
        labels=labels,
        inertia=inertia(points, labels, centroids),
        label_history=np.array(label_history, dtype=np.int64).reshape(num_iterations, len(points)),
        centroid_history=np.array(centroid_history),
    )


__all__ = ["LloydResult", "assign_labels", "inertia", "lloyd", "squared_distances", "update_centroids"]
