"""Pictures of a clustering (`kmeans_transformer.plotting`): PNG files, the PCA projection, refusals."""

import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from kmeans_transformer.plotting import (  # noqa: E402
    MissingDependencyError,
    plot_clustering,
    plot_estimator,
    project_2d,
)
from kmeans_transformer.reference import lloyd  # noqa: E402


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def clustering(rng, d, n=240, k=3, iterations=6):
    """Points from k separated blobs in d dimensions, and a Lloyd run on them with its trajectory."""
    centres = rng.normal(0, 6, (k, d))
    points = np.concatenate([centre + rng.normal(size=(n // k, d)) for centre in centres])
    trajectory = [points[rng.choice(len(points), k, replace=False)]]
    for _ in range(iterations):
        trajectory.append(lloyd(points, trajectory[-1], 1).centroids)
    labels = lloyd(points, trajectory[-1], 0).labels
    return points, labels, trajectory[-1], np.stack(trajectory)


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("with_trajectory", [False, True])
def test_png_has_the_figure_size(tmp_path, rng, d, with_trajectory):
    points, labels, centroids, trajectory = clustering(rng, d)
    path = tmp_path / "clusters.png"
    figure = plot_clustering(
        points, labels, centroids, trajectory=trajectory if with_trajectory else None, path=path, title="t",
        figsize=(6.0, 4.0), dpi=50,
    )
    assert isinstance(figure, Figure)
    assert path.stat().st_size > 0
    assert png_size(path) == (300, 200)


def test_projection_matches_scikit_learn_pca(rng):
    points = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    projected, ratio, components, mean = project_2d(points)
    pca = PCA(n_components=2).fit(points)
    signs = np.sign((components * pca.components_).sum(axis=1))
    assert np.all(np.abs(signs) == 1)
    np.testing.assert_allclose(components, signs[:, None] * pca.components_, atol=1e-10)
    np.testing.assert_allclose(projected, signs * pca.transform(points), atol=1e-10)
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(mean, points.mean(axis=0))
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-12)


def test_projection_of_points_on_a_line():
    points = np.outer(np.arange(5.0), [1.0, 2.0, 2.0])
    projected, ratio, components, _ = project_2d(points)
    np.testing.assert_allclose(ratio, [1.0, 0.0])
    np.testing.assert_allclose(components, [[1 / 3, 2 / 3, 2 / 3], [0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(projected[:, 0], 3 * (np.arange(5.0) - 2), atol=1e-12)


def test_plot_draws_the_projection_and_every_centroid(rng):
    points, labels, centroids, trajectory = clustering(rng, 4)
    labels[:7] = -1  # outliers
    ax = Figure().add_subplot()
    plot_clustering(points, labels, centroids, trajectory=trajectory, ax=ax, max_points=100, random_state=3)
    projected, ratio, components, mean = project_2d(points)
    scatters = ax.collections
    drawn_inliers, drawn_outliers = scatters[0].get_offsets(), scatters[1].get_offsets()
    assert len(drawn_inliers) + len(drawn_outliers) == 100
    # Every drawn point is the PCA projection of one of the points; outliers are the ones with label -1.
    for drawn, rows in ((drawn_inliers, labels >= 0), (drawn_outliers, labels < 0)):
        distances = np.abs(np.asarray(drawn)[:, None, :] - projected[rows][None]).sum(-1)
        assert distances.min(axis=1).max() < 1e-12
    np.testing.assert_allclose(scatters[1].get_facecolor()[0][:3], matplotlib.colors.to_rgb("#a0a0a0"))
    final = np.asarray(scatters[-1].get_offsets())
    np.testing.assert_allclose(final, (centroids - mean) @ components.T, atol=1e-12)
    initial = np.asarray(scatters[-2].get_offsets())
    np.testing.assert_allclose(initial, (trajectory[0] - mean) @ components.T, atol=1e-12)
    assert ax.get_xlabel() == f"PC1 ({100 * ratio[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC2 ({100 * ratio[1]:.1f}% of variance)"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [
        f"points (100 of {len(points)} drawn)",
        "outliers (7)",
        "initial centroids",
        "centroid paths (6 iterations)",
        "final centroids",
    ]


def test_two_dimensions_use_the_coordinates_and_feature_names(rng):
    points, labels, centroids, _ = clustering(rng, 2)
    ax = Figure().add_subplot()
    plot_clustering(points, labels, centroids, ax=ax, feature_names=["width", "height"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("width", "height")
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), points)
    np.testing.assert_array_equal(ax.collections[-1].get_offsets(), centroids)


def test_refuses_to_overwrite_and_bad_suffix(tmp_path, rng):
    points, labels, centroids, _ = clustering(rng, 2)
    path = tmp_path / "figure.png"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="exists"):
        plot_clustering(points, labels, centroids, path=path)
    assert path.read_bytes() == b"keep"
    plot_clustering(points, labels, centroids, path=path, overwrite=True)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    for name in ("figure.jpg", "figure"):
        with pytest.raises(ValueError, match=r"\.png"):
            plot_clustering(points, labels, centroids, path=tmp_path / name)
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(labels=np.full(240, 3)), r"\[-1, 2\]"),
        (dict(labels=np.zeros(10, dtype=int)), "labels"),
        (dict(centroids=np.zeros((3, 3))), "centroids"),
        (dict(trajectory=np.zeros((4, 2, 2))), "trajectory"),
        (dict(points=np.full((240, 2), np.nan)), "NaN"),
        (dict(feature_names=["a"]), "feature_names"),
    ],
)
def test_rejects_inconsistent_input(rng, change, match):
    points, labels, centroids, _ = clustering(rng, 2)
    arguments = dict(points=points, labels=labels, centroids=centroids) | change
    with pytest.raises(ValueError, match=match):
        plot_clustering(**arguments)


def test_missing_matplotlib_says_how_to_install(monkeypatch, rng):
    for name in ["matplotlib", *(name for name in sys.modules if name.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now raises ImportError
    points, labels, centroids, _ = clustering(rng, 2)
    with pytest.raises(ImportError, match=r'pip install "kmeans-transformer\[plots\]"') as error:
        plot_clustering(points, labels, centroids)
    assert isinstance(error.value, MissingDependencyError)


def test_plot_estimator(tmp_path, rng):
    from kmeans_transformer import KMeans

    points, _, _, _ = clustering(rng, 3)
    estimator = KMeans(3, random_state=0).fit(points)
    path = tmp_path / "estimator.png"
    figure = plot_estimator(estimator, points, path=path)
    ax = figure.axes[0]
    assert ax.get_title() == f"lloyd, k=3: inertia {estimator.inertia_:.6g}, {estimator.n_iter_} iterations"
    _, _, components, mean = project_2d(points)
    np.testing.assert_allclose(
        ax.collections[-1].get_offsets(), (estimator.cluster_centers_ - mean) @ components.T, atol=1e-10
    )
    np.testing.assert_allclose(
        ax.collections[-2].get_offsets(), (estimator.initial_centers_ - mean) @ components.T, atol=1e-10
    )
    assert png_size(path) == (800, 600)


def test_plot_estimator_draws_spherical_clusters_on_the_unit_sphere(rng):
    from kmeans_transformer import KMeans

    points, _, _, _ = clustering(rng, 3)
    estimator = KMeans(3, variant="spherical", random_state=0).fit(points)
    ax = plot_estimator(estimator, points).axes[0]
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    _, _, components, mean = project_2d(unit)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), (unit - mean) @ components.T, atol=1e-10)
    np.testing.assert_allclose(
        ax.collections[-1].get_offsets(), (estimator.cluster_centers_ - mean) @ components.T, atol=1e-10
    )
    assert ax.get_title().endswith("(unit-normalised points)")
