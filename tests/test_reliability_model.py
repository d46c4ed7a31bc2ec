"""
Regression tests for the model-side findings of the reliability issue (3, 4, 5, 12, 13, 14, 15): valid calls that were
refused, out-of-range data, float32 sums, corrupt checkpoints, untrusted configs, oversized models, and inputs.
Each test checks against an independent expectation (NumPy loops, the references, closed forms, scikit-learn).
"""

import json
import math
import time
import warnings
from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.cluster import KMeans as SklearnKMeans

from kmeans_transformer import KMeans, KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer import reference

from conftest import make_model


def _blobs(seed=0, per_cluster=20, dtype=np.float64):
    """Three well separated clusters in the plane (no ambiguous label), and the first point of each as centroids."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    points = np.concatenate([centre + rng.normal(size=(per_cluster, 2)) for centre in centres]).astype(dtype)
    return points, points[[0, per_cluster, 2 * per_cluster]].copy()


def _nearest(points, centroids):
    """Lloyd's assignment by a NumPy loop: the first nearest centroid of each point."""
    return np.array([int(np.argmin([((p - c) ** 2).sum() for c in centroids])) for p in points])


# ---------------------------------------------------------------------------------------------------------------------
# Finding 3: an assignment to given or fitted centroids (num_iterations=0) needs one point, not k.
# ---------------------------------------------------------------------------------------------------------------------


def test_finding_3_assignment_to_given_centroids_accepts_fewer_points_than_clusters():
    points, centroids = _blobs()
    model = make_model(3, 2, 4)
    output = model(torch.tensor(points[:1]), centroids=torch.tensor(centroids), num_iterations=0)
    assert output.labels.tolist() == [_nearest(points[:1], centroids).tolist()]
    # a padded batch whose second problem has a single real point
    batch = torch.tensor(np.stack([points[:5], points[20:25]]))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    output = model(batch, centroids=torch.tensor(centroids), attention_mask=mask, num_iterations=0)
    assert output.labels[1].tolist() == [1, -1, -1, -1, -1]
    # iterating still needs k points per problem, and so do default centroids (the first k points)
    with pytest.raises(ValueError, match="at least k points"):
        model(torch.tensor(points[:2]), centroids=torch.tensor(centroids), num_iterations=1)
    with pytest.raises(ValueError, match="at least k points"):
        model(torch.tensor(points[:2]), num_iterations=0)

    # the estimator assigns with num_iterations=0
    fitted = KMeans(3, random_state=0).fit(points)
    centers = fitted.cluster_centers_
    assert fitted.predict(points[:1]).tolist() == _nearest(points[:1], centers).tolist()
    labels = _nearest(points[:2], centers)
    assert fitted.score(points[:2]) == pytest.approx(-((points[:2] - centers[labels]) ** 2).sum(), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Finding 4: data whose squared norms overflow or underflow is rescaled by a power of two (equivariant variants),
# normalised at any scale (spherical), or refused with the range (variants with a parameter in units of the data).
# ---------------------------------------------------------------------------------------------------------------------

SCALES = {torch.float32: (2.0**64, 2.0**-84), torch.float64: (2.0**540, 2.0**-1000)}  # ~1.8e19, 5e-26; 3.6e162, 1e-301
RESCALED_VARIANTS = ("lloyd", "trimmed", "kmedoids", "gmm", "fuzzy")


def _run(model, points, centroids, warned=None, **kwargs):
    """The model on `points` from `centroids`; the messages of its warnings appended to `warned`."""
    dtype = model.dtype
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = model(torch.tensor(points, dtype=dtype), centroids=torch.tensor(centroids, dtype=dtype), **kwargs)
    if warned is not None:
        warned.extend(str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning))
    return output


def _rounded(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype` (inf where it overflows, 0 where it underflows): what a model output can hold."""
    return torch.tensor(value, dtype=torch.float64).to(dtype).item()


def _assert_scaled(actual, expected, scale, dtype, tolerance, name, warned):
    """
    `actual` (an output on scaled data) against the reference's `expected` times `scale**2`, as `dtype` holds it; a
    value past the dtype's largest number is inf, and said so in a warning naming it.
    """
    for value, reference_value in zip(np.atleast_1d(actual), np.atleast_1d(expected)):
        target = _rounded(float(reference_value) * scale * scale, dtype)
        if target == 0 or math.isinf(target):
            assert float(value) == target
            assert not math.isinf(target) or any(name in message for message in warned)
        else:
            assert float(value) == pytest.approx(target, rel=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", RESCALED_VARIANTS)
def test_finding_4_out_of_range_data_is_rescaled_exactly(variant, dtype):
    points, centroids = _blobs(dtype=np.float32)  # float32 values: exact in both dtypes, and scaled exactly
    points, centroids = points.astype(np.float64), centroids.astype(np.float64)
    model = make_model(3, 2, 4, dtype=dtype, variant=variant)
    expected = model.config.variant_spec.run_reference(model.config, points, centroids)
    in_range = _run(model, points, centroids)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    for scale in SCALES[dtype]:
        warned = []
        output = _run(model, points * scale, centroids * scale, warned)
        assert output.labels[0].tolist() == expected.labels.tolist()
        scaled_back = output.centroids.double().numpy() / scale
        np.testing.assert_allclose(scaled_back[0], expected.centroids, rtol=tolerance, atol=1e-12)
        # the same data scaled into range gives the same numbers, scaled (gmm: up to rounding, its log-density sees
        # log(variance) of the rescaled data)
        if variant == "gmm":
            np.testing.assert_allclose(scaled_back, in_range.centroids.double().numpy(), rtol=tolerance)
        else:
            np.testing.assert_array_equal(scaled_back, in_range.centroids.double().numpy())
        _assert_scaled(output.inertia[0].item(), expected.inertia, scale, dtype, tolerance, "inertia", warned)
        if expected.variances is not None:
            _assert_scaled(output.variances[0].numpy(), expected.variances, scale, dtype, tolerance, "variances", warned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_finding_4_engines_agree_and_spherical_works_at_any_scale(dtype):
    points, centroids = _blobs(dtype=np.float32)
    points, centroids = points.astype(np.float64), centroids.astype(np.float64)
    lloyd = reference.lloyd(points, centroids, 4)
    spherical = reference.spherical_kmeans(points + 0.5, centroids + 0.5, 4)  # no point at the origin
    fast, spherical_model = make_model(3, 2, 4, dtype=dtype), make_model(3, 2, 4, dtype=dtype, variant="spherical")
    for scale in SCALES[dtype]:
        compact = _run(fast, points * scale, centroids * scale, [])
        tokens = _run(fast, points * scale, centroids * scale, [], output_hidden_states=True)
        assert fast.engine() == "compact"
        assert compact.labels[0].tolist() == tokens.labels[0].tolist() == lloyd.labels.tolist()
        output = _run(spherical_model, (points + 0.5) * scale, (centroids + 0.5) * scale, [])
        assert output.labels[0].tolist() == spherical.labels.tolist()
        np.testing.assert_allclose(output.centroids[0].double().numpy(), spherical.centroids, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "variant, parameters",
    [("soft", {}), ("sparse", {}), ("kmedoids", {"medoid_selection": "gumbel"}), ("gmm", {"reg_covar": 1e-6})],
)
def test_finding_4_scale_dependent_variants_refuse_out_of_range_data(variant, parameters):
    points, centroids = _blobs(dtype=np.float32)
    model = make_model(3, 2, 2, dtype=torch.float32, variant=variant, **parameters)
    for scale in SCALES[torch.float32]:
        with pytest.raises(ValueError, match=r"outside \[.*\].*units of the data"):
            _run(model, points * scale, centroids * scale)


# ---------------------------------------------------------------------------------------------------------------------
# Finding 5: float32 centroid sums and the inertia accumulate in float64.
# ---------------------------------------------------------------------------------------------------------------------


def test_finding_5_float32_mean_of_a_million_equal_values_keeps_its_digits():
    points = torch.full((1_000_000, 1), 0.1, dtype=torch.float32)
    model = make_model(1, 1, 1, dtype=torch.float32)
    sklearn_inertia = SklearnKMeans(n_clusters=1, n_init=1, random_state=0).fit(points.numpy()).inertia_
    for extra in ({}, {"output_hidden_states": True}):  # the compact engine, then the tokens' hardmax update
        output = model(points, **extra)
        assert model.engine(output_hidden_states=bool(extra)) == ("tokens" if extra else "compact")
        # closed form: the mean of equal values is that value, at distance 0 from every point
        assert output.centroids.item() == np.float32(0.1)
        assert output.inertia.item() == 0.0 and output.inertia.item() <= sklearn_inertia


def test_finding_5_float32_centroids_and_inertia_round_the_float64_sums():
    rng = np.random.default_rng(1)
    centroids = np.array([[1000.0, 1000.0, 1000.0], [1030.0, 1000.0, 1000.0]])  # far from 0: float32 sums would drift
    points = (centroids[rng.integers(2, size=200_000)] + rng.normal(size=(200_000, 3))).astype(np.float32)
    labels = _nearest(points[:1000].astype(np.float64), centroids)  # spot check of the assignment below
    model = make_model(2, 3, 1, dtype=torch.float32)
    for extra in ({}, {"output_hidden_states": True}):  # the compact engine, then the tokens' hardmax update
        initial = torch.tensor(centroids, dtype=torch.float32)
        # the tokens' scores 1.7e3 from the origin round by 2^-24 (3500)^2 ~ 0.7: 0.0033 of the labels' scale 30^2 / 4
        expected_warning = pytest.warns(RuntimeWarning, match="far from the origin") if extra else nullcontext()
        with expected_warning:
            output = model(torch.tensor(points), centroids=initial, final_assignment=False, **extra)
        assigned = output.labels[0].numpy()
        assert assigned[:1000].tolist() == labels.tolist()
        means = np.stack([points[assigned == j].astype(np.float64).mean(axis=0) for j in range(2)])
        np.testing.assert_array_equal(output.centroids[0].numpy(), means.astype(np.float32))
        exact = sum(
            ((points[assigned == j].astype(np.float64) - output.centroids[0, j].double().numpy()) ** 2).sum()
            for j in range(2)
        )
        assert output.inertia.item() == pytest.approx(exact, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Finding 12: corrupt checkpoints are refused at load (and an edited weight at the first forward).
# ---------------------------------------------------------------------------------------------------------------------


def _save(model, directory):
    model.save_pretrained(directory)
    return directory / "model.safetensors"


def test_finding_12_non_finite_or_missing_weights_are_refused(tmp_path):
    points, centroids = _blobs()
    weights = _save(make_model(3, 2, 2), tmp_path / "nan")
    tensors = load_file(weights)
    tensors["assignment_head.assign.k_proj.weight"][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="assignment_head.assign.k_proj.weight"):
        KMeansTransformerModel.from_pretrained(tmp_path / "nan")

    fitted = make_model(3, 2, 0, fitted_centroids=True)
    fitted.set_fitted_parameters(torch.tensor(centroids))
    weights = _save(fitted, tmp_path / "fitted")
    reloaded = KMeansTransformerModel.from_pretrained(tmp_path / "fitted")  # complete: loads, assigns as NumPy does
    assert reloaded(torch.tensor(points)).labels[0].tolist() == _nearest(points, centroids).tolist()
    tensors = load_file(weights)
    del tensors["embeddings.fitted_centroids"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="fitted_centroids"):
        KMeansTransformerModel.from_pretrained(tmp_path / "fitted")

    edited = make_model(3, 2, 2)
    edited.assignment_head.assign.k_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="assignment_head.assign.k_proj.weight"):
        edited(torch.tensor(points))


# ---------------------------------------------------------------------------------------------------------------------
# Finding 13: untrusted configs are bounded, and bad keys give a ValueError.
# ---------------------------------------------------------------------------------------------------------------------


def test_finding_13_untrusted_config_values_are_bounded_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG", raising=False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="num_iterations"):
        KMeansTransformerConfig(num_iterations=10**9)
    with pytest.raises(ValueError, match="separate layers"):
        KMeansTransformerConfig(num_iterations=10**6, share_layers=False)
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG", "1")
    assert KMeansTransformerConfig(num_iterations=10**9).num_iterations == 10**9  # the escape hatch
    monkeypatch.delenv("KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG")

    make_model(3, 2, 2).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    original = json.loads(path.read_text())
    bad_keys = (({"hidden_size": 99}, "hidden_size"), ({"dtype": "bogus"}, "dtype"), ({"dtype": "int64"}, "dtype"))
    for extra, match in bad_keys:
        path.write_text(json.dumps({**original, **extra}))
        with pytest.raises(ValueError, match=match):
            KMeansTransformerModel.from_pretrained(tmp_path / "ckpt")
    path.write_text(json.dumps({**original, "hidden_size": 2 * 2 + 3 + 1}))  # the derived value: consistent, loads
    assert KMeansTransformerModel.from_pretrained(tmp_path / "ckpt").config.hidden_size == 8


# ---------------------------------------------------------------------------------------------------------------------
# Finding 14: a model too large to hold is refused up front, with the bytes it would need.
# ---------------------------------------------------------------------------------------------------------------------


def _lloyd_weights(k, d):
    """Closed form of the weights of a shared-layer Lloyd model: every block's q, k, v, o projections and embeddings."""
    h = 2 * d + k + 1
    attention = lambda query_key_dim: 2 * query_key_dim * h + 2 * h * h  # noqa: E731
    layer = attention(1) + attention(d) + attention(1) + attention(k)  # point erase, assign, centroid erase, update
    return (d + k) * h + layer + attention(1) + attention(d)  # embeddings, one layer, the assignment head


def test_finding_14_oversized_models_are_refused_before_allocating(monkeypatch):
    monkeypatch.delenv("KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG", raising=False)
    small = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=5, point_dim=3))
    assert sum(p.numel() for p in small.parameters()) == _lloyd_weights(5, 3)  # the closed form counts right
    for k in (8000, 20000):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=f"{_lloyd_weights(k, 2) * 4:,} bytes") as error:
            KMeansTransformerModel(KMeansTransformerConfig(num_clusters=k, point_dim=2))
        assert "fewer clusters" in str(error.value) and time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------------------------------
# Finding 15: tables, lists and numpy scalars are inputs; a complex mask and a misspelled keyword are errors.
# ---------------------------------------------------------------------------------------------------------------------


def test_finding_15_inputs_from_pandas_lists_and_numpy_and_bad_keywords():
    points, centroids = _blobs()
    expected = reference.lloyd(points, centroids, 3).labels.tolist()
    model = make_model(3, 2, 5)
    frame = pd.DataFrame(points, columns=["x", "y"])
    assert model(frame, centroids=pd.DataFrame(centroids), num_iterations=np.int64(3)).labels[0].tolist() == expected
    mask = pd.Series(np.ones(len(points), dtype=bool))
    output = model(points.tolist(), centroids=centroids.tolist(), attention_mask=mask, num_iterations=3)
    assert output.labels[0].tolist() == expected
    with pytest.raises(ValueError, match="complex"):
        model(points, attention_mask=torch.ones(1, len(points), dtype=torch.complex64))
    for keyword, right in (("attention_masks", "attention_mask"), ("num_iteration", "num_iterations")):
        with pytest.raises(TypeError, match=f"`{keyword}`.*`{right}`"):
            model(points, **{keyword: None})
    # transformers' own flags still pass
    assert len(model(points, output_attentions=True, output_hidden_states=True, return_dict=True).hidden_states) == 6
