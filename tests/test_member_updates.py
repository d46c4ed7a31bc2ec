"""The compact engine of the member-based updates (sparse, deterministic k-medoids) against plain NumPy loops."""

import math
import shutil

import numpy as np
import pytest
import torch

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel, cpu_kernels


@pytest.fixture(params=[True, False], ids=["compiled", "pytorch"])
def compiled(request, monkeypatch):
    """Run a test with the compiled CPU loops and again with their PyTorch code."""
    if request.param:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip("no C++ compiler: the loops run their PyTorch code")
        assert cpu_kernels._load() is not None
    else:
        monkeypatch.setattr(cpu_kernels, "_module", None)
        monkeypatch.setattr(cpu_kernels, "_failed", True)
    return request.param


def nearest(x, c):
    """Lloyd's labels: the first nearest centroid."""
    return np.array([int(np.argmin([((xi - cj) ** 2).sum() for cj in c])) for xi in x])


def sparse_sums(x, labels, c, w, scaling):
    """
    One sparsemax update's `Σ p_i x_i` (float64, `(k, d)`) and each cluster's mass, number by number in the compact
    engine's order, rounded to the points' dtype where it rounds: the score `((Σ_e 2c_e x_e - |x|^2) - |c|^2) ·
    scaling`, the members sorted decreasingly (ties in point order), running sums (in float64, each rounded to the
    dtype), the support, the threshold, and `Σ p_i x_i` in float64 in point order.
    """
    t = x.dtype.type
    scaling = t(scaling)
    totals, masses_found = np.zeros(c.shape), np.zeros(len(c))
    for j in range(len(c)):
        members = [i for i in range(len(x)) if labels[i] == j and (w is None or w[i] > 0)]
        if not members:
            continue
        cc = t(0)
        for e in range(x.shape[1]):
            cc = cc + c[j, e] * c[j, e]
        z = {}
        for i in members:
            dot = xx = t(0)
            for e in range(x.shape[1]):
                dot = dot + (2 * c[j, e]) * x[i, e]
            for e in range(x.shape[1]):
                xx = xx + x[i, e] * x[i, e]
            z[i] = ((dot - xx) - cc) * scaling
        running = mass = 0.0
        cumulative, masses, support = [], [], 0
        for r, i in enumerate(sorted(members, key=lambda i: -z[i]), 1):
            running += float(z[i] if w is None else w[i] * z[i])
            mass += 1.0 if w is None else float(w[i])
            cumulative.append(t(running))
            masses.append(t(r) if w is None else t(mass))
            support += bool(1 + masses[-1] * z[i] > cumulative[-1])
        support = max(support, 1)
        threshold = (cumulative[support - 1] - 1) / masses[support - 1]
        for i in members:
            p = max(z[i] - threshold, t(0)) * (t(1) if w is None else w[i])
            totals[j] = totals[j] + float(p) * x[i].astype(np.float64)
        for i in members:  # the mass in point order
            masses_found[j] += 1.0 if w is None else float(w[i])
    return totals, masses_found


def sparse_loop(x, labels, c, w, scaling):
    """One sparsemax update (`sparse_sums`): each cluster with members moves to its `Σ p_i x_i`."""
    totals, masses = sparse_sums(x, labels, c, w, scaling)
    new = c.copy()
    new[masses > 0] = totals[masses > 0]
    return new


def medoid_loop(x, labels, c, w):
    """One medoid update: each cluster's first member of least `Σ w_i' |x_i - x_i'|`, the costs summed in point order."""
    new = c.copy()
    for j in range(len(c)):
        members = [i for i in range(len(x)) if labels[i] == j and (w is None or w[i] > 0)]
        best, best_cost = None, math.inf
        for i in members:
            cost = 0.0
            for m in members:
                cost += (1.0 if w is None else w[m]) * math.sqrt(float(((x[i] - x[m]) ** 2).sum()))
            if cost < best_cost:
                best, best_cost = i, cost
        if best is not None:
            new[j] = x[best]
    return new


def run_loop(variant, x, c, w, iterations, scaling):
    for _ in range(iterations):
        labels = nearest(x, c)
        c = sparse_loop(x, labels, c, w, scaling) if variant == "sparse" else medoid_loop(x, labels, c, w)
    return nearest(x, c), c


def integer_problems(seed, batch=2, n=120, d=3, k=5):
    """Integer points (ties, repeated points), the second problem padded, and a centroid far away (an empty cluster)."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randint(-4, 5, (batch, n, d), generator=generator).double()
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, 90:] = False
    centroids = points[:, :k].clone()
    centroids[:, -1] = 50.0
    weights = torch.randint(0, 4, (batch, n), generator=generator).double()
    return points, mask, centroids, weights


@pytest.mark.parametrize("variant,parameters", [("sparse", {"inverse_temperature": 0.3}), ("kmedoids", {})])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_compact_member_updates_equal_a_plain_loop_on_integer_points(variant, parameters, weighted, compiled):
    """
    Integer points, integer weights (zeros among them), padding and an empty cluster: labels and centroids equal the
    loop's bit for bit with the compiled loops (every number is rounded in the same order), and to 1e-12 with the
    PyTorch code (its sums run in another order).
    """
    points, mask, centroids, weights = integer_problems(3)
    iterations = 4
    model = KMeansTransformerModel(
        KMeansTransformerConfig(num_clusters=5, point_dim=3, num_iterations=iterations, variant=variant, **parameters)
    ).double()
    assert model.engine() == "compact"
    given = {"sample_weight": weights} if weighted else {}
    with torch.no_grad():
        output = model(points, centroids=centroids, attention_mask=mask, **given)
    scaling = parameters.get("inverse_temperature", 0.0) / math.sqrt(3)
    for problem in range(2):
        real = mask[problem].numpy()
        x = points[problem].numpy()[real]
        w = weights[problem].numpy()[real] if weighted else None
        labels, expected = run_loop(variant, x, centroids[problem].numpy(), w, iterations, scaling)
        np.testing.assert_array_equal(output.labels[problem].numpy()[real], labels)
        assert (output.labels[problem].numpy()[~real] == -1).all()
        got = output.centroids[problem].numpy()
        np.testing.assert_array_equal(got[-1], [50.0, 50.0, 50.0])  # the empty cluster keeps its centroid
        if compiled or variant == "kmedoids":
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert not np.allclose(got, centroids[problem].numpy())  # the iterations moved


@pytest.mark.parametrize("variant,parameters", [("sparse", {"inverse_temperature": 0.05}), ("kmedoids", {})])
def test_compact_member_updates_equal_a_plain_loop_on_real_points(variant, parameters, compiled):
    """Gaussian points and real weights in float64: the loop's labels, and its centroids within 1e-12."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(70, 4)) + shift for shift in (0.0, 4.0, 8.0)])
    w = rng.uniform(0.0, 2.0, size=len(x))
    c = x[[0, 80, 160, 5]]
    model = KMeansTransformerModel(
        KMeansTransformerConfig(num_clusters=4, point_dim=4, num_iterations=3, variant=variant, **parameters)
    ).double()
    for weights in (None, w):
        given = {} if weights is None else {"sample_weight": torch.from_numpy(weights)}
        with torch.no_grad():
            output = model(torch.from_numpy(x), centroids=torch.from_numpy(c), **given)
        labels, expected = run_loop(variant, x, c, weights, 3, parameters.get("inverse_temperature", 0.0) / 2.0)
        np.testing.assert_array_equal(output.labels[0].numpy(), labels)
        np.testing.assert_allclose(output.centroids[0].numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_compiled_sparsemax_sums_with_hundreds_of_tied_members(dtype, weighted):
    """
    Clusters of hundreds of members (those sorted by bytes, not pairwise), integer points (most scores tied), points
    without a cluster, real weights: the compiled sums and masses equal the loop's bit for bit, in float32 and
    float64.
    """
    if cpu_kernels._load() is None:
        pytest.skip("no compiled loops here")
    rng = np.random.default_rng(6)
    x = rng.integers(-4, 5, size=(1500, 4)).astype(dtype)
    c = x[:4].copy()
    labels = nearest(x, c)
    labels[::50] = -1
    # real weights, zeros among them
    w = (rng.uniform(0.0, 3.0, size=len(x)) * (rng.uniform(size=len(x)) > 0.1)).astype(dtype) if weighted else None
    assert np.bincount(labels[labels >= 0]).min() >= 256
    for scaling in (0.25, 0.3):
        sums, masses = cpu_kernels.sparsemax_update(
            torch.from_numpy(x)[None], torch.from_numpy(labels)[None], torch.from_numpy(c)[None],
            None if w is None else torch.from_numpy(w)[None], scaling,
        )
        expected, expected_masses = sparse_sums(x, labels, c, w, scaling)
        np.testing.assert_array_equal(sums[0].numpy(), expected)
        np.testing.assert_array_equal(masses[0].numpy(), expected_masses)
        assert (expected != 0).any()


def test_compiled_member_updates_equal_their_pytorch_code():
    """float32 points with strided rows: the compiled loops and the PyTorch code choose the same medoids, and the same
    sparsemax sums to float32 rounding."""
    if cpu_kernels._load() is None:
        pytest.skip("no compiled loops here")
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randn(3, 500, 6, generator=generator)
    points, labels = tokens[..., :5], torch.randint(-1, 7, (3, 500), generator=generator)
    weights = torch.rand(3, 500, generator=generator) * (torch.rand(3, 500, generator=generator) > 0.2)
    from kmeans_transformer.blocks import _medoids

    for given in (None, weights):
        chosen, masses = cpu_kernels.medoid_update(points, labels, 7, given)
        expected_chosen, expected_masses = _medoids(points, labels, 7, given)
        assert torch.equal(chosen, expected_chosen)
        torch.testing.assert_close(masses, expected_masses, rtol=1e-12, atol=0)
