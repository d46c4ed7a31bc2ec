"""Read and edit Lloyd's algorithm inside the transformer with nnsight.

Run: `python examples/nnsight_intervention.py` (needs `pip install nnsight`, the `interpret` extra).

The model is float64, exact `"hardmax"` Lloyd: T layers, one iteration each, four attention blocks per layer
(`point_erase`, `assign`, `centroid_erase`, `update`), each returning `(output, weights)` and added to its token
stream by a residual connection.

1. Read. The assign block's weights at iteration t are one-hot rows, `w_ij = [j = a_t(i)]`, where `a_t` is the
   assignment Lloyd's algorithm makes in iteration t. Predicted: they equal the one-hot of
   `reference.lloyd(...).label_history[t - 1]` (the independent NumPy loop), at every iteration.

2. Intervene. Zero the update block's output for centroid j at iteration t. The centroid erase has just turned the
   token into `[0 ; e_j ; c_j ; 1]` and the update would add the mean of the cluster into the position slice; with
   nothing added, centroid j sits at the origin after iteration t, and the remaining `T - t` layers are Lloyd's
   algorithm started from those centroids. Predicted: run the NumPy reference for t iterations, set centroid j to
   the zero vector, run it `T - t` iterations more; the model's final labels equal that prediction's and its
   centroids agree to 1e-12 (they are the same sums, possibly added in another order).

Where to intervene. With `share_layers=True` (the default) there is one layer module, called T times, so each
block is one module reached T times in a forward pass. nnsight numbers those visits: inside a trace,
`for _ in tracer.iter[t - 1]:` pins the reads and writes in the loop body to the t-th visit (0-based occurrence
t - 1), and `tracer.iter[:T]` walks all of them. With `share_layers=False` each iteration has its own layer,
`model.layers[t - 1]`, reached once, and no `tracer.iter` is needed. Both are shown and give the same result.

The dense path. Under `torch.no_grad()`, with the analytic weights and no attentions or hidden states requested, the
model runs a compact fast path that never calls the blocks (`model.engine() == "compact"`), and there would be nothing
for nnsight to read. The model here is built with `fast_hardmax=False` (a config field, which `build_model` passes
through), so the blocks always run; passing `output_hidden_states=True` to the traced call would do as well.
"""

import numpy as np
import torch
import nnsight
from nnsight import NNsight

from kmeans_transformer import reference
from kmeans_transformer.convert import build_model
from kmeans_transformer.validation import gaussian_mixture


def make_problem(seed: int = 0, num_points: int = 60, point_dim: int = 2, num_clusters: int = 3):
    """A Gaussian mixture `(n, d)` float64 and its first `k` points as the initial centroids `(k, d)`."""
    points = gaussian_mixture(np.random.default_rng(seed), num_points, point_dim, num_clusters)
    return points, points[:num_clusters].copy()


def build_lloyd(num_clusters: int, point_dim: int, num_iterations: int, share_layers: bool = True):
    """float64 hardmax Lloyd that always runs its blocks (`fast_hardmax=False`: no compact fast path)."""
    return build_model(
        num_clusters, point_dim, num_iterations, dtype="float64", share_layers=share_layers, fast_hardmax=False
    )


def trace_assign_weights(model, points, centroids) -> list[np.ndarray]:
    """The assign block's weights `(n, k)` at each iteration, read with nnsight: one array per iteration."""
    traced = NNsight(model)
    num_iterations = model.config.num_iterations
    with torch.no_grad():
        with traced.trace(torch.as_tensor(points), centroids=torch.as_tensor(centroids)) as tracer:
            weights = nnsight.save([])
            if model.config.share_layers:
                for _ in tracer.iter[:num_iterations]:  # the t-th visit of the one layer's assign block
                    weights.append(traced.layers[0].assign.output[1].clone())
            else:
                for t in range(num_iterations):  # one layer per iteration
                    weights.append(traced.layers[t].assign.output[1].clone())
    return [w[0, 0].numpy() for w in weights]


def zero_centroid_update(model, points, centroids, iteration: int, cluster: int):
    """
    Run the model with the update block's output for `cluster` zeroed at `iteration` (1-based). Returns the final
    labels `(n,)` and centroids `(k, d)`.
    """
    traced = NNsight(model)
    with torch.no_grad():
        with traced.trace(torch.as_tensor(points), centroids=torch.as_tensor(centroids)) as tracer:
            if model.config.share_layers:
                for _ in tracer.iter[iteration - 1]:  # only the iteration-th call of the shared layer
                    traced.layers[0].update.output[0][:, cluster] = 0.0
            else:
                traced.layers[iteration - 1].update.output[0][:, cluster] = 0.0
            output = traced.output.save()
    return output.labels[0].numpy(), output.centroids[0].numpy()


def predicted_zeroed_trajectory(points, centroids, num_iterations: int, iteration: int, cluster: int):
    """The prediction from the NumPy reference: `iteration` Lloyd steps, centroid `cluster` set to 0, then the rest."""
    before = reference.lloyd(points, centroids, iteration)
    moved = before.centroids.copy()
    moved[cluster] = 0.0
    return reference.lloyd(points, moved, num_iterations - iteration)


def main(num_iterations: int = 4, iteration: int = 2, cluster: int = 1):
    points, centroids = make_problem()
    k, d = centroids.shape
    plain = reference.lloyd(points, centroids, num_iterations)

    for share_layers in (True, False):
        model = build_lloyd(k, d, num_iterations, share_layers=share_layers)
        print(f"share_layers={share_layers}")

        weights = trace_assign_weights(model, points, centroids)
        for t, w in enumerate(weights, start=1):
            expected = np.eye(k)[plain.label_history[t - 1]]
            assert np.array_equal(w, expected), f"assign weights at iteration {t} are not the reference one-hot labels"
        print(f"  assign weights = one-hot of the reference labels at each of the {len(weights)} iterations")

        labels, final = zero_centroid_update(model, points, centroids, iteration, cluster)
        predicted = predicted_zeroed_trajectory(points, centroids, num_iterations, iteration, cluster)
        assert np.array_equal(labels, predicted.labels), "labels differ from the predicted trajectory"
        error = np.abs(final - predicted.centroids).max()
        assert error <= 1e-12, f"centroids differ from the predicted trajectory by {error}"
        assert not np.allclose(final, plain.centroids), "the intervention changed nothing on this problem"
        print(f"  zeroing the update of centroid {cluster} at iteration {iteration}:")
        print(f"    predicted (NumPy, centroid {cluster} set to 0 after iteration {iteration}) = model, "
              f"max error {error:.1e}")
        print(f"    labels changed for {int((labels != plain.labels).sum())} of {len(labels)} points")
        print(f"    final centroids without the intervention:\n{np.array2string(plain.centroids, precision=4)}")
        print(f"    final centroids with it:\n{np.array2string(final, precision=4)}")


if __name__ == "__main__":
    main()
