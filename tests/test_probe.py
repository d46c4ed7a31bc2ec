"""The probe: traces read off the tokens and attention weights, checked against the NumPy reference; its pictures."""

import json
import struct
import sys

import numpy as np
import pytest
import torch

from kmeans_transformer import probe, reference
from kmeans_transformer.convert import build_model
from kmeans_transformer.validation import gaussian_mixture


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def one_hot(labels, k):
    """`(n, k)` rows e_label (zero rows for label -1), written out plainly."""
    rows = np.zeros((len(labels), k))
    for i, label in enumerate(labels):
        if label >= 0:
            rows[i, label] = 1.0
    return rows


def expected_update(labels, k):
    """
    `(k, n + k)` the update weights Lloyd's step means: 1/|S_j| on the members of cluster j, 0 on the other points;
    on the centroid tokens, 1 on its own token when S_j is empty, else 0.
    """
    n = len(labels)
    rows = np.zeros((k, n + k))
    for j in range(k):
        members = [i for i in range(n) if labels[i] == j]
        if members:
            for i in members:
                rows[j, i] = 1.0 / len(members)
        else:
            rows[j, n + j] = 1.0
    return rows


def check_against_lloyd(output, points, initial, num_points, problem=0, real=None):
    """Every layer of `output` (problem `problem`, real points `real`) against `reference.lloyd` on the real points."""
    k = initial.shape[0]
    real = np.arange(num_points) if real is None else real
    expected = reference.lloyd(points[real], initial, len(output.hidden_states) - 1)
    keys = np.concatenate([real, num_points + np.arange(k)])
    padding = np.setdiff1d(np.arange(num_points), real)
    scale = max(1.0, np.abs(points).max())
    for t, (point_erase, assign, centroid_erase, update) in enumerate(output.attentions):
        assign = assign[problem, 0].numpy()
        update = update[problem, 0].numpy()
        np.testing.assert_array_equal(assign[real], one_hot(expected.label_history[t], k))
        np.testing.assert_array_equal(assign[padding], 0.0)  # padding attends to nothing
        np.testing.assert_array_equal(update[:, keys], expected_update(expected.label_history[t], k))
        np.testing.assert_array_equal(update[:, padding], 0.0)
        np.testing.assert_allclose(update.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(point_erase[problem, 0, real].numpy(), 1.0)
        np.testing.assert_array_equal(centroid_erase[problem, 0].numpy(), 1.0)
    for t, state in enumerate(output.hidden_states):
        centroids = state[problem, num_points:, :points.shape[1]].numpy()  # the position slice comes first
        np.testing.assert_allclose(centroids, expected.centroid_history[t], rtol=0, atol=1e-12 * scale)
    return expected


def assignment_changes(label_history):
    """Per layer, how many labels differ from the previous layer's; before the first layer no point has a label."""
    changes, previous = [], [-1] * label_history.shape[1]
    for labels in label_history:
        changes.append(sum(1 for a, b in zip(labels, previous) if a != b))
        previous = list(labels)
    return np.array(changes)


def check_trace(found, points, expected):
    np.testing.assert_array_equal(found.labels, expected.label_history)
    np.testing.assert_allclose(found.centroids, expected.centroid_history, rtol=0, atol=1e-12 * max(1.0, np.abs(points).max()))
    np.testing.assert_array_equal(found.points, points)
    np.testing.assert_array_equal(found.assignment_changes, assignment_changes(expected.label_history))
    k = expected.centroids.shape[0]
    for t, labels in enumerate(expected.label_history):
        np.testing.assert_array_equal(found.attentions["assign"][t], one_hot(labels, k))
        np.testing.assert_array_equal(found.attentions["update"][t], expected_update(labels, k))
    np.testing.assert_array_equal(found.final_labels, expected.labels)


@pytest.fixture(scope="module")
def mixture_trace():
    """A Gaussian mixture in 3-D, k = 4, one initial centroid far from every point (an empty cluster throughout)."""
    generator = np.random.default_rng(3)
    points = gaussian_mixture(generator, 60, 3, 3)
    initial = points[generator.choice(60, size=4, replace=False)].copy()
    initial[3] = [100.0, 100.0, 100.0]
    model = build_model(4, 3, 6, dtype="float64")
    assert model.config.token_slices["position"] == slice(0, 3)  # what `check_against_lloyd` reads
    found = probe.trace(model, points, centroids=initial)
    return points, initial, found


def test_mixture_every_layer_matches_lloyd(mixture_trace):
    points, initial, found = mixture_trace
    expected = check_against_lloyd(found.output, points, initial, len(points))
    assert (expected.label_history == 3).sum() == 0  # the far centroid's cluster is empty in every layer
    assert np.array_equal(found.attentions["update"][:, 3, len(points) + 3], np.ones(6))
    np.testing.assert_array_equal(expected.centroid_history[:, 3], np.tile(initial[3], (7, 1)))
    check_trace(found, points, expected)
    assert found.attentions["point_erase"].shape == (6, 60, 1)
    assert found.attentions["centroid_erase"].shape == (6, 4, 1)


def test_integer_data_with_exact_ties_matches_lloyd():
    points = np.array([[x, y] for x in range(5) for y in range(5)] + [[1, 0], [2, 2]], dtype=np.float64)
    initial = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    # exact integer distances: some points are equally near two centroids
    distances = [[int(((p - c) ** 2).sum()) for c in initial.astype(int)] for p in points.astype(int)]
    assert sum(1 for row in distances if row.count(min(row)) > 1) >= 5
    model = build_model(4, 2, 5, dtype="float64")
    found = probe.trace(model, torch.tensor(points)[None], centroids=torch.tensor(initial))
    expected = check_against_lloyd(found.output, points, initial, len(points))
    check_trace(found, points, expected)


def test_padded_batch_matches_lloyd_per_problem():
    generator = np.random.default_rng(5)
    sizes, n, k = (30, 22), 30, 3
    points = np.zeros((2, n, 2))
    mask = np.zeros((2, n), dtype=bool)
    initial = np.zeros((2, k, 2))
    for b, size in enumerate(sizes):
        real = np.sort(generator.choice(n, size=size, replace=False))
        points[b, real] = gaussian_mixture(generator, size, 2, k)
        points[b, np.setdiff1d(np.arange(n), real)] = 1e3  # padding values must not count
        mask[b, real] = True
        initial[b] = points[b, real[:k]]
    model = build_model(k, 2, 4, dtype="float64")
    with torch.no_grad():
        output = model(torch.tensor(points), centroids=torch.tensor(initial), attention_mask=torch.tensor(mask),
                       output_attentions=True, output_hidden_states=True)
    for b in range(2):
        check_against_lloyd(output, points[b], initial[b], n, problem=b, real=np.flatnonzero(mask[b]))

    # the same second problem traced alone: padding is dropped from the trace
    real = np.flatnonzero(mask[1])
    found = probe.trace(model, points[1], centroids=initial[1], attention_mask=mask[1])
    np.testing.assert_array_equal(found.point_index, real)
    assert found.attentions["assign"].shape == (4, len(real), k)
    assert found.attentions["update"].shape == (4, k, len(real) + k)
    check_trace(found, points[1, real], reference.lloyd(points[1, real], initial[1], 4))


def test_trace_without_layers():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    found = probe.trace(build_model(2, 2, 0, dtype="float64"), points)
    assert found.labels.shape == (0, 3) and found.centroids.shape == (1, 2, 2)
    assert found.attentions["update"].shape == (0, 2, 5)
    assert found.assignment_changes.shape == (0,)
    np.testing.assert_array_equal(found.centroids[0], points[:2])


def test_trace_under_sdpa_reads_the_eager_weights_and_refuses_batches():
    points = gaussian_mixture(np.random.default_rng(0), 20, 2, 2)
    model = build_model(2, 2, 2, variant="soft", dtype="float64")
    eager = probe.trace(model, points)
    model.config._attn_implementation = "sdpa"  # returns no weights: the blocks run "eager" when they are asked for
    fused = probe.trace(model, points)
    np.testing.assert_array_equal(fused.attentions["update"], eager.attentions["update"])
    np.testing.assert_array_equal(fused.labels, eager.labels)
    lloyd = build_model(2, 2, 2, dtype="float64")
    with pytest.raises(ValueError, match="batch of 2"):
        probe.trace(lloyd, np.stack([points, points]))
    with pytest.raises(ValueError, match="batch of 2"):
        probe.trace(lloyd, points, centroids=np.stack([points[:2], points[:2]]))


def test_layer_trajectory_lives_in_validation_only():
    from kmeans_transformer import convert, validation

    assert probe.layer_trajectory is validation.layer_trajectory  # the probe reads the tokens as validation does
    assert not hasattr(convert, "layer_trajectory")  # no second home for a moved name


def png_size(path):
    """(width, height) from the IHDR chunk, which follows the 8-byte signature and the chunk's length and type."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "plot, size",
    [
        (lambda found, path, **kw: probe.plot_centroid_trajectories(found, path, **kw), (800, 600)),
        (lambda found, path, **kw: probe.plot_assignment_changes(found, path, **kw), (1000, 600)),
        (lambda found, path, **kw: probe.plot_attention_maps(found, 1, path, **kw), (1200, 800)),
    ],
    ids=["trajectories", "changes", "attention"],
)
def test_plots_write_pngs_of_the_documented_size(mixture_trace, tmp_path, plot, size):
    pytest.importorskip("matplotlib")
    _, _, found = mixture_trace
    path = tmp_path / "figure.png"
    plot(found, path)
    assert path.stat().st_size > 1000
    assert png_size(path) == size
    with pytest.raises(FileExistsError):
        plot(found, path)
    plot(found, path, overwrite=True)
    assert png_size(path) == size


def test_plot_attention_maps_checks_the_layer(mixture_trace):
    pytest.importorskip("matplotlib")
    _, _, found = mixture_trace
    with pytest.raises(ValueError, match="layer"):
        probe.plot_attention_maps(found, layer=6)
    assert probe.plot_attention_maps(found, layer=-1) is not None


def bertviz_params(html):
    """The parameters bertviz embeds in its script, as JSON."""
    start = html.index("const params = ") + len("const params = ")
    return json.JSONDecoder().raw_decode(html[start:])[0]


def test_export_bertviz(mixture_trace, tmp_path):
    pytest.importorskip("bertviz")
    points, initial, found = mixture_trace
    n, k = len(points), 4
    expected = reference.lloyd(points, initial, 6)
    path = probe.export_bertviz(found, tmp_path / "attention.html")
    html = path.read_text()
    assert len(html) > 1000
    assert all(f'"{name}"' in html for name in ("x0", f"x{n - 1}", "c0", f"c{k - 1}"))
    view = bertviz_params(html)["attention"][0]
    assert view["left_text"] == [f"x{i}" for i in range(n)] + [f"c{j}" for j in range(k)]
    attention = np.array(view["attn"])  # (layers, heads, n + k, n + k)
    assert attention.shape == (6, 2, n + k, n + k)
    for t in (0, 5):
        np.testing.assert_array_equal(attention[t, 0, :n, n:], one_hot(expected.label_history[t], k))
        np.testing.assert_array_equal(attention[t, 1, n:], expected_update(expected.label_history[t], k))
    with pytest.raises(FileExistsError):
        probe.export_bertviz(found, path)
    probe.export_bertviz(found, path, overwrite=True, layers=[2])
    assert np.array(bertviz_params(path.read_text())["attention"][0]["attn"]).shape == (1, 2, n + k, n + k)


def test_export_bertviz_without_bertviz(mixture_trace, tmp_path, monkeypatch):
    from kmeans_transformer.plotting import MissingDependencyError

    monkeypatch.setitem(sys.modules, "bertviz", None)  # makes `import bertviz` fail
    with pytest.raises(MissingDependencyError, match=r'pip install "kmeans-transformer\[probe\]"'):
        probe.export_bertviz(mixture_trace[2], tmp_path / "attention.html")
    assert not (tmp_path / "attention.html").exists()
