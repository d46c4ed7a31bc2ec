"""
Fuzzing with hypothesis: the model's forward (every variant, random shapes, dtypes, masks, centroids, parameters and
magnitudes), the scikit-learn estimator, and the compiled CPU loops. Every outcome must be a correct result or a
`ValueError`/`TypeError`: never another exception, a NaN or infinite centroid, or a label that is not the nearest
centroid's.

"Correct" is checked where it is unambiguous: on well-separated data the labels are those of a NumPy argmin over the
squared distances to the returned centroids (ties to the lowest index), wherever the best distance beats the second
by a margin far above the rounding of the dtype; the compiled loops are compared with NumPy on small integers (exact
in any order of summation, ties frequent) and on random floats (with a margin, or a tolerance for sums).

The default run takes a few hundred examples, the same ones every time (`derandomize`); `-m slow` runs many more,
drawn afresh, except under CI (the `CI` environment variable set), where they are a fixed sample too, so that a
landing does not depend on the draw; a fresh draw that fails prints its falsifying example to rerun.
"""

import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel, cpu_kernels
from kmeans_transformer.attention import safe_magnitude_exponents
from kmeans_transformer.variants import MEDOID_SELECTIONS, VARIANTS

REFUSED = (ValueError, TypeError)
_COMMON = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def default_run(examples):
    return settings(max_examples=examples, derandomize=True, **_COMMON)


def slow_run(examples):
    return settings(max_examples=examples, derandomize="CI" in os.environ, **_COMMON)


DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Magnitudes 2**e of the data: from far below to far above the dtype's safe range, always finite.
EXPONENTS = {torch.float32: (-110, 110), torch.float64: (-900, 900)}
# A distance counts as the nearest when it beats the second by this much relative to |x|^2 + |c|^2 (the size of
# the rounding of any formula for it), far above the dtype's epsilon.
MARGIN = {torch.float32: 1e-3, torch.float64: 1e-9}


# ---------------------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------------------


def log_uniform(low, high):
    return st.floats(math.log(low), math.log(high)).map(math.exp)


# The clustering algorithms: a trainable variant (`VariantSpec.trainable`, "learned") is no algorithm of its own until
# trained; tests/test_learned.py checks it.
ALGORITHMS = sorted(name for name, spec in VARIANTS.items() if not spec.trainable)

PARAMETER_VALUES = {
    "inverse_temperature": log_uniform(1e-3, 1e3),
    "trim_quantile": st.floats(0.05, 1.0),
    "trim_fraction": st.floats(0.0, 0.9),
    "medoid_selection": st.sampled_from(MEDOID_SELECTIONS),
    "reg_covar": st.one_of(st.just(0.0), log_uniform(1e-8, 1.0)),
    "fuzzifier": st.floats(1.1, 4.0),
}


@st.composite
def variant_parameters(draw, variant):
    """Valid parameters of `variant` (each left out, or drawn; numbers sometimes as NumPy scalars)."""
    spec = VARIANTS[variant]
    parameters = {}
    for name in spec.parameters:
        if draw(st.booleans()):
            value = draw(PARAMETER_VALUES[name])
            if isinstance(value, float) and draw(st.integers(0, 3)) == 0:
                value = draw(st.sampled_from([np.float64, np.float32]))(value)
            parameters[name] = value
    for first, second in spec.exclusive:
        if first in parameters and second in parameters:
            del parameters[second]
    return parameters


def separated_clusters(rng, k, d, sizes):
    """`sum(sizes)` points around k centres 20 apart along the first axis (spread 1), shuffled, with their centres."""
    centres = np.zeros((k, d))
    centres[:, 0] = 20.0 * (np.arange(k) + 1)
    if d > 1:
        centres[:, 1:] = rng.uniform(-5, 5, (k, d - 1))
    points = np.concatenate([centres[j] + rng.uniform(-1, 1, (size, d)) for j, size in enumerate(sizes)])
    return points[rng.permutation(len(points))], centres


def may_collapse(spec, parameters, dtype, exponent) -> bool:
    """
    Whether a mixture's variance may be refused as collapsed (or lost): a component on one point has the variance
    `reg_covar`, which the moment form `S_j / R_j - |μ_j|^2` (and the token engine's residual stream) can hold only
    above the rounding of the squared coordinates, up to `2**(2 (e + 7))` for data at magnitude `2**e`.
    """
    if not spec.state:
        return False
    reg_covar = parameters.get("reg_covar") or 0
    rounding = math.log2(64 * torch.finfo(dtype).eps) + 2 * (exponent + 7)  # log2, as the power may overflow
    return not (reg_covar > 0 and math.log2(reg_covar) > rounding)


def nearest_checked(points, centroids, labels, dtype, allow_trimmed=False, stiffness=None):
    """
    Assert `labels[i]` is the first argmin of `|points_i - centroids_j|^2` (NumPy, float64) wherever that argmin
    wins by the margin; -1 (trimmed) is accepted where `allow_trimmed`. `stiffness`: for labels read off softmax
    responsibilities `softmax(-stiffness * distances)`, the argmin must also win there by the margin (the
    responsibilities of nearly equal scores are equal once rounded). Returns how many labels were checked.
    """
    points, centroids = np.asarray(points, np.float64), np.asarray(centroids, np.float64)
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    expected = distances.argmin(1)
    if centroids.shape[0] > 1:
        ordered = np.sort(distances, axis=1)
        size = (points**2).sum(1) + (centroids**2).sum(1).max()
        clear = ordered[:, 1] - ordered[:, 0] > MARGIN[dtype] * size
        if stiffness is not None:
            clear &= stiffness * (ordered[:, 1] - ordered[:, 0]) > MARGIN[dtype]
    else:
        clear = np.ones(len(points), dtype=bool)
    if allow_trimmed:
        clear &= labels != -1
    assert np.array_equal(labels[clear], expected[clear]), (labels, expected, clear)
    return int(clear.sum())


def scale_free(spec, parameters):
    """Whether the variant, with these parameters, may rescale data outside the dtype's range (not refuse it)."""
    spec = spec.resolve({**spec.parameters, **parameters})
    return spec.scaling == "invariant" or not any(
        parameters.get(name, spec.parameters.get(name)) for name in spec.scale_parameters
    )


def softmax_stiffness(spec, parameters, scale):
    """For a variant whose labels are the argmax of `softmax(-γ |x - c|^2)` ("soft"): γ in the reference's units."""
    if not (spec.soft_assignment and "inverse_temperature" in spec.parameters):
        return None
    return float(parameters.get("inverse_temperature", spec.parameters["inverse_temperature"])) * scale**2


def unit(vectors):
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------------
# The model's forward
# ---------------------------------------------------------------------------------------------------------------------


def check_model_forward(data):
    variant = data.draw(st.sampled_from(ALGORITHMS), label="variant")
    spec = VARIANTS[variant]
    parameters = data.draw(variant_parameters(variant), label="parameters")
    dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    k = data.draw(st.integers(1, 4), label="k")
    d = data.draw(st.integers(1, 3), label="d")
    batch = data.draw(st.integers(1, 3), label="batch")
    num_iterations = data.draw(st.integers(0, 3), label="num_iterations")
    share_layers = data.draw(st.booleans(), label="share_layers")
    fast_hardmax = data.draw(st.booleans(), label="fast_hardmax")
    exponent = data.draw(st.integers(*EXPONENTS[dtype]), label="magnitude exponent")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)

    # Every problem: well-separated clusters (some with fewer real points than k), padded to one length with masked
    # rows of garbage at the data's scale (or zeros).
    sizes = [data.draw(st.lists(st.integers(0, 4), min_size=k, max_size=k), label=f"cluster sizes {b}") for b in range(batch)]
    reals = [sum(s) for s in sizes]
    assume(max(reals) > 0)
    length = max(reals) + data.draw(st.integers(0, 3), label="padding")
    points = np.zeros((batch, length, d))
    mask = np.zeros((batch, length), dtype=bool)
    centres = []
    for b in range(batch):
        problem, centre = separated_clusters(rng, k, d, sizes[b])
        slots = np.sort(rng.choice(length, reals[b], replace=False))
        points[b, slots], mask[b, slots] = problem, True
        garbage = ~mask[b]
        points[b, garbage] = rng.uniform(-100, 100, (int(garbage.sum()), d)) * rng.integers(0, 2)
        centres.append(centre)
    centroid_kind = data.draw(st.sampled_from(["default", "per problem", "shared"]), label="centroids")
    if centroid_kind == "per problem":
        centroids = np.stack(centres) + rng.uniform(-2, 2, (batch, k, d))
    elif centroid_kind == "shared":
        centroids = centres[0] + rng.uniform(-2, 2, (k, d))
    else:
        centroids = None
    scale = 2.0**exponent
    points_in = torch.tensor(points * scale, dtype=dtype)
    centroids_in = None if centroids is None else torch.tensor(centroids * scale, dtype=dtype)
    use_mask = data.draw(st.booleans(), label="pass attention_mask") or not mask.all()
    mask_in = torch.tensor(mask).to(data.draw(st.sampled_from([torch.bool, torch.int64, dtype]), label="mask dtype"))

    kwargs = {"attention_mask": mask_in} if use_mask else {}
    if variant == "kmedoids" and parameters.get("medoid_selection") == "gumbel":
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    note(f"variant={variant} {parameters} dtype={dtype} k={k} d={d} T={num_iterations} scale=2**{exponent}")
    note(f"sizes={sizes} length={length} centroids={centroid_kind} share_layers={share_layers} fast={fast_hardmax}")

    try:
        config = KMeansTransformerConfig(
            num_clusters=k, point_dim=d, num_iterations=num_iterations, variant=variant, share_layers=share_layers,
            fast_hardmax=fast_hardmax, **parameters,
        )
        model = KMeansTransformerModel(config).to(dtype).eval()
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output = model(points_in, centroids=centroids_in, **kwargs)
    except REFUSED as error:
        note(f"refused: {type(error).__name__}: {error}")
        event(f"model refused: {str(error)[:40]}")
        # A refusal is an outcome the rules allow; these inputs, though, are plainly valid and must run.
        low, high = safe_magnitude_exponents(dtype, d * max(length, k))
        in_range = low <= exponent - 1 and exponent + 7 <= high  # coordinates lie in [2**(e-1), 2**(e+7)]
        plain = not any(isinstance(value, np.generic) for value in parameters.values())
        mixture_may_collapse = may_collapse(spec, parameters, dtype, exponent)
        if min(reals) >= k and (in_range or scale_free(spec, parameters)) and plain and not mixture_may_collapse:
            raise AssertionError(f"valid inputs refused: {type(error).__name__}: {error}") from error
        return

    event(f"model ran ({variant})")
    labels = output.labels.numpy()
    given = points_in.double().numpy()  # the points as the model got them (rounded to its dtype)
    returned = output.centroids.double().numpy()
    assert labels.shape == (batch, length) and returned.shape == (batch, k, d)
    assert np.isfinite(returned).all(), "non-finite centroids"
    # Squares of data past the square root of the dtype's largest number cannot be represented: the inertia and
    # gmm's variances may then come back infinite, with a warning that names them (not silently); never NaN.
    squares_overflow = 2 * (exponent + 7) >= math.frexp(torch.finfo(dtype).max)[1]
    told = " ".join(str(warning.message) for warning in caught)
    for name in ("inertia", *spec.state_names):
        value = getattr(output, name)
        assert not torch.isnan(value).any(), f"NaN {name}"
        if squares_overflow and not torch.isfinite(value).all():
            assert f"The {name} of data this large" in told, f"infinite {name} without a warning"
            event(f"infinite {name} past the square root of the range, with a warning")
            continue
        assert torch.isfinite(value).all(), f"non-finite {name}"
    low_label = -1 if spec.reports_outliers else 0
    for b in range(batch):
        real = mask[b]
        assert ((labels[b, real] >= low_label) & (labels[b, real] < k)).all()
        if spec.state:  # gmm: the labels are the posterior's argmax, which the variances move; finite is the check
            continue
        seen, centres_seen = given[b, real] / scale, returned[b] / scale  # exact: powers of two
        if spec.unit_norm:  # directions (the centroids are unit vectors, at no scale)
            seen, centres_seen = unit(seen), unit(returned[b])
        nearest_checked(
            seen, centres_seen, labels[b, real], dtype, spec.reports_outliers, softmax_stiffness(spec, parameters, scale)
        )


@default_run(200)
@given(st.data())
def test_model_forward_fuzz(data):
    check_model_forward(data)


@pytest.mark.slow
@slow_run(2000)
@given(st.data())
def test_model_forward_fuzz_many(data):
    check_model_forward(data)


# ---------------------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------------------


def check_estimator(data):
    variant = data.draw(st.sampled_from(ALGORITHMS), label="variant")
    spec = VARIANTS[variant]
    parameters = data.draw(variant_parameters(variant), label="parameters")
    k = data.draw(st.integers(1, 4), label="n_clusters")
    d = data.draw(st.integers(1, 3), label="n_features")
    sizes = data.draw(st.lists(st.integers(0, 5), min_size=k, max_size=k), label="cluster sizes")
    assume(sum(sizes) > 0)
    exponent = data.draw(st.integers(-40, 40), label="magnitude exponent")
    dtype_name = data.draw(st.sampled_from([None, "float32", "float64"]), label="dtype")
    input_dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="input dtype")
    n_init = data.draw(st.one_of(st.just("auto"), st.integers(1, 3)), label="n_init")
    init = data.draw(st.sampled_from(["k-means++", "random"]), label="init")
    max_iter = data.draw(st.integers(1, 10), label="max_iter")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    scale = 2.0**exponent
    X, _ = separated_clusters(rng, k, d, sizes)
    rows = data.draw(st.integers(1, 6), label="new rows")
    Y = np.concatenate([X[rng.integers(0, len(X), rows)] + rng.uniform(-1, 1, (rows, d)), rng.uniform(0, 100, (2, d))])
    note(f"variant={variant} {parameters} k={k} d={d} sizes={sizes} scale=2**{exponent} dtype={dtype_name}/{input_dtype}")

    estimator = KMeans(
        n_clusters=k, init=init, n_init=n_init, max_iter=max_iter, random_state=seed % 1000, variant=variant,
        dtype=dtype_name, **parameters,
    )
    X_in, Y_in = (X * scale).astype(input_dtype), (Y * scale).astype(input_dtype)
    try:
        estimator.fit(X_in)
        labels = estimator.predict(Y_in)
        distances = estimator.transform(Y_in)
        score = estimator.score(Y_in)
    except REFUSED as error:
        note(f"refused: {type(error).__name__}: {error}")
        event(f"estimator refused: {str(error)[:40]}")
        plain = not any(isinstance(value, np.generic) for value in parameters.values())
        dtype = torch.float32 if (dtype_name or np.dtype(input_dtype).name) == "float32" else torch.float64
        mixture_may_collapse = may_collapse(spec, parameters, dtype, exponent)
        if len(X) >= k and plain and not mixture_may_collapse and (abs(exponent) <= 20 or scale_free(spec, parameters)):
            raise AssertionError(f"valid inputs refused: {type(error).__name__}: {error}") from error
        return

    event(f"estimator ran ({variant})")
    dtype = torch.float32 if (dtype_name or np.dtype(input_dtype).name) == "float32" else torch.float64
    centres = np.asarray(estimator.cluster_centers_, np.float64)
    assert centres.shape == (k, d) and np.isfinite(centres).all(), "non-finite centroids"
    assert estimator.labels_.shape == (len(X),)
    assert ((estimator.labels_ >= -1) & (estimator.labels_ < k)).all()
    assert math.isfinite(estimator.inertia_) and estimator.inertia_ >= 0
    assert labels.shape == (len(Y),) and distances.shape == (len(Y), k) and math.isfinite(score)
    seen, centres_seen = Y_in.astype(np.float64) / scale, centres / scale  # what the estimator was given, exactly
    if spec.unit_norm:  # directions (the centroids are unit vectors, at no scale)
        seen, centres_seen = unit(seen), unit(centres)
        expected_distances = np.linalg.norm(seen[:, None] - centres_seen[None], axis=-1)
    else:
        expected_distances = np.linalg.norm(seen[:, None] - centres_seen[None], axis=-1) * scale
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    np.testing.assert_allclose(distances, expected_distances, rtol=tolerance, atol=tolerance * expected_distances.max())
    if not spec.state:
        nearest_checked(seen, centres_seen, labels, dtype, spec.reports_outliers, softmax_stiffness(spec, parameters, scale))
    kept = labels >= 0
    unit_scale = 1.0 if spec.unit_norm else scale**2
    inertia = ((seen[kept] - centres_seen[labels[kept]]) ** 2).sum() * unit_scale
    size = ((seen[kept] ** 2).sum() + (centres_seen[labels[kept]] ** 2).sum()) * unit_scale  # what rounding scales with
    assert abs(-score - inertia) <= tolerance * size, (score, inertia)


@default_run(100)
@given(st.data())
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # duplicate points
def test_estimator_fuzz(data):
    check_estimator(data)


@pytest.mark.slow
@slow_run(500)
@given(st.data())
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # duplicate points
def test_estimator_fuzz_many(data):
    check_estimator(data)


# ---------------------------------------------------------------------------------------------------------------------
# The compiled loops
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled():
    """The compiled loops must build wherever a C++ compiler is found (as in tests/test_fast_path.py)."""
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the kernels run their PyTorch code")
    assert cpu_kernels._load() is not None, "the compiled CPU kernels must build on this machine"


def numbers(rng, shape, integers, exponent):
    """Small integers (exact sums in any order, frequent ties) or uniform floats, times 2**exponent."""
    values = rng.integers(-3, 4, shape).astype(np.float64) if integers else rng.uniform(-1, 1, shape)
    return values * 2.0**exponent


def check_nearest(data, max_rows):
    dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    groups, n = data.draw(st.integers(1, 3), label="groups"), data.draw(st.integers(0, max_rows), label="n")
    k, e = data.draw(st.integers(1, 40), label="k"), data.draw(st.integers(1, 20), label="e")
    integers = data.draw(st.booleans(), label="integers")
    exponent = data.draw(st.integers(-40, 40) if dtype == torch.float32 else st.integers(-400, 400), label="exponent")
    strided = data.draw(st.booleans(), label="strided query")
    block_rows = data.draw(st.integers(1, 512), label="block_rows")
    width = data.draw(st.integers(1, 5), label="value width")
    value_dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int8]), label="values")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    query_np = numbers(rng, (groups, n, e), integers, exponent)
    key_np = numbers(rng, (groups, k, e), integers, exponent)
    query = torch.tensor(query_np, dtype=dtype)  # empty (n = 0): strides (0, 0, 0), as NumPy's conversion makes them
    if strided:  # rows with a gap between them: only the last dimension is contiguous
        query = torch.cat([query, torch.zeros(groups, n, 3, dtype=dtype)], dim=2)[..., :e]
    key = torch.tensor(key_np, dtype=dtype)
    values = torch.tensor(rng.integers(-100, 100, (groups, k, width))).to(value_dtype)

    labels = cpu_kernels.nearest_keys(query, key, block_rows)
    gathered = cpu_kernels.nearest_values(query, key, values, block_rows)
    assert labels is not None and gathered is not None
    query64, key64 = query.double().numpy(), key.double().numpy()  # the values the kernel saw
    scores = np.einsum("gne,gke->gnk", query64, key64)
    expected = scores.argmax(-1)
    if integers or k == 1:
        clear = np.ones_like(expected, dtype=bool)  # exact scores: ties are real, to the lowest index
    else:
        ordered = np.sort(scores, axis=-1)
        size = np.abs(query64).sum(-1) * np.abs(key64).max(axis=(1, 2))[:, None]
        clear = ordered[..., -1] - ordered[..., -2] > MARGIN[dtype] * size
    labels = labels.numpy()
    assert labels.shape == (groups, n)
    assert np.array_equal(labels[clear], expected[clear])
    assert ((labels >= 0) & (labels < k)).all()
    assert gathered.dtype == values.dtype and tuple(gathered.shape) == (groups, n, width)
    assert torch.equal(gathered, torch.stack([values[g, torch.from_numpy(labels[g])] for g in range(groups)]))


def check_segment_sums(data, max_rows):
    dtype = DTYPES[data.draw(st.sampled_from(sorted(DTYPES)), label="dtype")]
    groups, rows = data.draw(st.integers(1, 3), label="groups"), data.draw(st.integers(0, max_rows), label="rows")
    width, num_codes = data.draw(st.integers(1, 6), label="width"), data.draw(st.integers(1, 10), label="num_codes")
    integers = data.draw(st.booleans(), label="integers")
    exponent = data.draw(st.integers(-100, 100) if dtype == torch.float32 else st.integers(-900, 900), label="exponent")
    masked = data.draw(st.booleans(), label="visible")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    values_np = numbers(rng, (groups, rows, width), integers, exponent)
    codes_np = rng.integers(-2, num_codes + 2, (groups, rows))  # codes outside [0, num_codes) are left out
    visible_np = rng.random((groups, rows)) < 0.7 if masked else np.ones((groups, rows), dtype=bool)
    values = torch.tensor(values_np, dtype=dtype)
    result = cpu_kernels.segment_sums(
        values, torch.from_numpy(codes_np), torch.from_numpy(visible_np) if masked else None, num_codes
    )
    assert result is not None
    sums, counts = result
    seen_values = values.double().numpy()
    expected = np.zeros((groups, num_codes, width))
    magnitude = np.zeros((groups, num_codes, width))
    expected_counts = np.zeros((groups, num_codes), dtype=np.int64)
    counted = visible_np & (codes_np >= 0) & (codes_np < num_codes)
    group_of = np.broadcast_to(np.arange(groups)[:, None], (groups, rows))[counted]
    np.add.at(expected, (group_of, codes_np[counted]), seen_values[counted])
    np.add.at(magnitude, (group_of, codes_np[counted]), np.abs(seen_values[counted]))
    np.add.at(expected_counts, (group_of, codes_np[counted]), 1)
    assert tuple(sums.shape) == (groups, num_codes, width) and tuple(counts.shape) == (groups, num_codes)
    assert np.array_equal(counts.numpy(), expected_counts)
    got = sums.double().numpy()
    assert np.isfinite(got).all()
    if integers:
        assert np.array_equal(got, expected)  # small integers times a power of two: exact in any order
    else:
        eps = np.finfo(np.float32 if dtype == torch.float32 else np.float64).eps
        assert (np.abs(got - expected) <= 4 * rows * eps * magnitude).all()


@default_run(150)
@given(st.data())
def test_compiled_nearest_fuzz(compiled, data):
    check_nearest(data, max_rows=200)


@default_run(150)
@given(st.data())
def test_compiled_segment_sums_fuzz(compiled, data):
    check_segment_sums(data, max_rows=300)


@pytest.mark.slow
@slow_run(1000)
@given(st.data())
def test_compiled_nearest_fuzz_many(compiled, data):
    check_nearest(data, max_rows=3000)


@pytest.mark.slow
@slow_run(300)
@given(st.data())
def test_compiled_segment_sums_fuzz_many(compiled, data):
    check_segment_sums(data, max_rows=40000)  # past the 32,768-row blocks summed in parallel


def test_an_empty_query_converted_from_numpy(compiled):
    """The fuzz's first finding, kept: an empty query from NumPy has strides (0, 0, 0), which the C++ check refused."""
    query = torch.tensor(np.zeros((1, 0, 2)), dtype=torch.float32)
    labels = cpu_kernels.nearest_keys(query, torch.ones(1, 3, 2), block_rows=1)
    assert tuple(labels.shape) == (1, 0)


@pytest.mark.parametrize("variant", ["lloyd", "gmm"])
def test_squared_quantities_of_data_past_the_square_root_of_the_range(variant):
    """The fuzz's first finding, kept: such data runs (rescaled), and an infinite inertia or variance is told."""
    model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=1, point_dim=1, num_iterations=0, variant=variant))
    points = torch.tensor([[1.0], [3.0]], dtype=torch.float64) * 2.0**512
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            output = model.double()(points)
        except REFUSED:
            return  # refused: an outcome the rules allow
    told = " ".join(str(warning.message) for warning in caught)
    assert torch.isfinite(output.centroids).all()
    for name in ("inertia", *VARIANTS[variant].state_names):
        assert torch.isfinite(getattr(output, name)).all() or f"The {name} of data this large" in told, name
