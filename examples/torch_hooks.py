"""Record and edit the blocks of the k-means transformer with plain PyTorch forward hooks.

Run: `python examples/torch_hooks.py`.

Each layer of the model is one iteration of Lloyd's algorithm, four attention blocks (`BLOCK_NAMES`: `point_erase`,
`assign`, `centroid_erase`, `update`), each returning `(output, weights)`; the layer adds `output` to its stream (the
residual connection). A forward hook on a block sees that pair, so it sees exactly what the block adds. Tokens are
`[position (d) ; code (k) ; previous (d) ; is_centroid (1)]` (`config.token_slices`).

Predictions, checked against `kmeans_transformer.reference` (the independent NumPy loop) iteration by iteration:

- point erase at iteration t adds `-e_a(t-1)(i)` to the code slice of point i (nothing at t = 1) and nothing else;
- assign adds exactly the one-hot code `e_a(t)(i)` of Lloyd's label of point i, and nothing else; its weights are
  that one-hot row;
- centroid erase adds `-c_j` to the position slice and `c_j - c'_j` to the previous slice (moving the centroid
  entering the iteration into `previous`, which held the one before it, 0 at t = 1);
- update adds the new centroid (the mean of the cluster's members) to the position slice, which the erase left 0;
  its weights are `1/|S_j|` on the members of cluster j (1 on its own token for an empty cluster).

A hook that returns a value replaces the block's output. `force_assignment` edits the assign block's output at one
iteration so that one point's code is `e_j` instead of its nearest centroid's: the update then averages cluster j
with that point and the other cluster without it. Predicted by a NumPy loop that makes the same change to the labels
(`predicted_forced_trajectory`): the model's centroids after every iteration and its final labels equal it.

The dense path. Under `torch.no_grad()`, with the analytic weights and no attentions or hidden states requested,
`"lloyd"` runs a compact fast path that never calls the blocks (`model.engine() == "compact"`), unless something
watches them: a hook on a block makes the model run the blocks, so the hooks see every iteration
(`count_block_calls`).
"""

from collections import defaultdict

import numpy as np
import torch

from kmeans_transformer import reference
from kmeans_transformer.convert import build_model
from kmeans_transformer.validation import gaussian_mixture
from kmeans_transformer.modeling_kmeans_transformer import BLOCK_NAMES


def make_problem(seed: int = 1, num_points: int = 50, point_dim: int = 2, num_clusters: int = 3):
    """A Gaussian mixture `(n, d)` float64 and its first `k` points as the initial centroids `(k, d)`."""
    points = gaussian_mixture(np.random.default_rng(seed), num_points, point_dim, num_clusters)
    return points, points[:num_clusters].copy()


def build_lloyd(num_clusters: int, point_dim: int, num_iterations: int, share_layers: bool = True, fast_hardmax=False):
    """float64 hardmax Lloyd; `fast_hardmax=False` always runs the blocks."""
    return build_model(
        num_clusters, point_dim, num_iterations, dtype="float64", share_layers=share_layers, fast_hardmax=fast_hardmax
    )


def record_blocks(model, points, centroids, **forward_kwargs):
    """
    Run the model with a forward hook on every block of every layer. Returns the model output and `records[name]`,
    the list of `(output, weights)` of block `name` at iterations 1..T (problem 0, detached copies). A shared layer
    is one module called T times and a separate layer is called once, so in both cases the calls come in iteration
    order.
    """
    records = defaultdict(list)

    def recorder(name):
        def hook(module, args, output):
            block_output, weights = output
            records[name].append((block_output[0].detach().clone(), None if weights is None else weights[0, 0].clone()))
        return hook

    handles = [
        getattr(layer, name).register_forward_hook(recorder(name)) for layer in model.layers for name in BLOCK_NAMES
    ]
    try:
        with torch.no_grad():
            output = model(torch.as_tensor(points), centroids=torch.as_tensor(centroids), **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return output, dict(records)


def count_block_calls(model, points, centroids, **forward_kwargs) -> int:
    """How many block calls the hooks saw (every block of every iteration: a hook makes the model run the blocks)."""
    _, records = record_blocks(model, points, centroids, **forward_kwargs)
    return sum(len(calls) for calls in records.values())


def expected_block_outputs(config, points, centroids, num_iterations):
    """What each block adds at each iteration, from the NumPy reference: `expected[name][t - 1]` `(tokens, width)`."""
    run = reference.lloyd(points, centroids, num_iterations)
    slices, k = config.token_slices, config.num_clusters
    n, width = len(points), config.hidden_size
    expected = defaultdict(list)
    for t in range(num_iterations):
        codes = np.eye(k)[run.label_history[t]]
        erase = np.zeros((n, width))
        if t > 0:
            erase[:, slices["code"]] = -np.eye(k)[run.label_history[t - 1]]
        assign = np.zeros((n, width))
        assign[:, slices["code"]] = codes
        current = run.centroid_history[t]
        before = run.centroid_history[t - 1] if t > 0 else np.zeros_like(current)
        move = np.zeros((k, width))
        move[:, slices["position"]] = -current
        move[:, slices["previous"]] = current - before
        update = np.zeros((k, width))
        update[:, slices["position"]] = run.centroid_history[t + 1]
        counts = codes.sum(axis=0)
        update_weights = np.concatenate([(codes / np.maximum(counts, 1)).T, np.diag(counts == 0).astype(float)], axis=1)
        expected["point_erase"].append((erase, np.ones((n, 1))))
        expected["assign"].append((assign, codes))
        expected["centroid_erase"].append((move, np.ones((k, 1))))
        expected["update"].append((update, update_weights))
    return dict(expected), run


def check_recorded_blocks(records, expected, atol=1e-12) -> float:
    """Compare recorded and expected block outputs and weights; assign outputs and weights must be exact."""
    worst = 0.0
    for name in BLOCK_NAMES:
        assert len(records[name]) == len(expected[name]), f"{name}: {len(records[name])} calls"
        for t, ((output, weights), (want, want_weights)) in enumerate(zip(records[name], expected[name]), start=1):
            output = output.numpy()
            if name == "assign":
                assert np.array_equal(output, want), f"assign output at iteration {t} is not the reference one-hot"
                assert np.array_equal(weights.numpy(), want_weights), f"assign weights at iteration {t}"
            error = max(np.abs(output - want).max(), np.abs(weights.numpy() - want_weights).max())
            assert error <= atol, f"{name} at iteration {t} differs from the reference by {error}"
            worst = max(worst, error)
    return worst


def force_assignment(model, points, centroids, point: int, cluster: int, iteration: int = 1):
    """
    Run the model with the assign block's output at `iteration` (1-based) edited so that `point` gets the code of
    `cluster`. Returns the final labels `(n,)`, and the centroids after each iteration `(T, k, d)` read off the
    update block's output (its position slice is the new centroid, the erase having left 0).
    """
    slices, k = model.config.token_slices, model.config.num_clusters
    calls, new_centroids = [0], []

    def edit(module, args, output):
        calls[0] += 1
        if calls[0] != iteration:
            return None  # None: keep the block's own output
        block_output, weights = output
        block_output = block_output.clone()
        block_output[:, point, slices["code"]] = torch.nn.functional.one_hot(torch.tensor(cluster), k).to(block_output)
        if weights is not None:
            weights = weights.clone()
            weights[:, :, point] = block_output[:, None, point, slices["code"]]
        return block_output, weights

    def read_update(module, args, output):
        new_centroids.append(output[0][0, :, slices["position"]].clone())

    if model.config.share_layers:
        handles = [model.layers[0].assign.register_forward_hook(edit)]
    else:  # the layer of that iteration is its own module, called once
        calls[0] = iteration - 1
        handles = [model.layers[iteration - 1].assign.register_forward_hook(edit)]
    handles += [layer.update.register_forward_hook(read_update) for layer in model.layers]
    try:
        with torch.no_grad():
            output = model(torch.as_tensor(points), centroids=torch.as_tensor(centroids))
    finally:
        for handle in handles:
            handle.remove()
    return output.labels[0].numpy(), torch.stack(new_centroids).numpy()


def predicted_forced_trajectory(points, centroids, num_iterations, point, cluster, iteration=1):
    """
    The NumPy loop with the same change: Lloyd's iterations (`reference.assign_labels`, `reference.update_centroids`),
    where at `iteration` the label of `point` is set to `cluster` before the update. Returns the final labels and the
    centroids after each iteration `(T, k, d)`.
    """
    history = []
    for t in range(1, num_iterations + 1):
        labels = reference.assign_labels(points, centroids)
        if t == iteration:
            labels[point] = cluster
        centroids = reference.update_centroids(points, labels, centroids)
        history.append(centroids)
    return reference.assign_labels(points, centroids), np.array(history)


def main(num_iterations: int = 3, point: int = 3, cluster: int = 1, iteration: int = 1):
    points, centroids = make_problem()
    k, d = centroids.shape

    fast = build_lloyd(k, d, num_iterations, fast_hardmax=True)
    print(f"blocks called on the fast path: {count_block_calls(fast, points, centroids)}; "
          f"with output_hidden_states=True: {count_block_calls(fast, points, centroids, output_hidden_states=True)}")

    for share_layers in (True, False):
        model = build_lloyd(k, d, num_iterations, share_layers=share_layers)
        output, records = record_blocks(model, points, centroids)
        expected, run = expected_block_outputs(model.config, points, centroids, num_iterations)
        worst = check_recorded_blocks(records, expected)
        print(f"share_layers={share_layers}: {sum(map(len, records.values()))} block calls recorded; every block adds "
              f"what the NumPy reference predicts (assign exactly the one-hot labels), max error {worst:.1e}")

        labels, trajectory = force_assignment(model, points, centroids, point, cluster, iteration)
        want_labels, want_trajectory = predicted_forced_trajectory(points, centroids, num_iterations, point, cluster,
                                                                   iteration)
        assert np.array_equal(labels, want_labels), "labels differ from the predicted forced trajectory"
        error = np.abs(trajectory - want_trajectory).max()
        assert error <= 1e-12, f"centroids differ from the predicted forced trajectory by {error}"
        moved = np.abs(trajectory[iteration - 1] - run.centroid_history[iteration]).max()
        assert moved > 0, "the edit changed nothing"
        label = run.label_history[iteration - 1][point]
        print(f"  forcing point {point} (Lloyd's label {label}) into cluster {cluster} "
              f"at iteration {iteration}: centroids move by up to {moved:.3f}; = the NumPy loop with the same change, "
              f"max error {error:.1e}; {int((labels != run.labels).sum())} of {len(labels)} final labels change")


if __name__ == "__main__":
    main()
