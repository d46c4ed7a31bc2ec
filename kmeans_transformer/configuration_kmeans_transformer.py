# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the exact k-means transformer and its variants."""

import os
from typing import ClassVar

import torch

from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging

from .variants import PARAMETER_NAMES, VariantSpec, get_variant


logger = logging.get_logger(__name__)

# Bounds on what a config may ask for (a config.json is untrusted input): beyond them building or running the model
# would take minutes or exhaust memory. `KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG=1` in the environment lifts them.
TRUST_LARGE_CONFIG_VARIABLE = "KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG"
MAX_ITERATIONS = 10_000
MAX_SEPARATE_LAYERS = 1_000
MAX_PARAMETER_BYTES = 2**31
# Keys derived from the fields (read-only properties): accepted when they agree with the fields, refused otherwise.
DERIVED_KEYS = ("hidden_size",)
# Keys besides the fields that transformers itself writes into or reads from a config.
TRANSFORMERS_KEYS = frozenset({
    "auto_map", "model_type", "name_or_path", "_name_or_path", "_commit_hash", "torch_dtype", "num_labels",
    "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
})


class KMeansTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of a [`KMeansTransformerModel`]: a transformer whose every layer is one iteration of a clustering
    algorithm, with analytic weights.

    Points and centroids are tokens of width `hidden_size`, laid out as named slices (see
    [`KMeansTransformerConfig.token_slices`]):

    - `position` (`point_dim`): the point `x_i`, or the centroid `c_j`;
    - `code` (`num_clusters`): the point's assignment `y_i`, or the centroid's one-hot identity `e_j`;
    - `previous` (`point_dim`): for centroid tokens, the centroid entering the current iteration (0 for points);
    - `is_centroid` (1): 1 on centroid tokens, 0 on point tokens;
    - and the variant's own slots (its `VariantSpec.slots`): `"trimmed"`: `assigned` (`point_dim`, a point's assigned centroid), `distance`
      (its squared distance to it), `outlier` (1 if trimmed); `"kmedoids"`: `medoid_cost` (a point's summed
      distance to its cluster); `"gmm"`: `square_norm` (`|x_i|^2` on points), `variance` and `mixing_weight` (the
      component's `σ_j^2` and `π_j` on centroids).

    Args:
        num_clusters (`int`, *optional*, defaults to 8):
            Number of clusters `k`.
        point_dim (`int`, *optional*, defaults to 2):
            Dimension `d` of the points.
        num_iterations (`int`, *optional*, defaults to 10):
            Number of layers `T`, one clustering iteration each (alias `num_hidden_layers`). May be 0: the model then
            only assigns points to the given centroids. At most `MAX_ITERATIONS` (10,000); `forward` may be asked
            for more.
        share_layers (`bool`, *optional*, defaults to `True`):
            If `True`, one layer's weights are looped `num_iterations` times, and `forward` accepts another
            `num_iterations`; if `False`, the model holds `num_iterations` separate layers (at most
            `MAX_SEPARATE_LAYERS`, 1,000: each takes time to build).
        variant (`str`, *optional*, defaults to `"lloyd"`):
            The clustering algorithm the analytic weights realise: `"lloyd"` (k-means), `"soft"` (soft k-means),
            `"spherical"` (cosine k-means), `"trimmed"` (trimmed k-means), `"sparse"` (robust sparsemax update),
            `"kmedoids"` (k-medoids), `"gmm"` (EM for an isotropic Gaussian mixture), `"fuzzy"` (fuzzy c-means) or `"learned"` (a trainable
            layer, see docs/learning.md); each
            is declared, with its parameters, slots and blocks, in `kmeans_transformer.variants.VARIANTS`.
        inverse_temperature (`float`, *optional*):
            Stiffness `γ > 0`. `"soft"`: responsibilities `softmax_j(-γ |x_i - c_j|^2)`. `"sparse"`: the update's
            sparsemax of `-γ |x_i - c_j|^2 / sqrt(d)` (default 0.01). Gumbel `"kmedoids"`: the medoid draw's weights
            `softmax(-γ |x_i - c_j|^2)` over members. Other variants: the softmax that replaces hardmax under
            `attn_implementation="eager"` or `"sdpa"`. Defaults to 1.0 (0.01 for `"sparse"`); not used by `"gmm"`.
        trim_quantile (`float`, *optional*):
            `"trimmed"` only, in (0, 1]: a point whose squared distance to its centroid is above the `trim_quantile`
            quantile (linear interpolation) of its cluster's squared distances is trimmed. The default rule
            (0.95) unless `trim_fraction` is given.
        trim_fraction (`float`, *optional*):
            `"trimmed"` only, in [0, 1): the `floor(trim_fraction * n)` points with the largest squared distances to
            their centroids are trimmed (classic trimmed k-means).
        medoid_selection (`str`, *optional*):
            `"kmedoids"` only: `"deterministic"` (default; the member with the least summed Euclidean distance to
            the other members) or `"gumbel"` (a member drawn with weights `softmax(-γ |x_i - c_j|^2)` by Gumbel-max).
        reg_covar (`float`, *optional*):
            `"gmm"` only, >= 0: added to every re-estimated variance (scikit-learn's `reg_covar`). Defaults to 0.
        fuzzifier (`float`, *optional*):
            `"fuzzy"` only, > 1: the exponent `m` of fuzzy c-means, memberships `u_ij ∝ |x_i - c_j|^(-2/(m-1))` and
            centroids the `u^m`-weighted means. Defaults to 2.
        init_from (`str`, *optional*):
            `"learned"` only: the initial weights of the trainable layer, `"lloyd"` (default: the analytic
            construction, so the untrained model is soft k-means at γ = `inverse_temperature`) or `"random"`
            (every projection drawn as `nn.Linear` does). See docs/learning.md.
        fitted_centroids (`bool`, *optional*, defaults to `False`):
            If `True`, the model stores centroids as weights (`embeddings.fitted_centroids`, `(num_clusters,
            point_dim)`; for `"gmm"` also `embeddings.fitted_variances` and `embeddings.fitted_weights`), used when
            `forward` is given no `centroids` (variances, weights). A fitted [`KMeans`] estimator saves itself this
            way, with `num_iterations=0`, so that the model assigns new points to the fitted clusters.
        fast_hardmax (`bool`, *optional*, defaults to `True`):
            Run `"lloyd"` and `"spherical"` under the `"hardmax"` attention through the fast kernels when they apply
            (see [`KMeansTransformerModel`]): the same attention blocks on a compact state (the points, their labels
            in index form and the centroids) instead of the full tokens, in time and memory linear in the number of
            points. The labels are the dense path's; sums are taken in another order. `False` always runs the dense
            tokens.
        score_chunk_size (`int`, *optional*):
            The fast kernels hold at most this many attention scores at once (queries are processed in blocks of
            `score_chunk_size // (batch_size * num_clusters)` rows). Defaults to `2**22` on the CPU (16 MiB in
            float32) and `2**28` on accelerators (1 GiB), where fewer, larger blocks keep the device busy; the
            compact engine of a weighted assignment (soft, gmm, fuzzy) takes `2**18` on the CPU (chunks that stay
            in cache).

    Bounds. A config may come from an untrusted `config.json`, so values that would take minutes to build or run,
    or exhaust memory, are refused (`ValueError`) before anything is allocated: `num_iterations` above
    `MAX_ITERATIONS` (10,000), more than `MAX_SEPARATE_LAYERS` (1,000) separate layers, and a model whose weights
    would take more than `MAX_PARAMETER_BYTES` (2 GiB; every projection is `hidden_size x hidden_size`, about
    `15 * hidden_size^2` weights, so `num_clusters` of about 6,000 and more). Set the environment variable
    `KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG=1` to lift these bounds for a config you trust. Keys the config derives
    (`hidden_size`) are accepted only when they agree with the fields; `dtype` must name a floating-point torch dtype.

    Example:

    ```python
    >>> from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
    >>> config = KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=5)
    >>> model = KMeansTransformerModel(config)  # exactly Lloyd's algorithm, 5 iterations
    >>> KMeansTransformerConfig(num_clusters=3, variant="trimmed", trim_fraction=0.1).trim_quantile is None
    True

    ```
    """

    model_type = "kmeans_transformer"
    attribute_map: ClassVar[dict[str, str]] = {"num_hidden_layers": "num_iterations"}

    num_clusters: int = 8
    point_dim: int = 2
    num_iterations: int = 10
    share_layers: bool = True
    variant: str = "lloyd"
    inverse_temperature: float | None = None
    trim_quantile: float | None = None
    trim_fraction: float | None = None
    medoid_selection: str | None = None
    reg_covar: float | None = None
    fuzzifier: float | None = None
    init_from: str | None = None
    fitted_centroids: bool = False
    fast_hardmax: bool = True
    score_chunk_size: int | None = None

    def __post_init__(self, **kwargs):
        derived = {name: kwargs.pop(name) for name in DERIVED_KEYS if name in kwargs}
        for name in kwargs:
            attribute = getattr(type(self), name, None)
            if callable(attribute) or (isinstance(attribute, property) and attribute.fset is None):
                raise ValueError(f"`{name}` is not a field of {type(self).__name__}: it cannot be set.")
        unknown = sorted(name for name in kwargs if name not in TRANSFORMERS_KEYS and not hasattr(type(self), name))
        if unknown:
            logger.warning(f"{type(self).__name__}: the keys {unknown} are not fields; kept, but nothing reads them.")
        _check_dtype(self.dtype if self.dtype is not None else kwargs.get("torch_dtype"))
        super().__post_init__(**kwargs)
        self.validate_kmeans()
        for name, value in derived.items():
            if value != getattr(self, name):
                raise ValueError(
                    f"`{name}`={value!r} disagrees with the config: it is derived from the other fields, and is "
                    f"{getattr(self, name)} here (leave it out)."
                )

    def validate_kmeans(self):
        """
        Check every field and their combinations, raising `ValueError` naming the field and what it accepts; fill
        the variant's unset parameters with their defaults.
        """
        for name, minimum in (("num_clusters", 1), ("point_dim", 1), ("num_iterations", 0), ("score_chunk_size", 1)):
            value = getattr(self, name)
            if name == "score_chunk_size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
        for name in ("share_layers", "fitted_centroids", "fast_hardmax"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        values = get_variant(self.variant).resolve_parameters({name: getattr(self, name) for name in PARAMETER_NAMES})
        for name, value in values.items():
            setattr(self, name, value)
        self.check_size()

    def check_size(self) -> None:
        """
        Refuse (`ValueError`) a config beyond the bounds of the class docstring, before anything is built: the
        message gives the number of bytes the weights would need. `KMEANS_TRANSFORMER_TRUST_LARGE_CONFIG=1` lifts it.
        """
        if os.environ.get(TRUST_LARGE_CONFIG_VARIABLE, "") == "1":
            return
        escape = f"set {TRUST_LARGE_CONFIG_VARIABLE}=1 to build it anyway"
        if not self.share_layers and self.num_iterations > MAX_SEPARATE_LAYERS:
            raise ValueError(
                f"{self.num_iterations} separate layers (share_layers=False) is above the bound {MAX_SEPARATE_LAYERS}; "
                f"use share_layers=True (one layer looped), or {escape}."
            )
        if self.num_iterations > MAX_ITERATIONS:
            raise ValueError(
                f"`num_iterations`={self.num_iterations} is above the bound {MAX_ITERATIONS}; pass a larger "
                f"`num_iterations` to `forward` (shared layers) if you mean it, or {escape}."
            )
        count = self.variant_spec.parameter_count(self)
        itemsize = max(4, self.dtype.itemsize if isinstance(self.dtype, torch.dtype) else 4)
        if count * itemsize > MAX_PARAMETER_BYTES:
            raise ValueError(
                f"This model would hold {count:,} weights ({count * itemsize:,} bytes at {itemsize} bytes each, twice "
                f"that while it runs; hidden_size={self.hidden_size}), above the bound of {MAX_PARAMETER_BYTES:,} "
                f"bytes: every projection is hidden_size x hidden_size with hidden_size = 2 * point_dim + "
                f"num_clusters + 1 and more. Use fewer clusters, or for this many a k-means that holds no weights "
                f"(`kmeans_transformer.reference.lloyd`, scikit-learn's `KMeans`), or {escape}."
            )

    # `variant_spec` and `token_slices` are read for every block built and on every iteration: they read the fields
    # from the instance's `__dict__` (one pass through transformers' `__getattribute__`, which costs microseconds per
    # read and only redirects `attribute_map` aliases and per-layer attributes, of which this config has none).

    @property
    def variant_spec(self) -> VariantSpec:
        """The declaration of `variant` (in the form its parameters select): blocks, slots, state, capabilities."""
        fields = self.__dict__
        spec = get_variant(fields["variant"])
        if spec.form_parameter is None:
            return spec
        return _resolved_form(spec, fields[spec.form_parameter])

    @property
    def token_slices(self) -> dict[str, slice]:
        """The named slices of a token (see the class docstring), in order."""
        fields = self.__dict__
        point_dim = fields["point_dim"]
        widths = [
            ("position", point_dim),
            ("code", fields["num_clusters"]),
            ("previous", point_dim),
            ("is_centroid", 1),
        ]
        widths += self.variant_spec.slot_widths(point_dim)
        slices, start = {}, 0
        for name, width in widths:
            slices[name] = slice(start, start + width)
            start += width
        return slices

    @property
    def hidden_size(self) -> int:
        """Width of every token: `2 * point_dim + num_clusters + 1` plus the variant's own slots."""
        return max(s.stop for s in self.token_slices.values())


_FORMS: dict[tuple[int, object], tuple[VariantSpec, VariantSpec]] = {}


def _resolved_form(spec: VariantSpec, value) -> VariantSpec:
    """`spec.resolve` for the form parameter's `value`, made once per spec and value (kept with the spec it came from)."""
    try:
        key = (id(spec), value)
        kept = _FORMS.get(key)
    except TypeError:  # an unhashable value: the spec's own check names it
        return spec.resolve({spec.form_parameter: value})
    if kept is None or kept[0] is not spec:
        kept = _FORMS[key] = (spec, spec.resolve({spec.form_parameter: value}))
    return kept[1]


def _check_dtype(value) -> None:
    """`dtype` (or `torch_dtype`) of a config: None, or a floating-point torch dtype or its name."""
    if value is None:
        return
    candidate = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(candidate, torch.dtype) or not candidate.is_floating_point:
        raise ValueError(f"`dtype` must name a floating-point torch dtype ('float32', 'float64', ...), got {value!r}.")


__all__ = ["KMeansTransformerConfig"]
