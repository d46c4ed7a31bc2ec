"""The fast hardmax path: its kernels against the dense hardmax kernel, and the compact layers against the dense tokens."""

import shutil
import warnings

import datasets
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from kmeans_transformer import (
    KMeansTransformerConfig,
    KMeansTransformerModel,
    cpu_kernels,
    modeling_kmeans_transformer,
    reference,
)
from kmeans_transformer.estimator import KMeans
from kmeans_transformer.points import cluster_points
from kmeans_transformer.variants import VARIANTS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from kmeans_transformer.attention import (
    chunked_hardmax_attention_forward,
    hardmax_attention_forward,
    index_hardmax_attention_forward,
    squared_distances,
)


class Block(nn.Module):
    """What the kernels read from a module: its tie rule and the score budget."""

    def __init__(self, ties, score_chunk_size=2**22):
        super().__init__()
        self.hardmax_ties = ties
        self.config = KMeansTransformerConfig(score_chunk_size=score_chunk_size)


def require_compiled():
    """The compiled loops must build wherever a C++ compiler is found (as in CI); without one the tests skip."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the kernels run their PyTorch code")
    assert cpu_kernels._load() is not None, "the compiled CPU kernels must build on this machine"


@pytest.fixture(params=[True, False], ids=["compiled", "pytorch"])
def compiled(request, monkeypatch):
    """Run a test with the compiled CPU kernels and again with the kernels' PyTorch code."""
    if request.param:
        require_compiled()
    else:
        monkeypatch.setattr(cpu_kernels, "_module", None)
        monkeypatch.setattr(cpu_kernels, "_failed", True)
    return request.param


def integer_tensor(generator, *shape, dtype=torch.float64, low=-3, high=4):
    """Small integers: products and sums are exact in any order, and ties are frequent."""
    return torch.randint(low, high, shape, generator=generator).to(dtype)


@pytest.mark.parametrize("ties", ["first", "average"])
@pytest.mark.parametrize("mask_kind", [None, "rows", "keys"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_kernel_equals_the_dense_kernel(ties, mask_kind, dtype, compiled):
    generator = torch.Generator().manual_seed(0)
    batch, heads, q_len, kv_len, head_dim, value_dim = 3, 2, 157, 11, 5, 4
    query = integer_tensor(generator, batch, heads, q_len, head_dim, dtype=dtype)
    key = integer_tensor(generator, batch, heads, kv_len, head_dim, dtype=dtype)
    value = integer_tensor(generator, batch, heads, kv_len, value_dim, dtype=dtype)
    mask = None
    if mask_kind == "rows":
        mask = torch.rand(batch, 1, q_len, 1, generator=generator) > 0.2
    elif mask_kind == "keys":
        mask = torch.rand(batch, 1, q_len, kv_len, generator=generator) > 0.5
        mask[:, :, :3] = False  # rows that see no key
    module = Block(ties, score_chunk_size=kv_len * batch * heads * 16)  # blocks of 16 query rows
    dense, _ = hardmax_attention_forward(module, query, key, value, mask)
    chunked, weights = chunked_hardmax_attention_forward(module, query, key, value, mask)
    assert weights is None
    assert torch.equal(chunked, dense)


@pytest.mark.parametrize("with_mask", [False, True])
def test_index_kernel_equals_the_dense_kernel_on_one_hot_codes(with_mask, compiled):
    generator = torch.Generator().manual_seed(1)
    batch, heads, q_len, kv_len, num_codes, value_dim = 2, 1, 9, 300, 7, 3
    query = torch.randint(0, num_codes + 2, (batch, heads, q_len, 1), generator=generator)  # codes 7, 8: unmatched
    query[0, 0, :2] = torch.tensor([[3], [3]])  # a repeated query code
    key = torch.randint(-1, num_codes, (batch, heads, kv_len, 1), generator=generator)  # -1: the zero code
    value = integer_tensor(generator, batch, heads, kv_len, value_dim)
    mask = (torch.rand(batch, 1, 1, kv_len, generator=generator) > 0.3) if with_mask else None
    width = num_codes + 2

    def one_hot(codes):
        return nn.functional.one_hot(codes.clamp(min=0)[..., 0], width).to(torch.float64) * (codes >= 0)

    dense, _ = hardmax_attention_forward(Block("average"), one_hot(query), one_hot(key), value, mask)
    fast, weights = index_hardmax_attention_forward(Block("average"), query, key, value, mask)
    assert weights is None
    assert torch.equal(fast, dense)


def test_nearest_keys_and_values_against_a_plain_loop():
    generator = torch.Generator().manual_seed(2)
    require_compiled()
    for dtype in (torch.float32, torch.float64):
        for groups, n, k, e in ((1, 1, 1, 1), (2, 37, 13, 3), (3, 129, 8, 17), (1, 1000, 70, 33)):
            query = integer_tensor(generator, groups, n, e + 2, dtype=dtype)[..., :e]  # rows with a stride
            key = integer_tensor(generator, groups, k, e, dtype=dtype)
            labels = cpu_kernels.nearest_keys(query, key, block_rows=64)
            expected = np.empty((groups, n), dtype=np.int64)
            q, c = query.numpy(), key.numpy()
            for g in range(groups):
                for i in range(n):
                    scores = [float(np.dot(q[g, i], c[g, j])) for j in range(k)]
                    expected[g, i] = scores.index(max(scores))  # the first maximiser
            np.testing.assert_array_equal(labels.numpy(), expected)
            values = torch.randint(-9, 9, (groups, k, 3), generator=generator)  # any dtype: here int64
            gathered = cpu_kernels.nearest_values(query, key, values, block_rows=64)
            np.testing.assert_array_equal(gathered.numpy(), np.take_along_axis(values.numpy(), expected[..., None], 1))


def first_strict_maximiser(scores):
    """Per row the first index of the largest score that is not NaN: a scan keeping `score > best` from -inf (index
    0 where no score is larger than -inf)."""
    best = np.full(scores.shape[0], -np.inf)
    label = np.zeros(scores.shape[0], dtype=np.int64)
    for j in range(scores.shape[1]):
        better = scores[:, j] > best
        best = np.where(better, scores[:, j], best)
        label = np.where(better, j, label)
    return label


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_keys_for_few_keys_against_a_plain_loop(dtype):
    """Up to four registers of keys (k <= 32 float32, 16 float64) are scored key-major, a few rows at a time: every k
    around those widths, row counts that are no multiple of the rows per step, many ties (small integers), and rows
    whose scores are infinite or NaN (the first strict maximiser of the scan; 0 where none beats -inf). Past them the
    transposed tiles' register blocks of keys and of vectors of rows, with every remainder of each."""
    generator = torch.Generator().manual_seed(23)
    require_compiled()
    n, e = 1031, 7
    for k in (1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 15, 16, 17, 23, 24, 25, 31, 32, 33, 34, 35, 36, 37, 38, 70):
        query = integer_tensor(generator, 2, n, e + 1, dtype=dtype, low=-1, high=2)[..., :e]  # rows with a stride
        key = integer_tensor(generator, 2, k, e, dtype=dtype, low=-1, high=2)
        query[0, 5, 2] = float("nan")
        query[0, 6, 3] = float("inf")
        query[1, 7, 1] = -float("inf")
        query[1, 8, :] = -float("inf")
        labels = cpu_kernels.nearest_keys(query, key, block_rows=64)
        q, c = query.numpy().astype(np.float64), key.numpy().astype(np.float64)
        with np.errstate(invalid="ignore"):
            for g in range(2):
                scores = (q[g, :, None, :] * c[g, None, :, :]).sum(axis=-1)
                np.testing.assert_array_equal(labels[g].numpy(), first_strict_maximiser(scores), err_msg=f"k={k}")


@pytest.mark.parametrize("width", [3, 6])  # a width the loop unrolls, and one it does not
@pytest.mark.parametrize("strided", [False, True])
def test_segment_sums_against_a_plain_loop(width, strided):
    generator = torch.Generator().manual_seed(3)
    require_compiled()
    groups, rows, num_codes = 2, 70_000, 5  # more rows than one summing block
    values = integer_tensor(generator, groups, rows + 4, width + 1)  # the point slice of tokens, read in place
    values = values[:, :rows, :width] if strided else values[:, :rows, :width].contiguous()
    codes = torch.randint(-1, num_codes + 1, (groups, rows), generator=generator)
    visible = torch.rand(groups, rows, generator=generator) > 0.1
    sums, counts = cpu_kernels.segment_sums(values, codes, visible, num_codes)
    expected_sums = np.zeros((groups, num_codes, width))
    expected_counts = np.zeros((groups, num_codes), dtype=np.int64)
    for g, i in zip(*np.nonzero(visible.numpy() & (codes.numpy() >= 0) & (codes.numpy() < num_codes)), strict=True):
        expected_sums[g, codes[g, i]] += values[g, i].numpy()
        expected_counts[g, codes[g, i]] += 1
    np.testing.assert_array_equal(sums.numpy(), expected_sums)
    np.testing.assert_array_equal(counts.numpy(), expected_counts)


def dense_and_fast(model, points, **kwargs):
    """The model's output on the dense tokens and on the fast path."""
    assert model.engine() == "compact"
    fast = model(points, **kwargs)
    model.config.fast_hardmax = False
    try:
        assert model.engine() == "tokens"
        dense = model(points, **kwargs)
    finally:
        model.config.fast_hardmax = True
    return dense, fast


@pytest.mark.parametrize("variant", ["lloyd", "spherical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_iterations,final_assignment", [(0, True), (1, False), (6, True)])
def test_fast_path_is_the_dense_path_on_integer_points(variant, dtype, num_iterations, final_assignment, compiled):
    """
    Integer points (many exact ties, an emptied cluster, padding). Lloyd: every number is exact, so all are
    identical. Spherical: the unit vectors are not integers, so the centroids' sums round in their own order.
    """
    generator = torch.Generator().manual_seed(4)
    batch, n, d, k = 3, 240, 3, 6
    points = integer_tensor(generator, batch, n, d, dtype=dtype, low=1, high=5)  # > 0: spherical needs no zero point
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, 200:] = False
    centroids = points[:, :k].clone()
    centroids[:, -1] = -50.0  # far from (and opposite to) every point: its cluster is empty
    model = KMeansTransformerModel(
        KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=num_iterations, variant=variant)
    ).to(dtype)
    dense, fast = dense_and_fast(
        model, points, centroids=centroids, attention_mask=mask, final_assignment=final_assignment
    )
    assert (dense.labels == k - 1).sum() == 0 or num_iterations == 0
    assert torch.equal(fast.labels, dense.labels) and torch.equal(fast.assignments, dense.assignments)
    if variant == "lloyd":
        assert torch.equal(fast.centroids, dense.centroids) and torch.equal(fast.inertia, dense.inertia)
    else:
        tolerance = 1e-6 if dtype == torch.float32 else 1e-14
        torch.testing.assert_close(fast.centroids, dense.centroids, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(fast.inertia, dense.inertia, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("variant", ["lloyd", "spherical"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fast_path_is_the_dense_path_on_real_points(variant, dtype, rtol, compiled):
    """Gaussian points: the same labels; centroids that differ only by the order of their sums."""
    generator = torch.Generator().manual_seed(5)
    points = (torch.randn(2, 3000, 8, generator=generator) * 3).to(dtype)
    model = KMeansTransformerModel(
        KMeansTransformerConfig(num_clusters=12, point_dim=8, num_iterations=5, variant=variant)
    ).to(dtype)
    dense, fast = dense_and_fast(model, points)
    assert torch.equal(fast.labels, dense.labels)
    torch.testing.assert_close(fast.centroids, dense.centroids, rtol=rtol, atol=rtol)
    torch.testing.assert_close(fast.inertia, dense.inertia, rtol=rtol, atol=0)


# Every variant the compact engine runs, at its defaults, and each other form of its parameters.
OTHER_FORMS = {"trimmed": [{"trim_quantile": None, "trim_fraction": 0.15}]}
COMPACT_CASES = [
    (name, parameters)
    for name, spec in VARIANTS.items() if spec.compact
    for parameters in [{}, *OTHER_FORMS.get(name, [])]
]


@pytest.mark.parametrize("variant,parameters", COMPACT_CASES, ids=[f"{n}-{'-'.join(p) or 'defaults'}" for n, p in COMPACT_CASES])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_every_compact_variant_is_its_tokens(variant, parameters, weighted):
    """
    Integer points, integer sample weights (zeros among them), padding and an emptied cluster, in float64. A hardmax
    variant: every output of the compact engine (labels, outliers, assignments, centroids, inertia) is that of the
    token engine, bit for bit. A weighted assignment (soft, gmm, fuzzy): its chunks' sums round in another order,
    so the numbers agree to 1e-12, and the labels wherever the two largest weights are not tied to that precision
    (integer points tie exactly, and then the last bit decides).
    """
    generator = torch.Generator().manual_seed(11)
    batch, n, d, k = 3, 300, 3, 6
    points = integer_tensor(generator, batch, n, d, dtype=torch.float64, low=1, high=7)  # > 0 for spherical
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, 220:] = False
    centroids = points[:, :k].clone()
    centroids[:, -1] = -50.0
    weights = {"sample_weight": torch.randint(0, 4, (batch, n), generator=generator).double()} if weighted else {}
    config = KMeansTransformerConfig(
        num_clusters=k, point_dim=d, num_iterations=4, variant=variant, score_chunk_size=batch * k * 64, **parameters
    )  # several chunks of points
    model = KMeansTransformerModel(config).double()
    spec = model.config.variant_spec
    dense, fast = dense_and_fast(model, points, centroids=centroids, attention_mask=mask, **weights)
    if spec.reports_outliers:
        assert torch.equal(fast.outliers, dense.outliers)
        assert 0 < int(fast.outliers.sum()) < int(mask.sum())  # the gate trims some points, not all
    if spec.soft_assignment:
        top = dense.assignments.topk(2, dim=-1).values
        clear = (top[..., 0] - top[..., 1] > 1e-12) | ~mask
        assert torch.equal(fast.labels[clear], dense.labels[clear]) and clear.float().mean() > 0.5
        torch.testing.assert_close(fast.responsibilities, dense.responsibilities, rtol=0, atol=1e-12)
        tolerance = 1e-12
    else:
        assert torch.equal(fast.labels, dense.labels)
        tolerance = 0 if not spec.unit_norm else 1e-14  # unit vectors are not integers: sums round in their order
        if not spec.label_determined:  # sparsemax weights are not integers: the token engine's matrix products
            tolerance = 1e-12  # round its sums in another order
    torch.testing.assert_close(fast.assignments, dense.assignments, rtol=0, atol=tolerance)
    for name in ("centroids", *spec.state_names):
        torch.testing.assert_close(getattr(fast, name), getattr(dense, name), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(fast.inertia, dense.inertia, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("variant,parameters", COMPACT_CASES, ids=[f"{n}-{'-'.join(p) or 'defaults'}" for n, p in COMPACT_CASES])
def test_every_compact_variant_is_its_tokens_on_real_points(variant, parameters):
    """Gaussian points and real sample weights: the same labels, centroids within the order of their sums."""
    generator = torch.Generator().manual_seed(12)
    points = torch.randn(2, 2000, 5, generator=generator, dtype=torch.float64) * 3
    weights = torch.rand(2, 2000, generator=generator, dtype=torch.float64) * 2
    config = KMeansTransformerConfig(num_clusters=7, point_dim=5, num_iterations=4, variant=variant, **parameters)
    model = KMeansTransformerModel(config).double()
    for weighted in ({}, {"sample_weight": weights}):
        dense, fast = dense_and_fast(model, points, **weighted)
        assert torch.equal(fast.labels, dense.labels)
        if model.config.variant_spec.reports_outliers:
            assert torch.equal(fast.outliers, dense.outliers) and bool(fast.outliers.any())
        torch.testing.assert_close(fast.assignments, dense.assignments, rtol=0, atol=1e-12)
        for name in ("centroids", *model.config.variant_spec.state_names):
            torch.testing.assert_close(getattr(fast, name), getattr(dense, name), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.inertia, dense.inertia, rtol=1e-12, atol=0)


def test_fast_path_runs_only_where_it_is_exact(monkeypatch):
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=2))
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(6))
    assign_calls = []
    assign_class = type(model.layers[0].assign)
    assign_forward = assign_class.forward  # counted in the class: a hook on the block would make the blocks run
    monkeypatch.setattr(assign_class, "forward", lambda *args, **kwargs: assign_calls.append(1) or assign_forward(*args, **kwargs))

    def runs_dense(**kwargs):
        assign_calls.clear()
        model(points, **kwargs)
        return len(assign_calls) > 0

    assert model.engine() == "compact" and not runs_dense()
    assert runs_dense(output_attentions=True) and runs_dense(output_hidden_states=True)
    hook = model.layers[0].update.register_forward_pre_hook(lambda *args: None)  # anything watching a block
    assert model.engine() == "tokens" and runs_dense()
    hook.remove()
    assert model.engine() == "compact" and not runs_dense()
    with torch.enable_grad():  # the dense path records the gradient of the weights
        assert model.engine() == "tokens" and runs_dense()
        model.requires_grad_(False)
        assert model.engine() == "compact" and not runs_dense()
        model.requires_grad_(True)
    update = model.layers[0].update.v_proj.weight
    with torch.no_grad():
        update[0, 0] += 1e-3  # no longer the construction
    assert not model.has_analytic_weights() and runs_dense()
    with torch.no_grad():
        update[0, 0] -= 1e-3
    assert model.has_analytic_weights() and not runs_dense()
    for variant in (name for name, spec in VARIANTS.items() if not spec.compact):
        assert not KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, variant=variant)).engine() == "compact"
    eager = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, attn_implementation="eager", inverse_temperature=1.0))
    assert eager.config._attn_implementation == "eager" and not eager.engine() == "compact"


@pytest.mark.parametrize("variant,parameters", COMPACT_CASES, ids=[f"{n}-{'-'.join(p) or 'defaults'}" for n, p in COMPACT_CASES])
def test_fast_path_never_holds_the_assignment_matrix(variant, parameters):
    """
    With `output_assignments=False`, the largest tensor is the compact tokens or one chunk of scores, however large
    k is: never `n × k`.
    """
    n, d, k, chunk = 20_000, 4, 512, 2**18
    points = torch.randn(n, d, generator=torch.Generator().manual_seed(7))
    config = KMeansTransformerConfig(
        num_clusters=k, point_dim=d, num_iterations=1, score_chunk_size=chunk, variant=variant, **parameters
    )
    model = KMeansTransformerModel(config)
    largest = []

    class TensorSizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            largest.extend(t.numel() for t in (result if isinstance(result, (tuple, list)) else [result]) if isinstance(t, torch.Tensor))
            return result

    assert model.engine() == "compact"  # checks the weights once (tensors of hidden_size ** 2), outside the count
    with TensorSizes():
        output = model(points, output_assignments=False)
    assert output.assignments is None and output.labels.shape == (1, n)
    assert max(largest) <= max((n + k) * (d + 1), chunk)  # never n * k = 10,240,000


def test_softmax_blocks_run_sdpa_unless_weights_are_asked_for():
    generator = torch.Generator().manual_seed(8)
    points = torch.randn(2, 60, 3, generator=generator, dtype=torch.float64)
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[0, 50:] = False
    for variant in ("soft", "gmm"):
        model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=4, point_dim=3, num_iterations=3, variant=variant)).double()
        assign = model.layers[0].assign
        assert assign.attention_interface(need_weights=False) is ALL_ATTENTION_FUNCTIONS["sdpa"]
        assert assign.attention_interface(need_weights=True) is not ALL_ATTENTION_FUNCTIONS["sdpa"]
        fused = model(points, attention_mask=mask)
        eager = model(points, attention_mask=mask, output_attentions=True)
        assert eager.attentions is not None
        torch.testing.assert_close(fused.centroids, eager.centroids, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fused.assignments, eager.assignments, rtol=1e-10, atol=1e-12)
        assert torch.equal(fused.assignments[0, 50:], torch.zeros_like(fused.assignments[0, 50:]))


def test_an_edit_through_data_is_seen_and_both_engines_agree_with_it():
    """An edit that bypasses autograd's version counters (`.data`, in place or replaced) switches to the tokens."""
    points = torch.randn(200, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=4, point_dim=3, num_iterations=3)).double()
    assert model.engine() == "compact"
    assign = model.layers[0].assign
    assign.q_proj.weight.data[0] *= 3.0  # feature-weighted assignment, by an in-place edit of .data
    assert not model.has_analytic_weights() and model.engine() == "tokens"
    edited = model(points)
    dense = model(points, output_hidden_states=True)
    torch.testing.assert_close(edited.centroids, dense.centroids, rtol=0, atol=0)
    assign.q_proj.weight.data = assign.q_proj.weight.data.clone()
    assign.q_proj.weight.data[0] /= 3.0  # back to the construction through a replaced .data tensor
    assert model.has_analytic_weights() and model.engine() == "compact"


@pytest.mark.parametrize("variant", [name for name, spec in VARIANTS.items() if spec.compact and not spec.unit_norm])
def test_a_model_with_no_layer_assigns_on_the_compact_engine(variant):
    """`num_iterations=0` with separate layers builds no layer: the assignment head alone labels the points (the
    nearest centroid, equal variances and weights for gmm; a trimmed point is -1)."""
    rng = np.random.default_rng(5)
    points, centroids = rng.normal(size=(1, 40, 3)), rng.normal(size=(1, 4, 3))
    config = KMeansTransformerConfig(variant=variant, point_dim=3, num_clusters=4, num_iterations=0, share_layers=False)
    model = KMeansTransformerModel(config).double().eval()
    assert len(model.layers) == 0
    with torch.no_grad():
        assert model.engine() == "compact"
        labels = model(torch.from_numpy(points), centroids=torch.from_numpy(centroids)).labels[0].numpy()
    nearest = ((points[0][:, None] - centroids[0][None]) ** 2).sum(-1).argmin(1)
    kept = labels >= 0
    assert kept.sum() >= 30
    np.testing.assert_array_equal(labels[kept], nearest[kept])


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["near-origin", "far-from-origin"])
def test_squared_distances_of_one_gemm_are_the_differences(offset):
    """
    The weighted compact engine's distances (`squared_distances`: one GEMM, the entries that cancel taken again from
    the differences) against a plain NumPy loop over the differences: every entry to a few ulps (far from the origin
    every entry cancels, and all come from the differences), and a point on a centroid exactly 0.
    """
    generator = torch.Generator().manual_seed(21)
    points = torch.randn(2, 300, 7, generator=generator, dtype=torch.float64) + offset
    centroids = torch.randn(2, 9, 7, generator=generator, dtype=torch.float64) + offset
    centroids[:, :4] = points[:, 10:14]  # points on centroids
    fast = squared_distances(points, centroids).numpy()
    x, c = points.numpy(), centroids.numpy()
    expected = np.empty((2, 300, 9))
    for b in range(2):
        for i in range(300):
            for j in range(9):
                expected[b, i, j] = sum((x[b, i, t] - c[b, j, t]) ** 2 for t in range(7))
    np.testing.assert_allclose(fast, expected, rtol=1e-13, atol=0)
    assert (fast[:, range(10, 14), range(4)] == 0).all() and (fast > 0).sum() == 2 * (300 * 9 - 4)


def test_compact_fuzzy_far_from_the_origin_is_the_reference():
    """Points far from the origin (every GEMM distance cancels): the compact engine's memberships are the NumPy ones."""
    from kmeans_transformer.reference import fuzzy_memberships

    generator = torch.Generator().manual_seed(22)
    points = torch.randn(400, 3, generator=generator, dtype=torch.float64) + 1e5
    centroids = points[:5].clone()
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=5, point_dim=3, variant="fuzzy", num_iterations=0)).double()
    assert model.engine() == "compact"
    output = model(points, centroids)
    np.testing.assert_allclose(output.assignments[0].numpy(), fuzzy_memberships(points.numpy(), centroids.numpy(), 2.0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lloyd_step_against_a_plain_loop(dtype):
    """The compiled batched Lloyd step on integer points (exact sums, ties, padding, an empty cluster, more rows than
    one summing block, few keys and many) against a NumPy loop: first nearest label, per-label sums and counts,
    means; the same numbers on one thread (the threads share the problems) and on five (they share the rows)."""
    generator = torch.Generator().manual_seed(6)
    require_compiled()
    for batch, n, d, k in ((3, 37, 2, 4), (2, 70_000, 3, 5), (4, 200, 33, 9), (2, 1031, 6, 17), (2, 300, 4, 40)):
        points = integer_tensor(generator, batch, n, d, dtype=dtype)
        centroids = integer_tensor(generator, batch, k, d, dtype=dtype)
        centroids[:, -1] = 100.0  # far from every point: its cluster is empty and keeps its centroid
        mask = torch.rand(batch, n, generator=generator) > 0.1
        tokens = torch.cat([torch.cat([points, centroids], dim=1), torch.ones(batch, n + k, 1, dtype=dtype)], dim=-1)
        key = torch.cat([2 * centroids, -(centroids * centroids).sum(dim=-1, keepdim=True)], dim=-1)
        found = []
        threads = torch.get_num_threads()
        try:
            for count in (1, 5):
                torch.set_num_threads(count)
                updated = tokens.clone()
                found.append((updated, *cpu_kernels.lloyd_step(updated, key, mask)))
        finally:
            torch.set_num_threads(threads)
        (tokens, labels, statistics), shared = found
        assert all(torch.equal(a, b) for a, b in zip(found[0], shared)), (batch, n, d, k)
        x, c, visible = points.numpy(), centroids.numpy().astype(np.float64), mask.numpy()
        for g in range(batch):
            distances = ((x[g, :, None, :].astype(np.float64) - c[g][None]) ** 2).sum(axis=-1)
            expected = np.where(visible[g], distances.argmin(axis=1), -1)  # first minimiser
            np.testing.assert_array_equal(labels[g].numpy(), expected)
            sums = np.zeros((k, d))
            counts = np.zeros(k)
            for i in np.nonzero(expected >= 0)[0]:
                sums[expected[i]] += x[g, i]
                counts[expected[i]] += 1
            np.testing.assert_array_equal(statistics[g].numpy(), np.concatenate([sums, counts[:, None]], axis=1))
            means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c[g]).astype(x.dtype)
            assert counts[-1] == 0
            np.testing.assert_array_equal(tokens[g, n:, :-1].numpy(), means)
            np.testing.assert_array_equal(tokens[g, :n].numpy(), np.concatenate([x[g], np.ones((n, 1))], axis=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_lloyd_runs_one_compiled_step_per_iteration_with_the_numbers_of_the_blocks(dtype, masked, monkeypatch):
    """On real points the compiled step is the engine's Lloyd iteration, and its every number is that of the compact
    blocks it fuses (the nearest keys, the segment sums, the update's finalize) run one after another."""
    require_compiled()
    from kmeans_transformer import modeling_kmeans_transformer

    generator = torch.Generator().manual_seed(7)
    batch, n, d, k = 40, 150, 2, 4
    points = (3 * torch.randn(batch, n, d, generator=generator)).to(dtype)
    mask = torch.rand(batch, n, generator=generator) > 0.2 if masked else None
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=5)).to(dtype)
    calls = []
    fused_step = modeling_kmeans_transformer.lloyd_step
    monkeypatch.setattr(modeling_kmeans_transformer, "lloyd_step", lambda *a: calls.append(1) or fused_step(*a))
    with torch.no_grad():
        fused = model(points, centroids=points[:, :k], attention_mask=mask)
        assert len(calls) == 5
        for layer in model.layers:
            layer.plain_lloyd = False
        blocks = model(points, centroids=points[:, :k], attention_mask=mask)
    assert len(calls) == 5
    for name in ("labels", "centroids", "inertia"):
        assert torch.equal(fused[name], blocks[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_problem_on_more_threads_runs_the_fused_step_with_the_numbers_of_the_separate_kernels(dtype, monkeypatch):
    """
    One problem of more rows than two blocks of the sums (2**15 each), on two and three threads: the compiled Lloyd
    step runs (its threads share the problem's rows, cutting blocks in two), and its labels, statistics and centroids
    are bit for bit those of the separate kernels (the nearest-centroid kernel, then `segment_sums`), on integer
    points (ties, exact sums: also a NumPy loop's) and on real points, with padding.
    """
    require_compiled()
    from kmeans_transformer import modeling_kmeans_transformer

    generator = torch.Generator().manual_seed(31)
    n, d, k = 70_001, 5, 7
    layer = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=d)).to(dtype).layers[0]
    assert layer.plain_lloyd
    fused_runs, fused_loop = [], [True]
    step = modeling_kmeans_transformer.lloyd_step

    def counted_step(*args):
        found = step(*args) if fused_loop[0] else None
        fused_runs.append(found is not None)
        return found

    monkeypatch.setattr(modeling_kmeans_transformer, "lloyd_step", counted_step)
    integer = integer_tensor(generator, 1, n + k, d, dtype=dtype)
    real = (3 * torch.randn(1, n + k, d, generator=generator, dtype=torch.float64)).to(dtype)  # float64: sums round
    mask = torch.rand(1, n, generator=generator) > 0.1
    threads = torch.get_num_threads()
    try:
        for values, is_integer in ((integer, True), (real, False)):
            tokens = torch.cat([values, torch.ones(1, n + k, 1, dtype=dtype)], dim=-1)
            for count in (2, 3):
                torch.set_num_threads(count)
                fused_runs.clear()
                fused_loop[0], fused_tokens = True, tokens.clone()
                labels, statistics = layer.compact_step(fused_tokens, mask)
                fused_loop[0], separate_tokens = False, tokens.clone()
                expected_labels, expected_statistics = layer.compact_step(separate_tokens, mask)
                assert fused_runs == [True, False]
                assert torch.equal(labels, expected_labels) and torch.equal(statistics, expected_statistics)
                assert torch.equal(fused_tokens, separate_tokens)
            if is_integer:
                x, c, visible = values[0, :n].numpy(), values[0, n:].numpy().astype(np.float64), mask[0].numpy()
                nearest = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(axis=-1).argmin(axis=1)
                np.testing.assert_array_equal(labels[0].numpy(), np.where(visible, nearest, -1))
                sums, counts = np.zeros((k, d)), np.zeros(k)
                np.add.at(sums, nearest[visible], x[visible])  # integer points: every sum exact in any order
                np.add.at(counts, nearest[visible], 1)
                np.testing.assert_array_equal(statistics[0].numpy(), np.concatenate([sums, counts[:, None]], axis=1))
                means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c).astype(x.dtype)
                np.testing.assert_array_equal(fused_tokens[0, n:, :-1].numpy(), means)
    finally:
        torch.set_num_threads(threads)


def numpy_memberships(x, centroids, rule, scaling, fuzzifier):
    """The soft (softmax of `-scaling |x - c|^2`) or fuzzy c-means weights of one problem, in float64 NumPy."""
    distances = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    if rule == "softmax":
        scores = -scaling * distances
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)
    nearest = distances.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(nearest == 0, (distances == 0).astype(float), (nearest / distances) ** (1 / (fuzzifier - 1)))
    return ratios / ratios.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule,fuzzifier", [("softmax", 2.0), ("fuzzy", 2.0), ("fuzzy", 2.5)])
def test_membership_sums_against_numpy(dtype, rule, fuzzifier):
    """
    The compiled weighted pass against NumPy in float64: the weights (softmax with many underflowing to 0, or fuzzy
    c-means with points on centroids), the first largest weight's label (-1 for padding), and the sums `Σ_i
    w_ij^power s_i [x_i (; |x_i|^2) ; 1]` over more rows than one block, for a k that is not a multiple of the key
    tile, in float32 lanes and with float64 products; the same numbers on one thread and on two.
    """
    require_compiled()
    generator = torch.Generator().manual_seed(25)
    groups, n, d, k = 2, 9000, 5, 7
    points = (torch.randn(groups, n, d, generator=generator, dtype=torch.float64) * 3).to(dtype)
    centroids = points[:, :k].clone()  # the first k points lie on centroids
    mask = torch.rand(groups, n, generator=generator) > 0.05
    sample_weight = torch.rand(groups, n, generator=generator, dtype=dtype) * 2
    scaling = 4.0 if rule == "softmax" else 1.0  # exp(-4 |x - c|^2) underflows for far centroids
    if rule == "softmax":
        query = torch.cat([points, torch.ones(groups, n, 1, dtype=dtype)], dim=-1)
        key = torch.cat([2 * centroids, -(centroids * centroids).sum(dim=-1, keepdim=True)], dim=-1)
        options = {"scaling": scaling}
    else:
        query, key, options = points, centroids, {"exponent": 1 / (fuzzifier - 1)}
    x, c, visible, s = (t.numpy().astype(np.float64) for t in (points, centroids, mask, sample_weight))
    precise = dtype == torch.float64
    forms = [(False, 1.0, False), (True, 1.0, False), (True, 1.0, True), (False, fuzzifier, False)]
    for square_norm, power, float64_products in forms:
        kept = torch.empty(groups, n, k, dtype=dtype)
        sums, labels = cpu_kernels.membership_sums(
            query, key, d, sample_weight, mask, rule, **options, power=power, square_norm=square_norm,
            float64_products=float64_products, labels=True, kept=kept,
        )
        for g in range(groups):
            weights = numpy_memberships(x[g], c[g], rule, scaling, fuzzifier) * visible[g][:, None]
            # float32: the scores round to about 2^-24 |x|^2 scaling, and the weights with them
            np.testing.assert_allclose(kept[g].numpy(), weights, rtol=0, atol=1e-13 if precise else 1e-4)
            first = weights.argmax(axis=1)
            top2 = np.sort(weights, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > (1e-12 if precise else 1e-3)
            expected_labels = np.where((visible[g] > 0) & (weights.max(axis=1) > 0), first, -1)
            np.testing.assert_array_equal(labels[g].numpy()[clear], expected_labels[clear])
            assert clear.mean() > 0.9
            rows = np.concatenate([x[g], (x[g] ** 2).sum(axis=1, keepdims=True), np.ones((n, 1))], axis=1)
            rows = rows if square_norm else rows[:, [*range(d), d + 1]]
            terms = np.maximum(weights, 0) ** power * s[g][:, None]
            expected = terms.T @ rows
            bound = np.abs(terms).T @ np.abs(rows)  # the sums' error is relative to the sums of |terms|
            assert (np.abs(sums[g].numpy() - expected) <= (1e-12 if precise else 1e-4) * bound + 1e-300).all()
            # the sums of the pass's own weights: float32 lanes within (16 + 3) 2^-24 of the sums of |terms| (16
            # roundings in a lane; s_i v_ic, |x_i|^2 and w^power rounded to float32 first), else float64 products
            own = np.maximum(kept[g].numpy().astype(np.float64), 0) ** power * s[g][:, None]
            lanes = (cpu_kernels.MEMBERSHIP_LANE_ROWS + 3) * 2.0**-24
            error = np.abs(sums[g].numpy() - own.T @ rows) / (np.abs(own).T @ np.abs(rows) + 1e-300)
            assert (error <= (1e-13 if precise or float64_products else lanes)).all()
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1 if threads > 1 else 2)
            again = cpu_kernels.membership_sums(
                query, key, d, sample_weight, mask, rule, **options, power=power, square_norm=square_norm,
                float64_products=float64_products, labels=True,
            )
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(again[0], sums) and torch.equal(again[1], labels)


@pytest.mark.parametrize("variant", ["soft", "gmm", "fuzzy"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_weighted_compact_engine_is_its_pytorch_code(variant, weighted, monkeypatch):
    """The compact engine of a weighted assignment with the compiled pass is its PyTorch code, padded batches included."""
    require_compiled()
    generator = torch.Generator().manual_seed(22)
    points = torch.randn(3, 400, 4, generator=generator, dtype=torch.float64) * 2
    mask = torch.ones(3, 400, dtype=torch.bool)
    mask[1, 290:] = False
    weights = {"sample_weight": torch.rand(3, 400, generator=generator, dtype=torch.float64) * 2} if weighted else {}
    config = KMeansTransformerConfig(num_clusters=5, point_dim=4, num_iterations=3, variant=variant, score_chunk_size=3 * 5 * 64)
    model = KMeansTransformerModel(config).double()
    assert model.engine() == "compact"
    fast = model(points, attention_mask=mask, output_assignments=True, **weights)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", True)
    plain = model(points, attention_mask=mask, output_assignments=True, **weights)
    assert torch.equal(fast.labels, plain.labels)
    for name in ("centroids", "assignments", "inertia", *model.config.variant_spec.state_names):
        torch.testing.assert_close(getattr(fast, name), getattr(plain, name), rtol=1e-12, atol=1e-12)


def test_order_statistics_are_those_of_each_clusters_sorted_members():
    """The chosen ranks of each cluster's values (clamped to its members; 0 for an empty cluster) against a sort."""
    require_compiled()
    generator = torch.Generator().manual_seed(23)
    for dtype in (torch.float32, torch.float64):
        values = torch.randint(0, 9, (3, 500), generator=generator).to(dtype) / 4  # many ties
        codes = torch.randint(-1, 6, (3, 500), generator=generator)
        codes[2] = codes[2].clamp(max=3)  # clusters 4 and 5 of the last group are empty
        ranks = torch.randint(-2, 120, (3, 6, 3), generator=generator)
        found = cpu_kernels.order_statistics(values, codes, 6, ranks)
        for g in range(3):
            for j in range(6):
                members = sorted(float(v) for v, c in zip(values[g], codes[g]) if c == j)
                for t in range(3):
                    expected = members[min(max(int(ranks[g, j, t]), 0), len(members) - 1)] if members else 0.0
                    assert float(found[g, j, t]) == expected, (dtype, g, j, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trimmed_compact_engine_is_its_pytorch_code(dtype, monkeypatch):
    """
    The per-cluster quantile by the compiled selection trims exactly what the gate's own sorted table trims: the same
    labels and centroids; the inertia is summed by the compiled loop in point order and by the PyTorch code in its
    reductions' order, so it agrees to rounding.
    """
    require_compiled()
    generator = torch.Generator().manual_seed(24)
    points = torch.randn(3, 700, 3, generator=generator, dtype=dtype) * 3
    points[0, :200] = points[0, :200].round()  # ties among the distances
    mask = torch.ones(3, 700, dtype=torch.bool)
    mask[2, 500:] = False
    config = KMeansTransformerConfig(num_clusters=6, point_dim=3, num_iterations=4, variant="trimmed", trim_quantile=0.8)
    model = KMeansTransformerModel(config).to(dtype)
    assert model.engine() == "compact"
    fast = model(points, attention_mask=mask)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", True)
    plain = model(points, attention_mask=mask)
    assert bool((plain.labels == -1).any())
    for name in ("labels", "centroids"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
    torch.testing.assert_close(fast.inertia, plain.inertia, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_labelled_inertia_against_a_plain_loop(dtype, weighted, monkeypatch):
    """
    `Σ_i w_i |x_i - c_a(i)|^2` of the compiled loop on strided rows (the compact tokens' point slice), unlabelled
    points (-1) among them and two blocks of 2**15 points: each squared distance in the dtype, its squares added in
    coordinate order, then widened and summed in point order within each block, the blocks added in order; the same
    numbers on one thread and on two, and those of `labelled_inertia`'s PyTorch code to rounding. Each point's own
    squared distance (`labelled_distances`, the trimmed gate's `δ_i`; to `c_0` where unlabelled) is the loop's too.
    """
    require_compiled()
    generator = torch.Generator().manual_seed(25)
    groups, n, d, k = 2, 2**15 + 300, 11, 5  # 8 coordinates a vector, then 3 one at a time
    tokens = torch.randn(groups, n + k, d + 1, generator=generator, dtype=dtype) * 3
    points, centroids = tokens[:, :n, :-1], tokens[:, n:, :-1].clone()
    labels = torch.randint(-1, k, (groups, n), generator=generator)
    sample_weight = torch.rand(groups, n, generator=generator, dtype=dtype) * 2 if weighted else None
    found = cpu_kernels.labelled_inertia(points, centroids, labels, sample_weight)
    distances = cpu_kernels.labelled_distances(points, centroids, labels)
    x, c, a = points.numpy(), centroids.numpy(), labels.numpy()
    for g in range(groups):
        squares = np.zeros(n, dtype=x.dtype)
        for e in range(d):  # numpy rounds each operation to the dtype
            difference = x[g, :, e] - c[g, a[g].clip(0), e]
            squares = squares + difference * difference
        np.testing.assert_array_equal(distances[g].numpy(), squares)
        total = 0.0
        for start in range(0, n, 2**15):
            block = 0.0
            for i in range(start, min(n, start + 2**15)):
                if a[g, i] >= 0:
                    block += float(squares[i]) * (1.0 if sample_weight is None else float(sample_weight[g, i]))
            total += block
        assert float(found[g]) == total, g
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(cpu_kernels.labelled_inertia(points, centroids, labels, sample_weight), found)
        assert torch.equal(cpu_kernels.labelled_distances(points, centroids, labels), distances)
    finally:
        torch.set_num_threads(threads)
    inertia = modeling_kmeans_transformer.labelled_inertia(points, centroids, labels, sample_weight)
    assert torch.equal(inertia, found.to(dtype))
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", True)
    plain = modeling_kmeans_transformer.labelled_inertia(points, centroids, labels, sample_weight)
    torch.testing.assert_close(plain, inertia, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compact_tokens_and_largest_magnitudes_in_one_pass(dtype):
    """
    The compact tokens `[x_i ; 1]`, `[c_j ; 1]` written by the compiled loop (large enough for memory advised for huge
    pages) are those of a concatenation, and behave as any tensor; the largest `|coordinate|` of each problem is that
    of `amax`/`amin`, NaN where a coordinate is NaN and inf where one is infinite.
    """
    require_compiled()
    generator = torch.Generator().manual_seed(26)
    groups, n, d, k = 3, 40000, 13, 4
    points = (torch.randn(groups, n, d + 2, generator=generator, dtype=dtype) * 5)[..., :d]  # strided rows
    centroids = torch.randn(groups, k, d, generator=generator, dtype=dtype)
    tokens = cpu_kernels.compact_tokens(points, centroids)
    expected = torch.cat([torch.cat([points, centroids], dim=1), torch.ones(groups, n + k, 1, dtype=dtype)], dim=-1)
    assert tokens.is_contiguous() and torch.equal(tokens, expected)
    kept = tokens[[2, 0]]
    tokens[:, n:, :-1].mul_(2.0)
    assert torch.equal(kept, expected[[2, 0]]) and torch.equal(tokens[:, n:, :-1], 2 * centroids)
    del tokens
    for values in (points, points.contiguous(), points[:, :5, :1]):
        expected = torch.maximum(values.amax(dim=(1, 2)), -values.amin(dim=(1, 2)))
        assert torch.equal(cpu_kernels.largest_magnitudes(values), expected)
    spoiled = points.clone()
    spoiled[0, n - 1, d - 1] = float("nan")
    spoiled[1, 7, 3] = -float("inf")
    spoiled[2, 0, 0] = float("nan")
    spoiled[2, 1, 0] = float("inf")
    found = cpu_kernels.largest_magnitudes(spoiled)
    assert bool(found[0].isnan()) and float(found[1]) == float("inf") and bool(found[2].isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("batch,threads", [(3, 1), (1, 2), (3, 4)])
def test_head_labels_and_inertia_in_one_pass_are_those_of_the_separate_steps(dtype, weighted, batch, threads):
    """
    The assignment head's compiled pass (`nearest_inertia`) gives the labels of the assign block and the inertia of
    `labelled_inertia`, bit for bit, with padding and across a block of 2**15 points, whether the threads share the
    problems or (fewer problems than threads) their rows; the model's outputs are those of the separate steps.
    """
    require_compiled()
    generator = torch.Generator().manual_seed(27)
    n, d, k = 2**15 + 500, 9, 7
    points = (torch.randn(batch, n, d, generator=generator) * 4).to(dtype)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[-1, n - 700:] = False
    sample_weight = None
    if weighted:
        sample_weight = (torch.rand(batch, n, generator=generator).to(dtype) * 2).masked_fill(~mask, 0)
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=d, num_iterations=2)).to(dtype)
    head = model.assignment_head
    assert head.plain_assign
    default_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            inputs = model.prepare_inputs(points, points[:, :k], mask, sample_weight=sample_weight)
            tokens, point_mask, _ = model._compact_tokens(inputs)  # data around the origin: no frame
            labels, inertia = head.compact_labels_and_inertia(tokens, point_mask, sample_weight)
            centroids = tokens[:, n:, :-1]
            expected = head.compact_labels(tokens[:, :n], centroids, point_mask)
            assert torch.equal(labels, expected) and bool((labels[-1, n - 700:] == -1).all())
            reference = cpu_kernels.labelled_inertia(tokens[:, :n, :-1], centroids, expected, sample_weight)
            assert torch.equal(inertia, reference)
            fused = model(points, attention_mask=mask, sample_weight=sample_weight)
            head.plain_assign = False
            separate = model(points, attention_mask=mask, sample_weight=sample_weight)
    finally:
        torch.set_num_threads(default_threads)
    for name in ("labels", "centroids", "inertia", "assignments"):
        assert torch.equal(fused[name], separate[name]), name


def far_from_the_origin(layout, offset, weighted):
    """
    Float32 points `(1, n, 4)` of three clusters of unit spread, their float64 values (the float32 ones widened),
    three starting centroids (points of each cluster), and integer sample weights (or None). `"shifted"`: the clusters
    within a few units of each other, all `offset` from the origin; `"apart"`: one cluster near the origin, the two
    others a few units apart, `offset` from it (no origin near all three, and the two overlap).
    """
    generator = torch.Generator().manual_seed(31)
    steps = torch.tensor([0.0, 1.0, 1.0]) if layout == "apart" else torch.ones(3)
    centres = torch.randn(3, 4, generator=generator, dtype=torch.float64) * 3 + steps[:, None] * offset
    members = torch.arange(300) % 3
    points = (centres[members] + torch.randn(300, 4, generator=generator, dtype=torch.float64)).to(torch.float32)
    weights = torch.randint(1, 4, (300,), generator=generator).to(torch.float32) if weighted else None
    return points[None], points.double().numpy(), points[None, [0, 1, 2]], weights


@pytest.mark.parametrize("variant", ["soft", "gmm", "fuzzy"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("layout,offset", [("shifted", 1e3), ("shifted", 1e4), ("apart", 1e4)])
def test_float32_weighted_passes_far_from_the_origin(variant, weighted, layout, offset, compiled):
    """
    A float32 soft, gmm and fuzzy model on points of unit spread far from the origin (and on clusters far apart)
    against the float64 plain loops of `reference` on the same float32 points, integer sample weights as repeated
    points: forward's compact engine, and the iteration as sufficient statistics (`statistics` and `finalize`, as
    points mode runs it, the parameters held in float64). The float32 centroids round to half an ulp of `offset` at
    each iteration (EM contracts near its fixed point, so these roundings do not add up), and the weights to about
    2^-24 relative to the spread: 2 ulps of `offset` plus 1e-4, for the centroids in units of the spread and for
    gmm's relative variances and its weights (which move with the centroids). Expanded in float32 at the points' own
    coordinates, the scores `|x|^2 - 2 x.c + |c|^2` would round by up to `2^-24 a (2 offset)^2` (12 at 1e4 for gmm's `a` =
    1/2), against unit spread; `"apart"` needs the float64 products (`EXPANDED_SCORE_TOLERANCE`).
    """
    points, reference_points, start, sample_weight = far_from_the_origin(layout, offset, weighted)
    repeats = np.ones(300, dtype=int) if sample_weight is None else sample_weight.numpy().astype(int)
    repeated = np.repeat(reference_points, repeats, axis=0)
    initial = start[0].double().numpy()
    iterations = 6
    options = {"soft": {"inverse_temperature": 0.5}, "gmm": {"reg_covar": 1e-6}, "fuzzy": {"fuzzifier": 2.0}}[variant]
    config = KMeansTransformerConfig(num_clusters=3, point_dim=4, num_iterations=iterations, variant=variant, **options)
    model = KMeansTransformerModel(config).float().eval()
    state = {"variances": torch.ones(1, 3), "weights": torch.full((1, 3), 1 / 3)} if variant == "gmm" else {}
    if variant == "soft":
        expected = reference.soft_kmeans(repeated, initial, iterations, 0.5)
    elif variant == "gmm":
        expected = reference.gaussian_mixture_em(repeated, initial, np.ones(3), np.full(3, 1 / 3), iterations, 1e-6)
    else:
        expected = reference.fuzzy_cmeans(repeated, initial, iterations, 2.0)
    tolerance = 2 * np.spacing(np.float32(offset)) + 1e-4
    weights = {} if sample_weight is None else {"sample_weight": sample_weight[None]}
    assert model.engine() == "compact"
    output = model(points, start, output_assignments=False, **weights, **state)
    parameters = {"centroids": start.double(), **{name: value.double() for name, value in state.items()}}
    for _ in range(iterations):  # points mode's loop on one chunk
        statistics = model.statistics(points, parameters, **weights)
        parameters = {name: value.double() for name, value in model.finalize(statistics, parameters).items()}
    for found in (output.centroids, parameters["centroids"]):
        np.testing.assert_allclose(found[0].double().numpy(), expected.centroids, rtol=0, atol=tolerance)
    if variant == "gmm":
        for found in (output, parameters):
            np.testing.assert_allclose(found["variances"][0].double().numpy(), expected.variances, rtol=tolerance)
            np.testing.assert_allclose(found["weights"][0].double().numpy(), expected.weights, rtol=0, atol=tolerance)


def test_float32_gmm_keeps_its_float64_frame(monkeypatch):
    """
    Float32 gmm on clusters 10^4 apart (`"apart"`: no origin near all three, so every pass takes its products in
    float64) against the float64 EM of `reference` on the same float32 points: the points are translated into the
    float64 frame once per forward call, not once per pass (the frame is kept while its bound holds in float64), and
    the centroids, variances and weights are those of the float64 loop (2 float32 ulps of 10^4 plus 1e-4).
    """
    points, reference_points, start, _ = far_from_the_origin("apart", 1e4, False)
    translations = []  # the dtype of each translated copy of the points
    with_ones = modeling_kmeans_transformer._with_ones

    def recorded(values, origin=None):
        if origin is not None and values.shape[-2] == points.shape[1]:
            translations.append(origin.dtype)
        return with_ones(values, origin)

    monkeypatch.setattr(modeling_kmeans_transformer, "_with_ones", recorded)
    iterations = 6
    config = KMeansTransformerConfig(num_clusters=3, point_dim=4, num_iterations=iterations, variant="gmm", reg_covar=1e-6)
    model = KMeansTransformerModel(config).float().eval()
    state = {"variances": torch.ones(1, 3), "weights": torch.full((1, 3), 1 / 3)}
    output = model(points, start, output_assignments=False, **state)
    assert translations == [torch.float64]
    expected = reference.gaussian_mixture_em(
        reference_points, start[0].double().numpy(), np.ones(3), np.full(3, 1 / 3), iterations, 1e-6
    )
    tolerance = 2 * np.spacing(np.float32(1e4)) + 1e-4
    np.testing.assert_allclose(output.centroids[0].double().numpy(), expected.centroids, rtol=0, atol=tolerance)
    np.testing.assert_allclose(output.variances[0].double().numpy(), expected.variances, rtol=tolerance)
    np.testing.assert_allclose(output.weights[0].double().numpy(), expected.weights, rtol=0, atol=tolerance)


def compact_float32_forward(variant, points, start, iterations, **options):
    """A float32 model of `variant` (3 clusters of `far_from_the_origin`'s points) on the compact engine, and its
    forward output from `start`, any warning raised as an error."""
    config = KMeansTransformerConfig(num_clusters=3, point_dim=4, num_iterations=iterations, variant=variant, **options)
    model = KMeansTransformerModel(config).float().eval()
    assert model.engine() == "compact"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        return model, model(points, start)


HARD_FAR_OPTIONS = {"lloyd": {}, "trimmed": {"trim_quantile": 0.9}, "sparse": {"inverse_temperature": 0.5}}


def hard_far_reference(variant, points, initial, iterations):
    """The float64 plain loops of `reference` for a hard variant of `HARD_FAR_OPTIONS`."""
    options = HARD_FAR_OPTIONS[variant]
    if variant == "lloyd":
        return reference.lloyd(points, initial, iterations)
    if variant == "trimmed":
        return reference.trimmed_kmeans(points, initial, iterations, **options)
    return reference.sparse_kmeans(points, initial, iterations, options["inverse_temperature"])


@pytest.mark.parametrize("variant", list(HARD_FAR_OPTIONS))
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_float32_hard_assignments_far_from_the_origin(variant, offset, compiled, tmp_path):
    """
    A float32 lloyd, trimmed and sparse model on points of unit spread `offset` from the origin against the float64
    plain loops of `reference` on the same float32 points: forward's compact engine, the estimator's looped fit
    (`compact_iterations`), and points mode (`cluster_points`, parameters held in float64). Expanded at the points'
    own coordinates the float32 scores `2 x.c - |c|^2` round by about `2^-24 (2 offset)^2` (24 at 10^4, against
    squared distances of a few units: 186 of 300 labels were wrong); in the compact engine's frame, translated to
    the centroids' mean, the labels (and trimmed outliers) are the float64 loops' and the centroids within 2
    float32 ulps of `offset` (their own rounding) plus 1e-4 of the spread; forward's lloyd and trimmed means are
    the float64 loops' rounded once to float32. No warning on the compact engine.
    """
    points, reference_points, start, _ = far_from_the_origin("shifted", offset, False)
    initial, iterations = start[0].double().numpy(), 6
    expected = hard_far_reference(variant, reference_points, initial, iterations)
    tolerance = 2 * np.spacing(np.float32(offset)) + 1e-4
    model, output = compact_float32_forward(variant, points, start, iterations, **HARD_FAR_OPTIONS[variant])
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    np.testing.assert_allclose(output.centroids[0].double().numpy(), expected.centroids, rtol=0, atol=tolerance)
    if variant == "trimmed":
        np.testing.assert_array_equal(output.outliers[0].numpy(), expected.outliers)
    if variant != "sparse":  # the means of the same members, each float64 quotient rounded once to float32
        np.testing.assert_array_equal(output.centroids[0].numpy(), expected.centroids.astype(np.float32))

    estimator = KMeans(3, init=initial, n_init=1, max_iter=iterations, tol=0.0, variant=variant,
                       **HARD_FAR_OPTIONS[variant]).fit(points[0].numpy())
    assert estimator.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(estimator.labels_, expected.labels)
    np.testing.assert_allclose(estimator.cluster_centers_, expected.centroids, rtol=0, atol=tolerance)

    dataset = datasets.Dataset.from_dict({f"x{e}": points[0, :, e].numpy() for e in range(4)})
    found = cluster_points(model, dataset, chunk_size=128, num_iterations=iterations, progress=False)  # from rows 0-2
    np.testing.assert_allclose(found.centroids, expected.centroids, rtol=0, atol=tolerance)
    labelled = expected.labels[expected.labels >= 0]
    np.testing.assert_array_equal(found.cluster_sizes, np.bincount(labelled, minlength=3))


@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_float32_kmedoids_far_from_the_origin(offset, compiled):
    """
    A float32 deterministic k-medoids model on points of unit spread `offset` from the origin against the float64
    plain loops of `reference.kmedoids` on the same float32 points (nearest medoid by the differences, the member of
    least summed Euclidean distance): forward's compact engine, the estimator's looped fit (`compact_iterations`) and
    `model.assign`. Expanded at the points' own coordinates the float32 scores `2 x.c - |c|^2` round by about `2^-24
    (2 offset)^2` (24 at 10^4, against squared distances of a few units: 152 of 300 labels were wrong); the medoids
    stay data points, so no frame translates them, and the labels are taken from float64 products: the labels and
    the medoids (exact data rows) are the float64 loops'. No warning on the compact engine.
    """
    points, reference_points, start, _ = far_from_the_origin("shifted", offset, False)
    initial, iterations = start[0].double().numpy(), 6
    expected = reference.kmedoids(reference_points, initial, iterations)
    model, output = compact_float32_forward("kmedoids", points, start, iterations)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    np.testing.assert_array_equal(output.centroids[0].double().numpy(), expected.centroids)  # data rows, exactly
    medoids = torch.from_numpy(expected.centroids).float()[None]
    expected_inertia = reference.inertia(reference_points, expected.labels, expected.centroids)
    np.testing.assert_allclose(float(output.inertia[0]), expected_inertia, rtol=1e-5)

    labels, _ = model.assign(points, {"centroids": medoids}, output_assignments=False)
    np.testing.assert_array_equal(labels[0].numpy(), reference.assign_labels(reference_points, expected.centroids))

    assert model.compact_iterations(points, start) is not None  # the estimator's path
    estimator = KMeans(3, init=initial, n_init=1, max_iter=iterations, tol=0.0, variant="kmedoids")
    estimator.fit(points[0].numpy())
    np.testing.assert_array_equal(estimator.labels_, expected.labels)
    np.testing.assert_array_equal(estimator.cluster_centers_.astype(np.float64), expected.centroids)
    np.testing.assert_array_equal(estimator.predict(points[0].numpy()), expected.labels)



@pytest.mark.parametrize("spread", [1e-3, 1.0], ids=["collapsing", "unit"])
def test_float32_gmm_variances_from_lane_sums(spread, compiled, monkeypatch):
    """
    Float32 gmm on three clusters 3 from the origin (5.2 from each other) against the float64 EM of `reference` on
    the same float32 points, from variances 1: forward's first iteration, and three iterations as sufficient
    statistics (points mode's loop). With unit spread the compiled pass sums in float32 lanes (the variance's
    cancellation `κ = 4 s / (d σ^2)` is about 22, within `LANE_SUMS_TOLERANCE`). With spread 1e-3 the first
    M-step's `d σ^2 = S/R - |N/R|^2 = 2e-6` is a difference of mean squares near 9 (`κ` about 2 10^7, where float32
    lanes leave little of it): entering with variance 1 the pass starts in lanes, its statistics fail the bound,
    and it is taken again with float64 products. Variances within `LANE_SUMS_TOLERANCE`, centroids within 2
    float32 ulps of 3 plus 1e-4 of the spread.
    """
    generator = torch.Generator().manual_seed(5)
    angles = torch.tensor([0.0, 2.1, 4.2], dtype=torch.float64)
    centres = 3 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    members = torch.arange(300) % 3
    points = (centres[members] + spread * torch.randn(300, 2, generator=generator, dtype=torch.float64)).float()
    start = points[None, [0, 1, 2]]
    state = {"variances": torch.ones(1, 3), "weights": torch.full((1, 3), 1 / 3)}
    passes = []  # the compiled gmm passes' float64_products, in order
    membership_sums = modeling_kmeans_transformer.membership_sums

    def recorded(*args, **kwargs):
        if kwargs.get("square_norm"):
            passes.append(kwargs["float64_products"])
        return membership_sums(*args, **kwargs)

    monkeypatch.setattr(modeling_kmeans_transformer, "membership_sums", recorded)
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=1, variant="gmm"))
    model = model.float().eval()
    expected = reference.gaussian_mixture_em(points.double().numpy(), start[0].double().numpy(), np.ones(3), np.full(3, 1 / 3), 3)
    atol = 2 * np.spacing(np.float32(3)) + 1e-4 * spread
    rtol = modeling_kmeans_transformer.LANE_SUMS_TOLERANCE
    output = model(points[None], start, output_assignments=False, **state)
    np.testing.assert_allclose(output.centroids[0].double().numpy(), expected.centroid_history[1], rtol=0, atol=atol)
    np.testing.assert_allclose(output.variances[0].double().numpy(), expected.variance_history[1], rtol=rtol)
    if compiled:
        assert passes == ([False, True] if spread < 1 else [False])
    parameters = {"centroids": start.double(), **{name: value.double() for name, value in state.items()}}
    for iteration in range(1, 4):
        statistics = model.statistics(points[None], parameters)
        parameters = {name: value.double() for name, value in model.finalize(statistics, parameters).items()}
        found = parameters["centroids"][0].numpy()
        np.testing.assert_allclose(found, expected.centroid_history[iteration], rtol=0, atol=atol)
        np.testing.assert_allclose(parameters["variances"][0].numpy(), expected.variance_history[iteration], rtol=rtol)


def test_gmm_sums_cancellation_bounds_the_variance():
    """
    `sums_cancellation`'s `κ_j` against a direct computation: the variance `(S/R - |N/R|^2) / d` of sums `[N ; S ;
    R]` each moved by `ε` of its sum of absolute terms, every sign pattern and random ones, moves by at most `κ_j ε
    σ_j^2`, and by more than half of it for the component far from the origin (the bound is nearly reached there);
    before a pass, from the parameters those sums give, `κ_j` is the same.
    """
    generator = torch.Generator().manual_seed(7)
    n, d, k = 500, 3, 3
    centres = torch.tensor([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0], [400.0, 300.0, 0.0]], dtype=torch.float64)
    points = centres[torch.arange(n) % k] + torch.randn(n, d, generator=generator, dtype=torch.float64)
    responsibilities = torch.softmax(torch.randn(n, k, generator=generator, dtype=torch.float64) * 4, dim=-1)
    rows = torch.cat([points, (points * points).sum(dim=-1, keepdim=True), torch.ones(n, 1, dtype=torch.float64)], -1)
    sums, magnitudes = responsibilities.T @ rows, responsibilities.T @ rows.abs()  # (k, d + 2)
    statistics = torch.cat([sums, torch.full((k, 1), float(n), dtype=torch.float64)], dim=-1)[None]
    update = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=d, variant="gmm")).layers[0].update
    cancellation = update.sums_cancellation({}, statistics)[0]

    def variances(moved):
        means = moved[:, :d] / moved[:, d + 1 :]
        return (moved[:, d] / moved[:, d + 1] - (means * means).sum(dim=-1)) / d

    exact, epsilon = variances(sums), 1e-10
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * (d + 2))
    signs = torch.cat([corners, torch.rand(200, d + 2, generator=generator, dtype=torch.float64) * 2 - 1])
    largest = torch.stack([(variances(sums + sign * epsilon * magnitudes) - exact).abs() for sign in signs]).amax(0)
    bound = cancellation * epsilon * exact
    assert (largest <= bound * (1 + 1e-6)).all()
    assert largest[2] > bound[2] / 2
    assert update.config.reg_covar == 0  # then the M-step's variance is `d σ^2 = s - |μ|^2` itself
    parameters = update.finalize(statistics, {"centroids": torch.zeros(1, k, d), "variances": torch.ones(1, k)})
    torch.testing.assert_close(update.sums_cancellation(parameters)[0], cancellation, rtol=1e-9, atol=0)


def weighted_far_case(variant, offset, dtype=torch.float32, variances=1.0):
    """
    A model of 6 iterations in `dtype` (soft at γ = 1/2, gmm from variances `variances` and equal weights, or another
    variant with its defaults) on `far_from_the_origin("shifted", offset)`: the model, its inputs (points, starting
    centroids, gmm's state) in `dtype`, and the float64 plain loops' centroids on the same points (None for the others).
    """
    points, reference_points, start, _ = far_from_the_origin("shifted", offset, False)
    initial, iterations = start[0].double().numpy(), 6
    options = {"soft": {"inverse_temperature": 0.5}, "gmm": {"reg_covar": 1e-6}}.get(variant, {})
    config = KMeansTransformerConfig(num_clusters=3, point_dim=4, num_iterations=iterations, variant=variant, **options)
    model = KMeansTransformerModel(config).to(dtype).eval()
    state, expected = {}, None
    if variant == "soft":
        expected = reference.soft_kmeans(reference_points, initial, iterations, 0.5).centroids
    elif variant == "gmm":
        state = {"variances": torch.full((1, 3), variances), "weights": torch.full((1, 3), 1 / 3)}
        state = {name: value.to(dtype) for name, value in state.items()}
        expected = reference.gaussian_mixture_em(
            reference_points, initial, np.full(3, variances), np.full(3, 1 / 3), iterations, 1e-6
        ).centroids
    return model, (points.to(dtype), start.to(dtype)), state, expected


def precision_warnings(model, trigger, points, start, **state):
    """
    `model(points, start, **state)` on the engine `trigger` makes it run (`"gradients"`, `"hidden_states"`, `"hook"`
    on the assign block, or `"compact"`), and the messages of the `RuntimeWarning`s about points far from the origin.
    """
    options = {"output_hidden_states": True} if trigger == "hidden_states" else {}
    handle = model.layers[0].assign.register_forward_hook(lambda *args: None) if trigger == "hook" else None
    try:
        with torch.enable_grad() if trigger == "gradients" else torch.no_grad():
            engine = model.engine(output_hidden_states=trigger == "hidden_states")
            assert engine == ("compact" if trigger == "compact" else "tokens")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                output = model(points, start, **state, **options)
    finally:
        if handle is not None:
            handle.remove()
    found = [str(w.message) for w in caught if w.category is RuntimeWarning and "far from the origin" in str(w.message)]
    return output, found


def centroid_error(output, expected):
    return float(np.abs(output.centroids[0].detach().double().numpy() - expected).max())


@pytest.mark.parametrize("variant", ["soft", "gmm"])
@pytest.mark.parametrize("trigger", ["gradients", "hidden_states", "hook"])
def test_float32_token_engine_warns_far_from_the_origin(variant, trigger):
    """
    The token engine computes float32 soft's and gmm's scores `|x|^2 - 2 x.c + |c|^2` at the points' own coordinates:
    at an offset of 10^3 they round by up to `2^-24 a (2 · 2000)^2` (0.48 for soft's `a` = γ = 1/2), far past
    `EXPANDED_SCORE_TOLERANCE`, and the centroids are off the float64 plain loops' by over 10 times what the compact
    engine (which translates the scores) meets on the same data (`test_float32_weighted_passes_far_from_the_origin`).
    One warning per forward call, naming the remedies; none on the compact engine.
    """
    model, (points, start), state, expected = weighted_far_case(variant, 1e3)
    tolerance = 2 * np.spacing(np.float32(1e3)) + 1e-4
    output, found = precision_warnings(model, trigger, points, start, **state)
    assert len(found) == 1, found
    assert all(remedy in found[0] for remedy in ("float64", "centre the data", "compact engine", "model.engine()"))
    assert centroid_error(output, expected) > 10 * tolerance
    output, found = precision_warnings(model, "compact", points, start, **state)
    assert found == [] and centroid_error(output, expected) <= tolerance


@pytest.mark.parametrize("variant", ["lloyd", "trimmed", "sparse", "kmedoids"])
def test_float32_token_engine_warns_of_hard_labels_far_from_the_origin(variant):
    """
    The token engine's float32 hardmax compares the expanded scores `2 x.c - |c|^2` at the points' own coordinates:
    at an offset of 10^3 they round by about `2^-24 (2 · 2000)^2` (1), against the scale `s_j^2 / 4` at which the
    labels are decided (`s_j` a few units between these clusters): one warning per forward call, naming the remedies.
    The compact engine, which translates the scores, gives the float64 plain loops' labels without a warning (lloyd).
    """
    model, (points, start), _, _ = weighted_far_case(variant, 1e3)
    output, found = precision_warnings(model, "hidden_states", points, start)
    assert len(found) == 1, found
    assert all(remedy in found[0] for remedy in ("float64", "centre the data", "compact engine", "model.engine()"))
    if variant == "lloyd":
        expected = reference.lloyd(points[0].double().numpy(), start[0].double().numpy(), 6)
        output, found = precision_warnings(model, "compact", points, start)
        assert found == []
        np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)


def test_float32_token_engine_warns_of_the_final_gmm_variances():
    """
    gmm from variances of 10^4 at an offset of 10^2: the entering scores' bound is `2^-24 (2 · 10^4)^-1 (2 · 200)^2`
    (5e-7), within `EXPANDED_SCORE_TOLERANCE`; the variances shrink to about 1, and the final parameters' bound
    (5e-3) exceeds it: one warning, after the run.
    """
    model, (points, start), state, expected = weighted_far_case("gmm", 1e2, variances=1e4)
    output, found = precision_warnings(model, "hidden_states", points, start, **state)
    assert float(output.variances.min()) < 10
    assert len(found) == 1, found


@pytest.mark.parametrize(
    "variant,offset,dtype",
    [
        ("soft", 0.0, torch.float32),  # around the origin: nothing cancels
        ("gmm", 0.0, torch.float32),
        ("soft", 1e3, torch.float64),  # float64: 2^-53 (2 · 2000)^2 / 2 ~ 1e-9
        ("gmm", 1e3, torch.float64),
        ("lloyd", 0.0, torch.float32),  # around the origin: a few units against the centroids' separations
        ("spherical", 1e3, torch.float32),
        ("fuzzy", 1e3, torch.float32),  # distances from the differences
        ("learned", 1e3, torch.float32),  # trained queries and keys: no bound at the points' coordinates
    ],
    ids=lambda value: str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None,
)
def test_no_expanded_score_warning_where_the_scores_keep_their_digits(variant, offset, dtype):
    """
    No warning where the token engine's scores are precise enough or not expanded products of the points, or where
    the compact engine would not do better; soft and gmm then agree with the float64 plain loops.
    """
    model, (points, start), state, expected = weighted_far_case(variant, offset, dtype)
    output, found = precision_warnings(model, "gradients", points, start, **state)
    assert found == []
    if expected is not None:
        assert centroid_error(output, expected) <= (1e-4 if dtype == torch.float32 else 1e-8)
