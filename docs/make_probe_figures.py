"""Draw the figures of docs/probing.md with `kmeans_transformer.probe`.

- figures/feature_weighted_iris.png: Lloyd's k-means and the feature-weighted alteration (sepal width scaled by 3
  in the assign block) on iris, from the same initial centroids.
- figures/probe_attention.png, figures/probe_changes.png: the four attention maps of the first layer and the label
  changes per iteration of a Lloyd run on a generated mixture.
"""

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402

from kmeans_transformer import probe  # noqa: E402
from kmeans_transformer.convert import build_model  # noqa: E402
from kmeans_transformer.validation import gaussian_mixture  # noqa: E402

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("feature_weighted_kmeans", HERE.parent / "examples" / "feature_weighted_kmeans.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def feature_weighted_iris(path: Path) -> None:
    points, initial = load_iris().data, load_iris().data[[0, 50, 100]]
    plain = build_model(3, 4, 10, dtype="float64")
    weighted = example.scale_feature(build_model(3, 4, 10, dtype="float64"), 1, 3.0)
    figure, axes = plt.subplots(1, 2, figsize=(14, 6), dpi=probe.DPI)
    for ax, model, title in zip(axes, (plain, weighted), ("Lloyd's k-means", "sepal width × 3 in the assign block")):
        probe.plot_centroid_trajectories(probe.trace(model, points, centroids=initial), ax=ax)
        ax.set_title(f"{title} (iris, 10 iterations)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def mixture_run(attention_path: Path, changes_path: Path) -> None:
    rng = np.random.default_rng(3)
    points = gaussian_mixture(rng, 60, 2, 4, spread=3.0)
    run = probe.trace(build_model(4, 2, 6, dtype="float64"), points, centroids=points[:4])
    plt.close(probe.plot_attention_maps(run, layer=0, path=attention_path, overwrite=True))
    plt.close(probe.plot_assignment_changes(run, path=changes_path, overwrite=True))


if __name__ == "__main__":
    figures = HERE / "figures"
    feature_weighted_iris(figures / "feature_weighted_iris.png")
    mixture_run(figures / "probe_attention.png", figures / "probe_changes.png")
    print(f"wrote {figures}/feature_weighted_iris.png, probe_attention.png, probe_changes.png")
