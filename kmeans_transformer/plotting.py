"""Pictures of a clustering: points coloured by cluster, the centroids and the path each centroid took.

Two-dimensional points are drawn as they are; points of more dimensions are projected onto their first two principal
components (`project_2d`), and centroids and their paths with the same projection; one-dimensional points are drawn
with their value on the x axis and a random jitter on the y axis, the centroids at y = 0. The figure is drawn with
matplotlib's Agg canvas on a `matplotlib.figure.Figure` (pyplot and its global backend are left alone) or on an axes
the caller passes. Needs matplotlib: `pip install "kmeans-transformer[plots]"`.
"""

from pathlib import Path

import numpy as np


OUTLIER_COLOUR = "#a0a0a0"
# Up to this many clusters, centroids are annotated with their index.
_NAMED_LIMIT = 20


class MissingDependencyError(ImportError):
    """An optional dependency (matplotlib) is not installed."""


def require_matplotlib():
    """Import matplotlib, or raise `MissingDependencyError` telling how to install it."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
        import matplotlib.lines  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            'Plotting needs matplotlib; install it with: pip install "kmeans-transformer[plots]"'
        ) from error
    return matplotlib


def project_2d(points) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Project `points` `(n, d)` onto their first two principal components: `(projected (n, 2), explained_ratio (2,),
    components (2, d), mean (d,))`, with `projected = (points - mean) @ components.T`. Components come from the SVD of
    the centred points; each is signed so that its largest entry (in absolute value) is positive. When the points span
    fewer than two directions (to rounding), the missing components and their ratios are zero.

    >>> projected, ratio, components, mean = project_2d([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    >>> projected[:, 0].tolist(), ratio.tolist()
    ([-2.0, 0.0, 2.0], [1.0, 0.0])
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"`points` must have shape (n, d) with n >= 1, not {points.shape}.")
    mean = points.mean(axis=0)
    centred = points - mean
    _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
    # Directions beyond the numerical rank (as `numpy.linalg.matrix_rank` counts it) carry rounding only.
    rank_tolerance = (singular_values.max() if len(singular_values) else 0.0) * max(points.shape) * np.finfo(float).eps
    components = np.zeros((2, points.shape[1]))
    variances = np.zeros(2)
    for i in range(min(2, len(vt))):
        if singular_values[i] > rank_tolerance:
            components[i] = vt[i] * np.sign(vt[i][np.argmax(np.abs(vt[i]))])
            variances[i] = singular_values[i] ** 2
    total = float((singular_values**2).sum())
    ratio = variances / total if total > 0 else np.zeros(2)
    return centred @ components.T, ratio, components, mean


def plot_clustering(
    points,
    labels,
    centroids,
    trajectory=None,
    path=None,
    title: str | None = None,
    ax=None,
    max_points: int = 20000,
    random_state: int | None = 0,
    feature_names=None,
    overwrite: bool = False,
    figsize: tuple[float, float] = (8.0, 6.0),
    dpi: int = 100,
):
    """
    Draw `points` `(n, d)` coloured by `labels` `(n,)` (label -1 in grey, as outliers), the `centroids` `(k, d)` and,
    if given, each centroid's `trajectory` `(T + 1, k, d)`: a line from its initial position (hollow marker) through
    every iteration to its final position (filled marker). At most `max_points` points are drawn, a sample seeded by
    `random_state`; every centroid is drawn. Draws on `ax` if given, else on a new `figsize` figure at `dpi`; saves a
    PNG at `path` if given (an existing file only with `overwrite`). Returns the figure.
    """
    require_matplotlib()
    points, labels, centroids, trajectory = _check_inputs(points, labels, centroids, trajectory)
    if path is not None:
        path = _check_png_path(path, overwrite)
    n, d = points.shape
    k = len(centroids)
    if max_points < 1:
        raise ValueError(f"`max_points` must be >= 1, not {max_points}.")
    if feature_names is not None and len(feature_names) != d:
        raise ValueError(f"`feature_names` has {len(feature_names)} names for {d} features.")

    xy, to_plane, axis_labels = _plane(points, random_state, feature_names)

    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    colours = _cluster_colours(k)

    shown = np.arange(n)
    if n > max_points:
        shown = np.sort(np.random.default_rng(random_state).choice(n, size=max_points, replace=False))
    size = float(np.clip(2000 / np.sqrt(len(shown)), 2, 30))
    inliers = shown[labels[shown] >= 0]
    outliers = shown[labels[shown] < 0]
    ax.scatter(xy[inliers, 0], xy[inliers, 1], c=colours[labels[inliers]], s=size, alpha=0.6, linewidths=0, zorder=1)
    if len(outliers):
        ax.scatter(xy[outliers, 0], xy[outliers, 1], c=OUTLIER_COLOUR, s=size, marker="x", linewidths=0.8, zorder=1)

    _draw_centroids(ax, to_plane, centroids, trajectory, colours)

    handles = _legend_handles(n, len(shown), int((labels < 0).sum()), trajectory)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if d == 1:
        ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    if path is not None:
        save_figure(figure, path, overwrite=overwrite)
    return figure


def _plane(points, random_state, feature_names):
    """
    The points' 2-D coordinates, the map of any `(..., d)` values onto that plane, and the axis labels: the feature
    and a jitter for d = 1, the features for d = 2, the first two principal components above.
    """
    n, d = points.shape
    if d == 1:
        jitter = np.random.default_rng(random_state).uniform(-0.5, 0.5, size=n)
        name = feature_names[0] if feature_names else "x0"

        def to_plane(values):
            return np.concatenate([values, np.zeros((*values.shape[:-1], 1))], axis=-1)

        return np.stack([points[:, 0], jitter], axis=1), to_plane, (name, "jitter (no meaning)")
    if d == 2:
        return points, (lambda values: values), tuple(feature_names) if feature_names else ("x0", "x1")
    xy, ratio, components, mean = project_2d(points)
    axis_labels = tuple(f"PC{i + 1} ({100 * r:.1f}% of variance)" for i, r in enumerate(ratio))
    return xy, (lambda values: (values - mean) @ components.T), axis_labels


def _draw_centroids(ax, to_plane, centroids, trajectory, colours) -> None:
    """Each centroid's path (hollow start, dots per iteration) if `trajectory` is given, and its final position."""
    k = len(centroids)
    if trajectory is not None:
        paths = to_plane(trajectory)  # (T + 1, k, 2)
        for j in range(k):
            ax.plot(paths[:, j, 0], paths[:, j, 1], "-", color="black", linewidth=2.2, zorder=2)
            ax.plot(paths[:, j, 0], paths[:, j, 1], "-", color=colours[j], linewidth=1.2, zorder=3)
            middle = paths[1:-1, j]
            ax.scatter(middle[:, 0], middle[:, 1], color=colours[j], edgecolors="black", s=12, linewidths=0.5, zorder=3)
        start = paths[0]
        ax.scatter(start[:, 0], start[:, 1], facecolors="white", edgecolors=colours, s=70, linewidths=1.8, zorder=4)
    final = to_plane(centroids)
    ax.scatter(final[:, 0], final[:, 1], c=colours, edgecolors="black", marker="o", s=110, linewidths=1.5, zorder=5)
    if k <= _NAMED_LIMIT:
        for j, (x, y) in enumerate(final):
            ax.annotate(str(j), (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9, weight="bold", zorder=6)


def plot_estimator(estimator, X, path=None, sample_weight=None, **kwargs):
    """
    Plot a fitted `kmeans_transformer.KMeans` on `X`: its labels for `X` (`estimator.predict`), `cluster_centers_` and
    the trajectory of the chosen restart (`estimator.centroid_trajectory`, with the fit's `sample_weight`). The title
    names the variant, k, the inertia and the number of iterations; other keyword arguments go to `plot_clustering`.
    For `"spherical"`, whose centroids are unit vectors, the points and the trajectory are drawn unit-normalised, as
    the model sees them.
    """
    require_matplotlib()
    if kwargs.get("feature_names") is None and hasattr(estimator, "feature_names_in_"):
        kwargs["feature_names"] = [str(name) for name in estimator.feature_names_in_]
    spherical = getattr(estimator, "variant", None) == "spherical"
    if kwargs.get("title") is None:
        k = len(estimator.cluster_centers_)
        kwargs["title"] = (
            f"{getattr(estimator, 'variant', 'lloyd')}, k={k}: inertia {estimator.inertia_:.6g}, "
            f"{estimator.n_iter_} iteration{'s' if estimator.n_iter_ != 1 else ''}"
            + (" (unit-normalised points)" if spherical else "")
        )
    trajectory = estimator.centroid_trajectory(X, sample_weight=sample_weight)
    labels = estimator.predict(X, sample_weight=sample_weight)
    points = X.to_numpy(dtype=np.float64) if hasattr(X, "to_numpy") else np.asarray(X, dtype=np.float64)
    if spherical:
        points, trajectory = _unit(points), _unit(trajectory)
    return plot_clustering(points, labels, estimator.cluster_centers_, trajectory=trajectory, path=path, **kwargs)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def save_figure(figure, path, overwrite: bool = False) -> Path:
    """
    Save `figure` as a PNG at `path`, which must end in .png; an existing file only with `overwrite`. The PNG is
    written under a temporary name next to `path` and renamed into place when complete (`files.replacing_file`).
    """
    from .files import replacing_file

    path = _check_png_path(path, overwrite)
    with replacing_file(path, overwrite) as temporary:
        write_png(figure, temporary)
    return path


def write_png(figure, file) -> None:
    """Write `figure` as a PNG to exactly `file` (any name), no checks: `save_figure`'s step inside the rename."""
    figure.savefig(file, format="png", dpi=figure.dpi)


def check_plot_path(path, overwrite: bool = False, how: str = "pass --overwrite") -> Path:
    """Check, before any work, that matplotlib imports and that `path` ends in .png and does not exist (unless `overwrite`)."""
    require_matplotlib()
    return _check_png_path(path, overwrite, how)


def _check_png_path(path, overwrite: bool, how: str = "pass --overwrite") -> Path:
    from .tabular import check_output_path

    return check_output_path(path, (".png",), overwrite, what="plot", how=how)


def _check_inputs(points, labels, centroids, trajectory):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"`points` must have shape (n, d) with n, d >= 1, not {points.shape}.")
    n, d = points.shape
    if not np.isfinite(points).all():
        raise ValueError("`points` contain NaN or infinite values.")
    centroids = np.asarray(centroids, dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[1] != d or len(centroids) == 0:
        raise ValueError(f"`centroids` must have shape (k, {d}) with k >= 1, not {centroids.shape}.")
    k = len(centroids)
    labels = np.asarray(labels)
    if labels.shape != (n,) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"`labels` must be integers of shape ({n},), not {labels.dtype} of shape {labels.shape}.")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < -1 or labels.max() >= k):
        raise ValueError(f"`labels` must lie in [-1, {k - 1}] (-1 for outliers).")
    if trajectory is not None:
        trajectory = np.asarray(trajectory, dtype=np.float64)
        if trajectory.ndim != 3 or trajectory.shape[1:] != (k, d) or len(trajectory) == 0:
            raise ValueError(f"`trajectory` must have shape (T + 1, {k}, {d}), not {trajectory.shape}.")
    return points, labels, centroids, trajectory


def _cluster_colours(k: int) -> np.ndarray:
    """`k` RGB colours: tab10's, then tab20's, without their greys (grey marks outliers); a colour map beyond."""
    import matplotlib

    for name, greys in (("tab10", [7]), ("tab20", [14, 15])):
        colours = np.delete(np.asarray(matplotlib.colormaps[name].colors), greys, axis=0)
        if k <= len(colours):
            return colours[:k]
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, k))[:, :3]


def _legend_handles(n: int, shown: int, num_outliers: int, trajectory) -> list:
    from matplotlib.lines import Line2D

    points = f"points ({shown} of {n} drawn)" if shown < n else f"points ({n})"
    marker = dict(linestyle="", marker="o")
    handles = [Line2D([], [], color="grey", alpha=0.6, markersize=5, label=points, **marker)]
    if num_outliers:
        handles.append(Line2D([], [], linestyle="", marker="x", color=OUTLIER_COLOUR, label=f"outliers ({num_outliers})"))
    if trajectory is not None:
        iterations = len(trajectory) - 1
        start = dict(markerfacecolor="white", markeredgecolor="black", markersize=8)
        handles.append(Line2D([], [], label="initial centroids", **start, **marker))
        steps = f"centroid paths ({iterations} iteration{'s' if iterations != 1 else ''})"
        handles.append(Line2D([], [], color="black", marker="o", markersize=3, label=steps))
    final = dict(markerfacecolor="grey", markeredgecolor="black", markersize=9)
    handles.append(Line2D([], [], label="final centroids", **final, **marker))
    return handles
