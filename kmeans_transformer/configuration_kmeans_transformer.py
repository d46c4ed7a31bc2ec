# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the exact k-means transformer and its variants."""

from typing import ClassVar

from transformers.configuration_utils import PreTrainedConfig

from .variants import PARAMETER_NAMES, VariantSpec, get_variant


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
            only assigns points to the given centroids.
        share_layers (`bool`, *optional*, defaults to `True`):
            If `True`, one layer's weights are looped `num_iterations` times, and `forward` accepts another
            `num_iterations`; if `False`, the model holds `num_iterations` separate layers.
        variant (`str`, *optional*, defaults to `"lloyd"`):
            The clustering algorithm the analytic weights realise: `"lloyd"` (k-means), `"soft"` (soft k-means),
            `"spherical"` (cosine k-means), `"trimmed"` (trimmed k-means), `"sparse"` (robust sparsemax update),
            `"kmedoids"` (k-medoids), `"gmm"` (EM for an isotropic Gaussian mixture) or `"fuzzy"` (fuzzy c-means); each
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
            float32) and `2**28` on accelerators (1 GiB), where fewer, larger blocks keep the device busy.

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
    fitted_centroids: bool = False
    fast_hardmax: bool = True
    score_chunk_size: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_kmeans()

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

    @property
    def variant_spec(self) -> VariantSpec:
        """The declaration of `variant` (in the form its parameters select): blocks, slots, state, capabilities."""
        return get_variant(self.variant).resolve({name: getattr(self, name) for name in PARAMETER_NAMES})

    @property
    def token_slices(self) -> dict[str, slice]:
        """The named slices of a token (see the class docstring), in order."""
        widths = [
            ("position", self.point_dim),
            ("code", self.num_clusters),
            ("previous", self.point_dim),
            ("is_centroid", 1),
        ]
        widths += self.variant_spec.slot_widths(self.point_dim)
        slices, start = {}, 0
        for name, width in widths:
            slices[name] = slice(start, start + width)
            start += width
        return slices

    @property
    def hidden_size(self) -> int:
        """Width of every token: `2 * point_dim + num_clusters + 1` plus the variant's own slots."""
        return max(s.stop for s in self.token_slices.values())


__all__ = ["KMeansTransformerConfig"]
