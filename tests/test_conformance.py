"""
The model as a transformers user meets it, in the manner of transformers' `ModelTesterMixin`: saving and loading
(sharded and not), `from_pretrained` with `dtype` and `device_map`, attention backends, hooks and nnsight, offload,
gradient checkpointing, `dummy_inputs`, `torch.compile` and remote code. Each case is compared with the independent
NumPy reference (`kmeans_transformer.reference`), or with the plain model where the reference has no counterpart.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModel

from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
from kmeans_transformer.reference import lloyd, soft_kmeans

from conftest import mixture

K, D, T = 3, 2, 4


@pytest.fixture
def points(rng):
    return mixture(rng, 120, D, K)


def plain_model(**config) -> KMeansTransformerModel:
    return KMeansTransformerModel(KMeansTransformerConfig(num_clusters=K, point_dim=D, num_iterations=T, **config)).eval()


def assert_is_lloyd(output, points, dtype=torch.float32, rtol=1e-6):
    """Labels equal to the float64 reference's, centroids equal up to the dtype's rounding."""
    expected = lloyd(points, points[:K], T)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)
    assert output.centroids.dtype == dtype
    np.testing.assert_allclose(output.centroids[0].double().numpy(), expected.centroids, rtol=rtol, atol=rtol)


def assert_same(output, other):
    assert torch.equal(output.labels, other.labels) and torch.equal(output.centroids, other.centroids)


@pytest.mark.parametrize("max_shard_size", [None, "1KB"])
def test_save_and_load_sharded_or_not(tmp_path, points, max_shard_size):
    model = plain_model()
    options = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(tmp_path / "model", **options)
    shards = sorted(path.name for path in (tmp_path / "model").glob("*.safetensors"))
    assert (len(shards) > 1) == (max_shard_size is not None)
    loaded = AutoModel.from_pretrained(tmp_path / "model")
    output = loaded(torch.tensor(points))
    assert_is_lloyd(output, points)
    assert_same(output, model(torch.tensor(points)))


@pytest.mark.parametrize("dtype", ["auto", torch.float32, torch.float64])
def test_from_pretrained_dtype(tmp_path, points, dtype):
    plain_model().save_pretrained(tmp_path / "model")
    model = AutoModel.from_pretrained(tmp_path / "model", dtype=dtype)
    expected = torch.float32 if dtype == "auto" else dtype
    assert model.dtype == expected
    assert_is_lloyd(model(torch.tensor(points)), points, expected, rtol=1e-6 if expected == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_refused_and_convert_back_exactly(tmp_path, points, dtype):
    plain = plain_model()
    plain.save_pretrained(tmp_path / "model")
    model = AutoModel.from_pretrained(tmp_path / "model", dtype=dtype)
    assert model.dtype == dtype
    with pytest.raises(ValueError, match=r"model\.float\(\)"):
        model(torch.tensor(points))
    with pytest.raises(ValueError, match=r"model\.float\(\)"):
        plain_model().to(dtype)(torch.tensor(points))
    assert_same(model.float()(torch.tensor(points)), plain(torch.tensor(points)))  # the analytic weights are exact


@pytest.mark.parametrize("offset", [0.0, 10.0, 100.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_points_are_widened_exactly(rng, offset, dtype):
    points = mixture(rng, 200, D, K) * 2.0**int(np.log2(max(offset, 1.0)) - 4) + offset
    half = torch.tensor(points).to(dtype)
    widened = half.double().numpy()  # the values the model receives
    if len(np.unique(widened, axis=0)) < K:
        pytest.skip("the points round to fewer than k distinct values")
    output = plain_model()(half)
    expected = lloyd(widened, widened[:K], T)
    np.testing.assert_array_equal(output.labels[0].numpy(), expected.labels)


def test_device_map_and_disk_offload_under_no_grad(tmp_path, points):
    plain_model().save_pretrained(tmp_path / "model")
    on_cpu = AutoModel.from_pretrained(tmp_path / "model", device_map="cpu")
    offloaded = AutoModel.from_pretrained(
        tmp_path / "model", device_map={"": "disk"}, offload_folder=str(tmp_path / "offload")
    )
    assert {parameter.device.type for parameter in offloaded.parameters()} == {"meta"}
    for model in (on_cpu, offloaded):
        assert_is_lloyd(model(torch.tensor(points)), points)


def test_softmax_backends_never_change_the_algorithm_silently(tmp_path, points):
    for implementation in ("eager", "sdpa"):
        with pytest.raises(ValueError, match="inverse_temperature"):
            plain_model(attn_implementation=implementation)
        model = plain_model()
        with pytest.raises(ValueError, match="inverse_temperature"):
            model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == "kmeans_hardmax"
        assert_is_lloyd(model(torch.tensor(points)), points)
    plain_model().save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="inverse_temperature"):
        AutoModel.from_pretrained(tmp_path / "model", attn_implementation="sdpa")
    with pytest.raises(ValueError, match="'hardmax'"):
        plain_model(attn_implementation="no_such_kernel")
    for variant in ("sparse", "kmedoids"):  # their inverse_temperature is their own: no relaxation at all
        with pytest.raises(ValueError, match="no softmax relaxation"):
            KMeansTransformerModel(KMeansTransformerConfig(num_clusters=K, variant=variant, attn_implementation="sdpa"))


def test_set_attn_implementation_keeps_exact_kernels_and_an_asked_relaxation(points):
    model = plain_model()
    for implementation in ("kmeans_hardmax_chunked", "hardmax", "kmeans_hardmax"):
        model.set_attn_implementation(implementation)
        assert_is_lloyd(model(torch.tensor(points)), points)
        maps = model(torch.tensor(points), output_attentions=True).assign_attentions
        assert len(maps) == T and all(weights is not None for weights in maps)
    gamma = 0.5
    relaxed = plain_model(inverse_temperature=gamma).double()
    x = torch.tensor(points)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        relaxed.set_attn_implementation(implementation)
        outputs[implementation] = relaxed(x, output_attentions=True)
        assert all(weights is not None for layer in outputs[implementation].attentions for weights in layer)
    torch.testing.assert_close(outputs["sdpa"].centroids, outputs["eager"].centroids, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outputs["sdpa"].assign_attentions, outputs["eager"].assign_attentions)
    # a softmax at γ on the augmented score is soft k-means' responsibility on the first layer
    first = outputs["eager"].assign_attentions[0][0, 0].numpy()
    distances = ((points[:, None, :] - points[None, :K, :]) ** 2).sum(-1)
    weights = np.exp(-gamma * (distances - distances.min(axis=1, keepdims=True)))
    np.testing.assert_allclose(first, weights / weights.sum(axis=1, keepdims=True), rtol=1e-10, atol=1e-12)


def test_soft_variant_is_the_same_under_eager_and_sdpa(points):
    outputs = []
    for implementation in ("eager", "sdpa"):
        config = KMeansTransformerConfig(
            num_clusters=K, point_dim=D, num_iterations=T, variant="soft", inverse_temperature=0.5,
            attn_implementation=implementation,
        )
        outputs.append(KMeansTransformerModel(config).double()(torch.tensor(points)))
    expected = soft_kmeans(points, points[:K], T, 0.5)
    for output in outputs:
        np.testing.assert_allclose(output.centroids[0].numpy(), expected.centroids, rtol=1e-9, atol=1e-9)


def test_a_forward_hook_on_a_block_sees_every_iteration_under_no_grad(points):
    model = plain_model()
    seen = []
    handle = model.layers[0].assign.register_forward_hook(lambda module, args, output: seen.append(output[1]))
    assert model.engine() == "tokens"
    output = model(torch.tensor(points))
    handle.remove()
    assert model.engine() == "compact"
    expected = lloyd(points, points[:K], T)
    assert len(seen) == T
    for weights, labels in zip(seen, expected.label_history, strict=True):
        np.testing.assert_array_equal(weights[0, 0].numpy(), np.eye(K)[labels])
    assert_is_lloyd(output, points)


def test_nnsight_reads_a_block_under_no_grad(points):
    nnsight = pytest.importorskip("nnsight")
    model = plain_model()
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(torch.tensor(points)):
        weights = wrapped.layers[0].assign.output[1].save()
        output = wrapped.output.save()
    np.testing.assert_array_equal(weights[0, 0].numpy(), np.eye(K)[lloyd(points, points[:K], 1).label_history[0]])
    assert_is_lloyd(output, points)


def test_gradient_checkpointing_gives_the_same_gradients(points):
    x = torch.tensor(points, dtype=torch.float64)

    def run(checkpointing):
        model = plain_model().double()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        calls = []
        model.layers[0].assign.register_forward_hook(lambda *args: calls.append(1))  # inside the checkpointed layer
        with torch.enable_grad():
            output = model(x)
            (output.centroids.square().sum() + output.inertia.sum()).backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return output, grads, len(calls)

    with pytest.warns(FutureWarning):  # transformers' own deprecation of the name
        checkpointed, checkpointed_grads, recomputed = run(True)
    plain, grads, calls = run(False)
    assert calls == T and recomputed == 2 * T  # every layer run again in the backward pass
    assert grads and grads.keys() == checkpointed_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, checkpointed_grads[name]), name
    assert_same(plain, checkpointed)
    assert_is_lloyd(plain, points, torch.float64, rtol=1e-12)


def test_dummy_inputs_and_input_embeddings():
    model = plain_model()
    inputs = model.dummy_inputs
    assert set(inputs) == {model.main_input_name}
    points = inputs["points"][0].double().numpy()
    assert_is_lloyd(model(**inputs), points)
    assert model.get_input_embeddings() is model.embeddings


def test_compiled_loops_are_custom_operators_with_fake_implementations():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 40, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    values, codes = torch.randn(2, 40, 4, generator=generator), torch.randint(-1, 5, (2, 40), generator=generator)
    operators = torch.ops.kmeans_transformer
    cases = [
        (operators.nearest_keys, (query, key, 16)),
        (operators.nearest_values, (query, key, values[:, :5].contiguous(), 16)),
        (operators.segment_sums, (values, codes, codes != 2, 5)),
    ]
    for operator, arguments in cases:
        torch.library.opcheck(operator, arguments)  # schema, fake (meta) implementation, dispatch
    labels = operators.nearest_keys(query, key, 16)
    scores = np.einsum("gne,gke->gnk", query.double().numpy(), key.double().numpy())
    np.testing.assert_array_equal(labels.numpy(), scores.argmax(-1))
    sums, counts = operators.segment_sums(values, codes, None, 5)
    for g in range(2):
        for j in range(5):
            members = codes[g].numpy() == j
            np.testing.assert_allclose(sums[g, j].numpy(), values[g].double().numpy()[members].sum(0), rtol=1e-12)
            assert counts[g, j] == members.sum()


@pytest.mark.slow
def test_torch_compile_traces_the_fast_path_for_any_number_of_points(points):
    model = plain_model()
    explanation = torch._dynamo.explain(model)(torch.tensor(points))
    # the only break: the weight comparison, run eagerly on every call so that an edited model never runs the compact
    # engine (no break at the input checks, the compiled loops or the sums)
    assert explanation.graph_break_count >= 1
    assert all("disable" in reason.reason for reason in explanation.break_reasons)
    assert {reason.user_stack[-1].name for reason in explanation.break_reasons} == {"has_analytic_weights"}
    compiled = torch.compile(model, dynamic=True)
    for n in (len(points), len(points) - 7, len(points) - 20):
        assert_same(compiled(torch.tensor(points[:n])), model(torch.tensor(points[:n])))
    assert_is_lloyd(compiled(torch.tensor(points)), points)


@pytest.mark.slow
def test_torch_export_with_a_dynamic_number_of_points(points):
    model = plain_model()
    number = torch.export.Dim("num_points", min=K, max=2**30)
    program = torch.export.export(model, (torch.tensor(points)[None],), dynamic_shapes={"points": {1: number}})
    for n in (len(points), len(points) - 11):
        exported = program.module()(torch.tensor(points[:n])[None])
        expected = lloyd(points[:n], points[:K], T)
        np.testing.assert_array_equal(exported.labels[0].numpy(), expected.labels)
        np.testing.assert_allclose(exported.centroids[0].double().numpy(), expected.centroids, rtol=1e-6)


def test_remote_code_in_a_fresh_process_refuses_sdpa_and_matches(tmp_path, points):
    model = plain_model()
    model.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "points.npy", points)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert "kmeans_transformer" not in sys.modules, "the package must not be imported"
        try:
            model.set_attn_implementation("sdpa")
        except ValueError as error:
            assert "inverse_temperature" in str(error)
        else:
            raise AssertionError("sdpa was accepted")
        with torch.no_grad():
            out = model(torch.tensor(np.load({str(tmp_path / "points.npy")!r})))
        np.save({str(tmp_path / "labels.npy")!r}, out.labels.numpy())
        np.save({str(tmp_path / "centroids.npy")!r}, out.centroids.numpy())
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    local = model(torch.tensor(points))
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), local.labels.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "centroids.npy"), local.centroids.numpy())
