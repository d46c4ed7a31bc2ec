# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
The blocks of the k-means transformer: the four attention blocks of one iteration, their variants, and the
feed-forward blocks some variants add. Each block that holds projections says how they realise the construction in
`analytic_projections`, which `KMeansTransformerPreTrainedModel._init_weights` writes into its `nn.Linear`s. The update
blocks also expose the iteration as sufficient statistics (`accumulate`, `finalize`), which the compact engine and
points mode run. Which blocks a variant uses is declared in `variants.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import cpu_kernels
from .attention import (
    KERNEL_ALIASES,
    KMEANS_ATTENTION_FUNCTIONS,
    augment_for_negative_squared_distance,
    augment_for_squared_distance,
    attention_functions,
    chunked_hardmax_attention_forward,
    code_sums,
    eager_attention_forward,
    fuzzy_weights,
    gaussian_log_density_key,
    hardmax_attention_forward,
    softmax_weights,
    sparsemax_projection,
    squared_distance_key,
    squared_distances,
    unit_normalize,
)

if TYPE_CHECKING:  # the config imports the variants, which import these blocks
    from .configuration_kmeans_transformer import KMeansTransformerConfig


# The kernels that compute an argmax block exactly (the others relax it to a softmax, or are other kernels).
EXACT_ARGMAX_KERNELS = (hardmax_attention_forward, chunked_hardmax_attention_forward)


def _projection(out_features: int, in_features: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.zeros(out_features, in_features), (torch.zeros(out_features) if bias else None)


def tag_analytic(module: nn.Module, *names: str) -> None:
    """Mark `module`'s `nn.Linear`s as analytic: `_init_weights` reads them from `type(module).analytic_projections`."""
    for name in names:
        getattr(module, name).analytic_key = (type(module), name)



class KMeansTransformerAttention(nn.Module):
    """
    One-head attention with `q_proj`, `k_proj`, `v_proj` and `o_proj`. Subclasses fix which tokens attend to which,
    the analytic projections, and the kernel: `attention_function = None` is an argmax block that runs the model's
    `config._attn_implementation` (exact `"hardmax"` by default, softmax at `γ` under `"eager"`/`"sdpa"`);
    `"softmax"` is the model's softmax kernel (`"eager"` when the model runs `"kmeans_hardmax"`); any other name is a kernel
    registered with transformers' `AttentionInterface`, used whatever the model's implementation.
    """

    attention_function: str | None = None
    hardmax_ties = "average"  # read by `hardmax_attention_forward`
    query_bias = False
    key_bias = False
    value_bias = False
    output_bias = False

    @staticmethod
    def query_key_dim(config: KMeansTransformerConfig) -> int:
        """Width of the projected queries and keys (before `prepare_query_key`)."""
        return 1

    @staticmethod
    def attention_scaling(config: KMeansTransformerConfig) -> float:
        """The `scaling` of the scores: `γ` (1 where the variant has none)."""
        return config.inverse_temperature or 1.0

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.scaling = self.attention_scaling(config)
        self.is_causal = False
        width, head_dim = config.hidden_size, self.query_key_dim(config)
        self.q_proj = nn.Linear(width, head_dim, bias=self.query_bias)
        self.k_proj = nn.Linear(width, head_dim, bias=self.key_bias)
        self.v_proj = nn.Linear(width, width, bias=self.value_bias)
        self.o_proj = nn.Linear(width, width, bias=self.output_bias)
        tag_analytic(self, "q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def analytic_projections(cls, config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Zero query, key and value maps, identity output map; subclasses set what differs."""
        width, head_dim = config.hidden_size, cls.query_key_dim(config)
        return {
            "q_proj": _projection(head_dim, width, cls.query_bias),
            "k_proj": _projection(head_dim, width, cls.key_bias),
            "v_proj": _projection(width, width, cls.value_bias),
            "o_proj": (torch.eye(width), torch.zeros(width) if cls.output_bias else None),
        }

    @classmethod
    def parameter_count(cls, config: KMeansTransformerConfig) -> int:
        """The number of weights this block holds for `config`, from the shapes alone (nothing is allocated)."""
        width, head_dim = config.hidden_size, cls.query_key_dim(config)
        biases = head_dim * (cls.query_bias + cls.key_bias) + width * (cls.value_bias + cls.output_bias)
        return 2 * head_dim * width + 2 * width * width + biases

    def prepare_query_key(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return query, key

    def attention_interface(self, need_weights: bool = False) -> Callable:
        """
        The kernel: `attention_function`, or the model's implementation for an argmax block. The `"softmax"` blocks
        of a `"hardmax"` model run `"sdpa"` (the fused kernels, on the augmented queries and keys) unless their
        weights are asked for, which only `"eager"` returns.
        """
        name, implementation = self.attention_function, self.config._attn_implementation
        if name is None:
            name = implementation
        elif name == "softmax" and attention_functions().get(implementation) in EXACT_ARGMAX_KERNELS:
            name = "eager" if need_weights else "sdpa"
        elif name == "softmax":
            name = implementation
        if need_weights:  # the kernels that return no weights give way to the dense kernel of the same weights
            dense = {"sdpa": "eager", "kmeans_hardmax_chunked": "kmeans_hardmax"}
            name = dense.get(KERNEL_ALIASES.get(name, name), name)
        return attention_functions().get_interface(name, eager_attention_forward)

    def forward(
        self,
        query_states: torch.Tensor,
        key_value_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        `(batch, q_len, D)` attends to `(batch, kv_len, D)`; returns `(batch, q_len, D)` and the weights. A query
        that sees no key gets a zero output whatever the kernel. `key_weights` `(batch, kv_len)` (in `kwargs`): the
        multiplicity of each key (the sample weights; see `attention.py`), passed to this package's kernels and
        turned into the additive mask `log w_j` for another softmax kernel (`"sdpa"`).
        """
        query = self.q_proj(query_states).unsqueeze(1)
        key = self.k_proj(key_value_states).unsqueeze(1)
        value = self.v_proj(key_value_states).unsqueeze(1)
        query, key = self.prepare_query_key(query, key)
        interface = self.attention_interface(need_weights)
        kernel_mask = attention_mask
        ours = (*KMEANS_ATTENTION_FUNCTIONS.values(), eager_attention_forward)
        if kwargs.get("key_weights") is not None and interface not in ours:
            key_weights = kwargs.pop("key_weights")[:, None, None, :].to(query.dtype)
            visible = key_weights > 0 if attention_mask is None else attention_mask & (key_weights > 0)
            log_weights = torch.log(key_weights.clamp(min=torch.finfo(query.dtype).tiny))
            kernel_mask = torch.where(visible, log_weights, -torch.inf)
        attn_output, attn_weights = interface(
            self, query, key, value, kernel_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        attn_output = attn_output.reshape(*query_states.shape[:-1], -1)
        if attention_mask is not None:
            sees_a_key = attention_mask.any(dim=-1).expand(attn_output.shape[0], 1, -1).transpose(1, 2)
            attn_output = attn_output.masked_fill(~sees_a_key, 0.0)
        return self.o_proj(attn_output), attn_weights


class KMeansTransformerErase(KMeansTransformerAttention):
    """
    Every token attends only to itself (a diagonal mask). Its value subtracts the slices in `erased_slices` and moves
    each slice of `moved_slices` into its target (clearing the target first), so after the residual those slices
    are 0 and the targets hold what they held. Slices the variant has not got are skipped. Evaluated as windows of one
    token, so the cost is linear in the number of tokens; a single visible key has weight 1 under every kernel.
    Weights are returned as `(batch, 1, seq_len, 1)`.
    """

    moved_slices: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def erased_slots(config) -> tuple[str, ...]:
        """The slots this block clears, read from the config's token layout."""
        return ()

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        value, slices = projections["v_proj"][0], config.token_slices
        for name in cls.erased_slots(config):
            value[slices[name], slices[name]] = -torch.eye(slices[name].stop - slices[name].start)
        for source, target in cls.moved_slices:
            identity = torch.eye(slices[source].stop - slices[source].start)
            value[slices[source], slices[source]] = -identity
            value[slices[target], slices[source]] = identity
            value[slices[target], slices[target]] = -identity
        return projections

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, width = hidden_states.shape
        windows = hidden_states.reshape(batch_size * seq_len, 1, width)
        attn_output, attn_weights = super().forward(windows, windows, None, **kwargs)
        if attn_weights is not None:
            attn_weights = attn_weights.reshape(batch_size, 1, seq_len, 1)
        return attn_output.reshape(batch_size, seq_len, width), attn_weights


class KMeansTransformerPointErase(KMeansTransformerErase):
    """
    Block 1. Point `i` attends to itself; its value subtracts the assignment `y_i` and the variant's per-iteration
    point slots (the slots its variant declares with `erased_by="point_erase"`), so after the residual `p_i = [x_i ;
    0 ; ...]`.
    """

    @staticmethod
    def erased_slots(config):
        return ("code", *config.variant_spec.erased_slots("point_erase"))


class KMeansTransformerCentroidErase(KMeansTransformerErase):
    """
    Block 3. Centroid `j` attends to itself; its value moves `c_j` from the position slice into `previous` (and
    clears the slots its variant declares with `erased_by="centroid_erase"`), so after the residual `q_j = [0 ; e_j ;
    c_j ; 1 ; ...]`.
    """

    moved_slices = (("position", "previous"),)

    @staticmethod
    def erased_slots(config):
        return config.variant_spec.erased_slots("centroid_erase")


class KMeansTransformerPositionAttention(KMeansTransformerAttention):
    """Attention whose query and key maps read the position slice: `q_proj(p_i) = x_i`, `k_proj(t) = ` t's position."""

    @staticmethod
    def query_key_dim(config):
        return config.point_dim

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        position = config.token_slices["position"]
        projections["q_proj"][0][:, position] = torch.eye(config.point_dim)
        projections["k_proj"][0][:, position] = torch.eye(config.point_dim)
        return projections


class KMeansTransformerAssign(KMeansTransformerPositionAttention):
    """
    Block 2, cross-attention from points to centroids. Query `[x_i ; 1]`, key `[2 c_j ; -|c_j|^2]` (built by
    `augment_for_squared_distance` from `q_proj(p_i) = x_i` and `k_proj(q_j) = c_j`), score `γ (|x_i|^2 - |x_i -
    c_j|^2)`; value `[0 ; e_j ; ...]`. Under hardmax, ties go to the lowest cluster index, so after the residual `p_i =
    [x_i ; e_a(i) ; ...]` with `a(i)` Lloyd's argmin. Padded points attend to nothing. Weights `(batch, 1, n, k)`.
    """

    hardmax_ties = "first"

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        code = config.token_slices["code"]
        projections["v_proj"][0][code, code] = torch.eye(config.num_clusters)
        return projections

    def prepare_query_key(self, query, key):
        return augment_for_squared_distance(query, key)

    def forward(self, point_states, centroid_states, point_mask, **kwargs):
        """`point_states` `(batch, n, D)`, `centroid_states` `(batch, k, D)`, `point_mask` `(batch, n)` bool."""
        attention_mask = point_mask[:, None, :, None].expand(-1, 1, -1, centroid_states.shape[1])
        return super().forward(point_states, centroid_states, attention_mask, **kwargs)

    def compact_query_key(self, point_tokens: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The fast path's queries and keys: the compact point token `[x_i ; 1]` is already the augmented query of
        `augment_for_squared_distance`, and the key is its `[2 c_j ; -|c_j|^2]`.
        """
        return point_tokens, squared_distance_key(centroids)

    def assign_labels(self, point_tokens: torch.Tensor, centroids: torch.Tensor, point_mask: torch.Tensor) -> torch.LongTensor:
        """
        The fast path: this block on the compact state, for the analytic weights (`q_proj(p_i) = x_i`, `k_proj(q_j) =
        c_j`). The same queries and keys through the `"kmeans_hardmax_chunked"` kernel, with the value `v_j = j`, the index
        form of the code `e_j`, so the output is the label `a(i)` itself. Compact point tokens `[x_i ; 1]` `(batch,
        n, d + 1)` and centroids `(batch, k, d)` -> labels `(batch, n)`, -1 for padded points (`point_mask` None:
        every point is real).
        """
        batch_size, num_clusters = centroids.shape[:2]
        query, key = self.compact_query_key(point_tokens, centroids)
        codes = torch.arange(num_clusters, device=centroids.device)[None, None, :, None].expand(batch_size, 1, -1, -1)
        attention_mask = None if point_mask is None else point_mask[:, None, :, None]
        labels, _ = attention_functions()["kmeans_hardmax_chunked"](
            self, query.unsqueeze(1), key.unsqueeze(1), codes, attention_mask
        )
        labels = labels[..., 0, 0]
        return labels if point_mask is None else labels.masked_fill(~point_mask, -1)

    def compact_query_key_weights(self, point_tokens: torch.Tensor, parameters: dict[str, torch.Tensor], query=None):
        """
        A weighted assign's query and key on the compact state: `q_proj(p_i) = x_i`, `k_proj(q_j) = c_j`, prepared.
        `query`: this block's `compact_query_weights(point_tokens)` when already made (it depends on the points alone).
        """
        made, key = self.compact_query_key(point_tokens, parameters["centroids"])
        return (made if query is None else query), key

    def compact_query_weights(self, point_tokens: torch.Tensor) -> torch.Tensor:
        """The query of `compact_query_key_weights`, a function of the points alone (made once for all the layers)."""
        return self.compact_query_key(point_tokens, point_tokens[:, :0, :-1])[0]

    def compact_rows(self, batch_size: int, device: torch.device) -> int:
        """
        Points per chunk of `compact_weights`: `score_chunk_size` numbers, one per (point, cluster) pair; by default
        `2**18` on the CPU (a chunk's few `(m, k)` passes stay in cache) and `2**28` on accelerators.
        """
        budget = self.config.score_chunk_size or (2**18 if device.type == "cpu" else 2**28)
        return max(1, budget // max(1, batch_size * self.config.num_clusters))

    def compact_weights(self, point_tokens: torch.Tensor, parameters: dict[str, torch.Tensor], point_mask: torch.Tensor):
        """
        A weighted assign (`update.assignment_kind == "weights"`) on the compact state, for a chunk of compact point
        tokens `[x_i ; 1]` `(batch, m, d + 1)` and the parameters (`centroids` `(batch, k, d)`, the carried state):
        the weights of the block's own kernel on the same queries and keys (`compact_memberships`), which are the
        assignment slot `y_i` itself (the value is `e_j`), `(batch, m, k)`; zero rows where `point_mask` `(batch, m)` is False (None:
        every point is real).
        """
        query, key = self.compact_query_key_weights(point_tokens, parameters)
        weights = self.compact_memberships(query, key)
        return weights if point_mask is None else weights.masked_fill_(~point_mask[..., None], 0.0)

    def compact_memberships(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """
        The block's kernel's weights on prepared queries `(batch, m, w)` and keys `(batch, k, w)`, every key
        visible, without the values `e_j` (the weights are the assignment): the softmax rule of `"softmax"` on the
        scores of one GEMM.
        """
        scores = torch.matmul(query, key.transpose(-1, -2))
        return softmax_weights(scores if self.scaling == 1 else scores.mul_(self.scaling))

    def compact_membership_rule(self) -> dict:
        """
        `compact_memberships`' rule for the compiled pass (`cpu_kernels.membership_sums`) on the same queries and
        keys, whose first `d` query coordinates are the point `x_i`: here the softmax of `scaling · q_i.key_j`.
        """
        return {"rule": "softmax", "scaling": self.scaling}

    def expanded_score_scales(self, parameters: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """
        The factor `a_j` `(batch, k)` of `-a_j |x_i - c_j|^2` in each key's score, in the units in which the block's
        rule reads the scores, when the score is the dot product of `compact_query_key` (`|x_i - c_j|^2` expanded into
        `|x_i|^2 - 2 x_i.c_j + |c_j|^2`, whose rounding grows with `a_j (|x_i| + |c_j|)^2`, not with the score;
        `expanded_score_rounding`). None where the scores are taken from the differences, or are not distances
        (nothing cancels).

        Hardmax reads only which score is largest, at any positive scale: here the units are those at which labels
        are decided, `a_j = 4 / s_j^2`, `s_j` the distance from `c_j` to its nearest other centroid (the score gap
        `2 t s_j` of a point `t` from their bisector is `s_j^2 / 4` at `t = s_j / 8`), so that a rounding of
        `EXPANDED_SCORE_TOLERANCE` moves only points within `2^-15 s_j` of a bisector. 0 for a key with no other
        centroid or one that another repeats (a tie that no precision decides).
        """
        centroids = parameters["centroids"].detach().to(torch.float64)
        if centroids.shape[1] < 2:
            return centroids.new_zeros(centroids.shape[:2])
        separations = torch.cdist(centroids, centroids).diagonal_scatter(
            centroids.new_full(centroids.shape[:2], math.inf), dim1=-2, dim2=-1
        ).amin(dim=-1)
        scales = 4 / (separations * separations)
        return torch.where(separations > 0, scales, torch.zeros_like(scales))


class KMeansTransformerSoftAssign(KMeansTransformerAssign):
    """`"soft"`: the assign block under softmax at `γ`: `y_i` holds the responsibilities `r_ij = softmax_j(-γ |x_i - c_j|^2)`."""

    attention_function = "softmax"

    def expanded_score_scales(self, parameters):
        """`|scaling|` for every key: softmax reads the scores `-γ |x_i - c_j|^2` themselves."""
        centroids = parameters["centroids"]
        return centroids.new_full(centroids.shape[:2], abs(self.scaling))


class KMeansTransformerCosineAssign(KMeansTransformerAssign):
    """`"spherical"`: score `x_i . c_j`, the cosine of unit vectors; under hardmax `a(i)` is the largest cosine (first on ties)."""

    def prepare_query_key(self, query, key):
        return query, key

    def compact_query_key(self, point_tokens, centroids):
        return point_tokens[..., :-1], centroids

    def expanded_score_scales(self, parameters):
        """None: the scores are the cosines `x_i . c_j` of unit vectors, not expanded distances."""
        return None


class KMeansTransformerFuzzyAssign(KMeansTransformerAssign):
    """
    `"fuzzy"`: the memberships of fuzzy c-means, `u_ij = D_ij^(-2/(m-1)) / Σ_l D_il^(-2/(m-1))` with `D_ij = |x_i -
    c_j|`, through the `"kmeans_fuzzy"` kernel on the query `x_i` and key `c_j` (no augmentation: the kernel takes the
    distances from the differences). A point on a centroid gets membership 1 there. `y_i` holds the memberships.
    """

    attention_function = "kmeans_fuzzy"

    def __init__(self, config):
        super().__init__(config)
        self.fuzzifier = config.fuzzifier  # read by `fuzzy_membership_attention_forward`

    def prepare_query_key(self, query, key):
        return query, key

    def compact_query_key(self, point_tokens, centroids):
        return point_tokens[..., :-1], centroids

    def compact_memberships(self, query, key):
        """The kernel's rule (`fuzzy_weights`) on the distances of one GEMM, those that cancel taken from the differences."""
        return fuzzy_weights(squared_distances(query, key), self.fuzzifier)

    def compact_membership_rule(self) -> dict:
        """The same rule for the compiled pass, which takes every distance from the differences."""
        return {"rule": "fuzzy", "exponent": 1.0 / (self.fuzzifier - 1.0)}

    def expanded_score_scales(self, parameters):
        """None: both passes take the distances that cancel from the differences."""
        return None


class KMeansTransformerTrimmedAssign(KMeansTransformerAssign):
    """`"trimmed"`: Lloyd's assign whose value also copies the centroid into the point's `assigned` slot: `[0 ; e_j ; ... ; c_j]`."""

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        slices = config.token_slices
        projections["v_proj"][0][slices["assigned"], slices["position"]] = torch.eye(config.point_dim)
        return projections


class KMeansTransformerGaussianAssign(KMeansTransformerAssign):
    """
    `"gmm"`, the E-step: softmax over `j` of the log-density `log π_j - (d/2) log σ_j^2 - |x_i - μ_j|^2 / (2σ_j^2)`.
    Query `[x_i ; |x_i|^2 ; 1]` (`q_proj` reads the position and `square_norm` slots, bias 1), key built by
    `gaussian_log_density_key` from `k_proj(q_j) = [μ_j ; σ_j^2 ; π_j]`; scaling 1. `y_i` holds the responsibilities.
    """

    attention_function = "softmax"
    query_bias = True

    @staticmethod
    def query_key_dim(config):
        return config.point_dim + 2

    @staticmethod
    def attention_scaling(config):
        return 1.0

    @classmethod
    def analytic_projections(cls, config):
        projections = super(KMeansTransformerPositionAttention, cls).analytic_projections(config)  # its own q, k
        slices, d = config.token_slices, config.point_dim
        query_weight, query_bias = projections["q_proj"]
        query_weight[:d, slices["position"]] = torch.eye(d)
        query_weight[d, slices["square_norm"]] = 1.0
        query_bias[d + 1] = 1.0
        key_weight = projections["k_proj"][0]
        key_weight[:d, slices["position"]] = torch.eye(d)
        key_weight[d, slices["variance"]] = 1.0
        key_weight[d + 1, slices["mixing_weight"]] = 1.0
        projections["v_proj"][0][slices["code"], slices["code"]] = torch.eye(config.num_clusters)
        return projections

    def prepare_query_key(self, query, key):
        return query, gaussian_log_density_key(key)

    def compact_query_weights(self, point_tokens):
        """The query `[x_i ; |x_i|^2 ; 1]`, as `forward` reads it."""
        points = point_tokens[..., :-1]
        return torch.cat([points, (points * points).sum(dim=-1, keepdim=True), point_tokens[..., -1:]], dim=-1)

    def compact_query_key_weights(self, point_tokens, parameters, query=None):
        """The query (`compact_query_weights`, unless given) and the key of `[μ_j ; σ_j^2 ; π_j]`, as `forward` reads them."""
        query = self.compact_query_weights(point_tokens) if query is None else query
        key = torch.stack([parameters["variances"], parameters["weights"]], dim=-1).to(query.dtype)
        return self.prepare_query_key(query, torch.cat([parameters["centroids"], key], dim=-1))

    def expanded_score_scales(self, parameters):
        """`1 / (2σ_j^2)`, the log-density's factor on `|x_i - μ_j|^2`."""
        return 0.5 / parameters["variances"]


class KMeansTransformerTrimGate(nn.Module):
    """
    `"trimmed"`, a feed-forward gate on the point stream after the assign block. `distance_proj` reads `x_i - a_i`
    (the position minus the `assigned` centroid), and `δ_i = |x_i - a_i|^2` is written into the `distance` slot. A
    point is trimmed when `δ_i` is too large for its cluster:

    - `trim_quantile` q: `δ_i > τ_a(i)`, `τ_j` the q-quantile (linear interpolation at `h = (m_j - 1) q` of the
      sorted distances) of the `m_j` members of cluster `j`;
    - `trim_fraction` α: `δ_i` is among the `floor(α n)` largest of the problem's `n` points (the higher index first
      among equal distances).

    The gate erases a trimmed point's assignment (`y_i <- 0`, so the update does not count it) and sets its
    `outlier` slot to 1.

    With sample weights `w_i` the quantile is that of the weighted multiset (point `i` repeated `w_i` times): with the
    members' distances sorted, `v(p)` is the first whose cumulative weight exceeds `p`, `h = (W_j - 1) q` for the
    cluster's total weight `W_j`, and `τ_j` interpolates `v(floor h)` and `v(floor h + 1)`; integer weights give the
    quantile of the repeated points exactly. `trim_fraction` trims whole points, farthest first, while their total
    weight stays within `floor(α Σ w)` (repeated points could also trim part of a point's copies).
    """

    reports_assignment = True  # the assignment head runs it too: `outliers` are those of the returned centroids
    weighs_points = True  # its forward takes `sample_weight`

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.distance_proj = nn.Linear(config.hidden_size, config.point_dim, bias=False)
        tag_analytic(self, "distance_proj")

    @staticmethod
    def parameter_count(config: KMeansTransformerConfig) -> int:
        return config.point_dim * config.hidden_size

    @staticmethod
    def analytic_projections(config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, None]]:
        slices = config.token_slices
        weight = torch.zeros(config.point_dim, config.hidden_size)
        weight[:, slices["position"]] = torch.eye(config.point_dim)
        weight[:, slices["assigned"]] = -torch.eye(config.point_dim)
        return {"distance_proj": (weight, None)}

    def forward(self, point_states: torch.Tensor, point_mask: torch.Tensor, sample_weight=None) -> torch.Tensor:
        slices = self.config.token_slices
        difference = self.distance_proj(point_states)
        distance = (difference * difference).sum(dim=-1)
        codes = point_states[..., slices["code"]]
        assigned = point_mask & (codes.amax(dim=-1) > 0)
        if sample_weight is not None:
            trimmed = self.weighted_trim(distance, codes.argmax(dim=-1), assigned, sample_weight)
        elif self.config.trim_quantile is not None:
            trimmed = assigned & (distance > self.cluster_quantiles(distance, codes.argmax(dim=-1), assigned))
        else:
            trimmed = self.largest_fraction(distance, assigned)
        new = point_states.clone()
        new[..., slices["distance"]] = distance[..., None]
        new[..., slices["code"]] = codes.masked_fill(trimmed[..., None], 0.0)
        new[..., slices["outlier"]] = trimmed[..., None].to(point_states.dtype)
        return new - point_states

    def cluster_quantiles(self, distance, labels, assigned, num_clusters=None) -> torch.Tensor:
        """For every point, the `trim_quantile` quantile of the distances in its cluster, `(batch, n)`."""
        k = num_clusters or self.config.num_clusters
        members = nn.functional.one_hot(labels, k).bool() & assigned[..., None]
        values = distance[:, None, :].expand(-1, k, -1).masked_fill(~members.transpose(1, 2), float("inf"))
        ordered = values.sort(dim=-1).values
        below, above, fraction = self.quantile_ranks(members.sum(dim=1), distance.dtype)
        low, high = ordered.gather(-1, below[..., None])[..., 0], ordered.gather(-1, above[..., None])[..., 0]
        return self.interpolated(low, high, fraction).gather(1, labels)

    def quantile_ranks(self, counts: torch.LongTensor, dtype: torch.dtype):
        """
        Where the `trim_quantile` q of `m` sorted values lies, for every count `m` of `counts`: the ranks (from 0)
        `floor(h)` and `min(floor(h) + 1, m - 1)` of the two values it interpolates, `h = q (m - 1)`, and the
        fraction `h - floor(h)` in `dtype`.
        """
        position = self.config.trim_quantile * (counts - 1).clamp(min=0).to(torch.float64)
        below = position.floor().long()
        above = torch.minimum(below + 1, (counts - 1).clamp(min=0))
        return below, above, (position - below).to(dtype)

    @staticmethod
    def interpolated(low: torch.Tensor, high: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
        """The quantile between the sorted values `low` and `high` at `fraction` of the way (from the nearer end)."""
        step = torch.where(fraction > 0, high - low, torch.zeros_like(low))
        return torch.where(fraction < 0.5, low + fraction * step, high - step * (1 - fraction))

    @staticmethod
    def distances(point_tokens, centroids, labels) -> torch.Tensor:
        """
        `δ_i = |x_i - c_a(i)|^2`, `(batch, n)`, from compact point tokens `[x_i ; 1]` and their labels (-1: none): in
        one compiled pass where the loops run (`cpu_kernels.labelled_distances`, the squares added in coordinate
        order), else as `forward` takes them from `distance_proj`'s `x_i - a_i` (equal on integer data, within the
        rounding of a sum of `d` squares otherwise).
        """
        found = cpu_kernels.labelled_distances(point_tokens[..., :-1], centroids, labels)
        if found is not None:
            return found
        batch_size, num_clusters, point_dim = centroids.shape
        rows = labels.clamp(min=0) + torch.arange(batch_size, device=labels.device)[:, None] * num_clusters
        own = centroids.reshape(-1, point_dim).index_select(0, rows.flatten()).view(*labels.shape, point_dim)
        difference = own.neg_().add_(point_tokens[..., :-1])  # exactly `distance_proj`'s `x_i - a_i`
        return difference.mul_(difference).sum(dim=-1)

    def weighted_trim(self, distance, labels, assigned, sample_weight, num_clusters=None) -> torch.Tensor:
        """The trimmed points under sample weights (see the class docstring), `(batch, n)` bool."""
        weights = (sample_weight * assigned).to(torch.float64)
        if self.config.trim_quantile is None:
            num_trimmed = torch.floor(self.config.trim_fraction * weights.sum(dim=1, keepdim=True))
            order = distance.masked_fill(~assigned, float("inf")).argsort(dim=-1, stable=True).flip(-1)
            beyond = torch.zeros_like(weights).scatter_(-1, order, weights.gather(-1, order).cumsum(dim=-1))
            return assigned & (beyond <= num_trimmed) & (weights > 0)
        k = num_clusters or self.config.num_clusters
        members = nn.functional.one_hot(labels, k).bool() & assigned[..., None]
        values = distance[:, None, :].expand(-1, k, -1).masked_fill(~members.transpose(1, 2), float("inf"))
        ordered, order = values.sort(dim=-1)
        cumulative = (weights[:, None, :].expand(-1, k, -1) * members.transpose(1, 2)).gather(-1, order).cumsum(dim=-1)
        totals = cumulative[..., -1:]
        position = self.config.trim_quantile * (totals - 1).clamp(min=0)
        below = position.floor()
        above = torch.minimum(below + 1, (totals - 1).clamp(min=0))
        last = members.sum(dim=1)[..., None].clamp(min=1) - 1

        def value_at(where):  # the first sorted distance whose cumulative weight exceeds `where`
            index = torch.searchsorted(cumulative.contiguous(), where.contiguous(), right=True)
            return ordered.gather(-1, torch.minimum(index, last))[..., 0]

        fraction = (position - below)[..., 0].to(distance.dtype)
        quantiles = self.interpolated(value_at(below), value_at(above), fraction)
        return assigned & (distance > quantiles.gather(1, labels)) & (weights > 0)

    def largest_fraction(self, distance, assigned) -> torch.Tensor:
        """The `floor(trim_fraction * n)` points with the largest distances (stable order), `(batch, n)` bool."""
        counts = assigned.sum(dim=1)
        num_trimmed = torch.floor(self.config.trim_fraction * counts.to(torch.float64)).long()
        order = distance.masked_fill(~assigned, float("inf")).argsort(dim=-1, stable=True)
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        return assigned & (ranks >= (counts - num_trimmed)[:, None])

    def compact_labels(self, point_tokens, centroids, labels, sample_weight=None) -> torch.LongTensor:
        """
        The gate on the compact state (`VariantSpec.compact`): `δ_i = |x_i - c_a(i)|^2` from the labels `(batch, n)`
        of compact point tokens `[x_i ; 1]` and centroids `(batch, k, d)`, and the labels of the trimmed points set to
        -1, so that the update counts them nowhere. The rule of `forward`, with no `(batch, k, n)` table: a
        per-cluster quantile is taken on each cluster's members alone, the two values it interpolates found by the
        compiled `cpu_kernels.order_statistics` (a selection, no sort); with sample weights, or without the loops,
        one row per cluster (`member_table`) of a `(batch * k, largest cluster)` table through the gate's own code.
        """
        assigned = labels >= 0 if sample_weight is None else (labels >= 0) & (sample_weight > 0)  # those `forward` counts
        distance = self.distances(point_tokens, centroids, labels)
        if self.config.trim_quantile is None:
            if sample_weight is None:
                trimmed = self.largest_fraction(distance, assigned)
            else:
                trimmed = self.weighted_trim(distance, labels, assigned, sample_weight)
            return labels.masked_fill(trimmed, -1)
        if sample_weight is None:  # the two order statistics of each cluster by the compiled loops, without a sort
            k = self.config.num_clusters
            codes = labels.masked_fill(~assigned, -1)
            counts = torch.zeros(labels.shape[0], k + 1, dtype=torch.long, device=labels.device)
            counts = counts.scatter_add_(1, codes + 1, torch.ones_like(codes))[:, 1:]
            below, above, fraction = self.quantile_ranks(counts, distance.dtype)
            values = cpu_kernels.order_statistics(distance, codes, k, torch.stack([below, above], dim=-1))
            if values is not None:
                quantiles = self.interpolated(values[..., 0], values[..., 1], fraction)
                return labels.masked_fill(assigned & (distance > quantiles.gather(1, codes.clamp(min=0))), -1)
        # Every cluster's members as one row of a (batch * k, largest cluster) table (`member_table`), unassigned past
        # its count; the gate's own per-cluster rule then runs on all rows at once (one "cluster" each).
        problem, point, row, column, shape = member_table(labels, assigned, self.config.num_clusters)
        table = distance.new_zeros(shape).index_put_((row, column), distance[problem, point])
        in_row = torch.zeros(shape, dtype=torch.bool, device=labels.device).index_put_((row, column), assigned[problem, point])
        zeros = torch.zeros(shape, dtype=torch.long, device=labels.device)
        if sample_weight is None:
            cut = in_row & (table > self.cluster_quantiles(table, zeros, in_row, num_clusters=1))
        else:
            weights = sample_weight.new_zeros(shape).index_put_((row, column), sample_weight[problem, point])
            cut = self.weighted_trim(table, zeros, in_row, weights, num_clusters=1)
        trimmed = torch.zeros_like(assigned).index_put_((problem, point), cut[row, column])
        return labels.masked_fill(trimmed, -1)


class KMeansTransformerMedoidCost(KMeansTransformerPositionAttention):
    """
    Deterministic `"kmedoids"`, self-attention among the points of one cluster under the `"distance"` kernel (weights
    `|x_i - x_i'|`): query = key = `x_i`, value 1 on the `medoid_cost` slot (the `v_proj` bias), so the slot holds
    `cost_i = Σ_{i' : a(i') = a(i)} |x_i - x_i'|`, the summed distance to the point's cluster.
    """

    attention_function = "kmeans_distance"
    value_bias = True
    reports_assignment = False  # read by the assignment head: the cost matters to the update only
    weighs_points = True

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        projections["v_proj"][1][config.token_slices["medoid_cost"]] = 1.0
        return projections

    def forward(self, point_states: torch.Tensor, point_mask: torch.Tensor, sample_weight=None, **kwargs):
        """With `sample_weight` the cost is weighted, `cost_i = Σ_{i'} w_i' |x_i - x_i'|` (key multiplicities)."""
        codes = point_states[..., self.config.token_slices["code"]]
        labels = codes.argmax(dim=-1).masked_fill(~point_mask | (codes.amax(dim=-1) <= 0), -1)
        same_cluster = (labels[:, :, None] == labels[:, None, :]) & (labels >= 0)[:, :, None]
        if sample_weight is not None:
            kwargs["key_weights"] = sample_weight
        return super().forward(point_states, point_states, same_cluster[:, None], **kwargs)[0]

    def compact_labels(self, point_tokens, centroids, labels, sample_weight=None) -> torch.LongTensor:
        """
        On the compact state the costs are read by the update alone, which computes them with this block's rule over
        each cluster's members (`KMeansTransformerMedoidUpdate.compact_statistics`): the labels stay as they are.
        """
        return labels


class KMeansTransformerUpdate(KMeansTransformerAttention):
    """
    Block 4, cross-attention from the centroids to the points and to the centroid tokens. Query `e_j`, key `y_i` for
    points and `e_j'` for centroid tokens, so point `i` scores `y_ij` (1 for the members of cluster `j` under a hard
    assignment). Visible keys: the real points (only the members when `candidates == "members"`) and, only when no
    point has weight for the cluster (`y_ij = 0` for all `i`: an empty cluster), the centroid's own token. Value: the
    position slice of points (`x_i`) and the `previous` slice of centroid tokens (`c_j`). Under hardmax the maximisers
    are the members, averaged: the new centroid is the mean of `S_j`; an empty cluster sees only its own token and
    keeps `c_j`. Padded points are invisible. Weights `(batch, 1, k, n + k)`.
    """

    candidates = "points"
    sums_over_points = True  # False for an update that is not a function of sums over points (medoids, sparsemax)
    assignment_kind = "labels"  # what `accumulate` takes: the labels (a hard mean update) or the weights
    # Whether the statistics of points translated by `-o` give those of the points (`untranslated_statistics`), so
    # that a float32 compact pass may run near the data (`CompactFrame`); False for medoids, kept exact data points,
    # whose labels are then taken from float64 products where float32 ones would not keep them (`labels_dtype`).
    statistics_translate = True

    @staticmethod
    def query_key_dim(config):
        return config.num_clusters

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        cls.write_score_projections(config, projections["q_proj"], projections["k_proj"][0])
        slices, value = config.token_slices, projections["v_proj"][0]
        value[slices["position"], slices["position"]] = torch.eye(config.point_dim)
        value[slices["position"], slices["previous"]] = torch.eye(config.point_dim)
        return projections

    @staticmethod
    def write_score_projections(config, query: tuple[torch.Tensor, torch.Tensor | None], key_weight: torch.Tensor):
        """The query and key maps (written in place): `e_j` from the centroid's code, `y_i` or `e_j'` from the key's."""
        code = config.token_slices["code"]
        query[0][:, code] = torch.eye(config.num_clusters)
        key_weight[:, code] = torch.eye(config.num_clusters)

    def forward(self, centroid_states, point_states, point_mask, sample_weight=None, **kwargs):
        """`sample_weight` `(batch, n)`: each point's multiplicity as a key (the centroid tokens weigh 1)."""
        k = centroid_states.shape[1]
        if sample_weight is not None:
            kwargs["key_weights"] = torch.cat([sample_weight, sample_weight.new_ones(sample_weight.shape[0], k)], dim=1)
        codes = point_states[..., self.config.token_slices["code"]]
        weighted = (self.score_weights(codes) > 0) & point_mask[..., None]
        if self.candidates == "members":
            visible_points = weighted.transpose(1, 2)
        else:
            visible_points = point_mask[:, None, :].expand(-1, k, -1)
        identity = torch.eye(k, dtype=torch.bool, device=point_mask.device)
        own_token = identity[None] & ~weighted.any(dim=1)[:, :, None]
        attention_mask = torch.cat([visible_points, own_token], dim=-1)[:, None]
        memory = torch.cat([point_states, centroid_states], dim=1)
        return super().forward(centroid_states, memory, attention_mask, **kwargs)

    def score_weights(self, codes: torch.Tensor) -> torch.Tensor:
        """The weight each point gives each cluster, from its assignment slot: `y_ij` itself."""
        return codes

    # The update as sufficient statistics: sums over points that add up over chunks and processes (the compact engine
    # and points mode run one iteration as `finalize(accumulate(...))`, whatever splits the points).

    def accumulate(self, assignment: torch.Tensor, values: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """
        The sums this update reads, over a set of points: `assignment` holds the labels `a(i)` `(batch, n)` (-1 for a
        point that counts nowhere: padding, a trimmed outlier), `values` the compact point tokens `[x_i ; 1]`
        `(batch, n, d + 1)`. Returns `[Σ_{a(i)=j} x_i ; |S_j|]` `(batch, k, d + 1)`: the numerators and denominators of
        the hardmax update, whose keys `y_i` are the labels in index form (the `"kmeans_hardmax_index"` sums). With
        `sample_weight` `(batch, n)`: `[Σ_{a(i)=j} w_i x_i ; Σ_{a(i)=j} w_i]`, the sums of the tokens `w_i [x_i ; 1]`.
        """
        if not self.sums_over_points:
            raise NotImplementedError(f"{type(self).__name__}'s update is not a function of sums over the points.")
        if sample_weight is not None:
            values = values * sample_weight[..., None].to(values.dtype)
            return code_sums(values, assignment, None, self.config.num_clusters)[0]  # float64 sums
        sums, counts = code_sums(values, assignment, None, self.config.num_clusters)  # float64 sums
        return torch.cat([sums[..., :-1], counts[..., None].to(sums.dtype)], dim=-1)

    def compact_statistics(self, labels, point_tokens, centroids, sample_weight=None) -> torch.Tensor:
        """
        What the compact engine's layer hands to `finalize`: the labels `(batch, n)` of compact point tokens `[x_i ;
        1]` `(batch, n, d + 1)`, the entering centroids `(batch, k, d)` -> `(batch, k, width)`, whose last column is
        each cluster's mass (its count, or its total sample weight). Here the sums of `accumulate`; an update that is
        not a function of sums over points (sparsemax, medoids) reads the members themselves.
        """
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self.accumulate(labels, point_tokens, **weighted)

    def accumulate_float64(self, assignment: torch.Tensor, values: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """
        `accumulate` in float64 whatever the dtype of its inputs (a chunk of the compact engine's weighted pass where
        the compiled pass does not run): on the inputs widened to float64.
        """
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight.to(torch.float64)}
        return self.accumulate(assignment.to(torch.float64), values.to(torch.float64), **weighted)

    def untranslated_statistics(self, statistics: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """
        The float64 statistics of the points `x_i` from those of the translated points `x_i - o` (`origin` `o`
        `(batch, 1, d)`): `Σ_i w_ij x_i = Σ_i w_ij (x_i - o) + o Σ_i w_ij` (`w_ij` the label's indicator, times the
        sample weight; or the weighted updates' `y_ij`); the last column `Σ_i w_ij` is unchanged.
        """
        origin = origin.to(torch.float64)
        return torch.cat([statistics[..., :-1] + origin * statistics[..., -1:], statistics[..., -1:]], dim=-1)

    def finalize(self, statistics: torch.Tensor, parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        The new parameters from summed `statistics` and the entering `parameters` (`{"centroids": (batch, k, d)}`):
        `c_j = numerator_j / denominator_j`, or the entering `c_j` when the denominator is 0 (an empty cluster, whose
        only maximiser in the update block is its own token). The quotient is taken in the statistics' dtype (float64
        from `accumulate`) and rounded once to the centroids' dtype.
        """
        numerators, denominators = statistics[..., :-1], statistics[..., -1:]
        safe = torch.where(denominators > 0, denominators, torch.ones_like(denominators))
        centroids = torch.where(denominators > 0, numerators / safe, parameters["centroids"])
        return {**parameters, "centroids": centroids.to(parameters["centroids"].dtype)}


class KMeansTransformerWeightedUpdate(KMeansTransformerUpdate):
    """
    An update that averages every point with the weights in its assignment slot, `c_j = Σ_i w_ij x_i / Σ_i w_ij`
    (normalised linear attention on the scores `y_ij`, raised to `score_power`); a cluster whose weights are all 0
    keeps `c_j`. Its sums are those of the compiled weighted pass (`compiled_sums_form`), as gmm's are.
    """

    attention_function = "kmeans_linear"
    score_power = 1  # read by `linear_attention_forward`
    assignment_kind = "weights"
    square_norm = False  # whether the sums' rows carry |x_i|^2: `[x_i ; |x_i|^2 ; 1]` (compiled sums)

    def accumulate(self, assignment: torch.Tensor, values: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """
        `assignment` `(batch, n, k)`: the assignment slots `y_ij` (zero rows for points that count nowhere); `values`
        `[x_i ; 1]` `(batch, n, d + 1)`. Returns `[Σ_i w_ij x_i ; Σ_i w_ij]` `(batch, k, d + 1)`, `w = y^score_power`
        (times the sample weight of point `i` when given).
        """
        if sample_weight is not None:
            values = values * sample_weight[..., None].to(values.dtype)
        return self.score_weights(assignment).transpose(1, 2) @ values

    def compiled_sums_form(self) -> dict:
        """The compiled loops' sums this update reads: `Σ_i w_ij^power s_i [x_i (; |x_i|^2) ; 1]`."""
        return {"square_norm": self.square_norm, "power": float(self.score_power)}

    def statistics_of_sums(self, sums: torch.Tensor, values: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """`accumulate`'s statistics from the compiled sums of the points `values` `[x_i ; 1]`: the sums themselves."""
        return sums

    def sums_cancellation(self, parameters: dict[str, torch.Tensor], statistics=None) -> torch.Tensor | None:
        """
        The factor `κ_j` `(batch, k)` by which a relative error `ε` of the compiled sums (each column's sum off by
        at most `ε Σ_i |w_ij s_i v_ic|`) grows in the result that `finalize` takes from them, relative to that
        result's own size, for the parameters in the pass's coordinates (those of `parameters`, or of `statistics`
        when given). None: the results are quotients of the sums (`c_j = N_j / R_j`), which cancel nothing.
        """
        return None

    def score_weights(self, codes: torch.Tensor) -> torch.Tensor:
        """`y_ij^score_power`: a cluster whose powers all round to 0 sees only its own token, and keeps `c_j`."""
        return codes if self.score_power == 1 else codes.clamp(min=0) ** self.score_power


class KMeansTransformerSoftUpdate(KMeansTransformerWeightedUpdate):
    """
    `"soft"`: normalised linear attention on the same scores, `c_j = Σ_i r_ij x_i / Σ_i r_ij` (a softmax update would
    not be soft k-means). A cluster whose responsibilities all underflow to 0 keeps `c_j`.
    """


class KMeansTransformerFuzzyUpdate(KMeansTransformerWeightedUpdate):
    """
    `"fuzzy"`: normalised linear attention on the memberships raised to the fuzzifier, `c_j = Σ_i u_ij^m x_i /
    Σ_i u_ij^m` (Bezdek's centroid step).
    """

    def __init__(self, config):
        super().__init__(config)
        self.score_power = config.fuzzifier


class KMeansTransformerMixtureUpdate(KMeansTransformerWeightedUpdate):
    """
    `"gmm"`, the sums of the M-step: linear attention without normalisation on the responsibilities, with values
    `[x_i ; |x_i|^2 ; 1]` (the 1 is the `v_proj` bias minus `is_centroid`), so the centroid token receives
    `N_j = Σ_i r_ij x_i`, `S_j = Σ_i r_ij |x_i|^2` and `R_j = Σ_i r_ij` in its position, `square_norm` and
    `mixing_weight` slots. The M-step block turns them into parameters.
    """

    normalize_weights = False  # read by `linear_attention_forward`
    value_bias = True
    square_norm = True

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        slices = config.token_slices
        value_weight, value_bias = projections["v_proj"]
        value_weight[slices["square_norm"], slices["square_norm"]] = 1.0
        value_weight[slices["mixing_weight"], slices["is_centroid"]] = -1.0
        value_bias[slices["mixing_weight"]] = 1.0
        return projections

    def accumulate(self, assignment: torch.Tensor, values: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """
        `assignment` `(batch, n, k)`: the responsibilities `r_ij`; `values` `[x_i ; 1]` `(batch, n, d + 1)`. Returns
        `[N_j ; S_j ; R_j ; n]` `(batch, k, d + 3)`: this block's sums and the number of points (for `π_j = R_j / n`);
        with `sample_weight` every sum weighs point `i` by `w_i` and `n` is `Σ_i w_i`.
        """
        square_norms = (values[..., :-1] * values[..., :-1]).sum(dim=-1, keepdim=True)
        values = torch.cat([values[..., :-1], square_norms, values[..., -1:]], dim=-1)
        if sample_weight is not None:
            values = values * sample_weight[..., None].to(values.dtype)
        sums = assignment.transpose(1, 2) @ values
        counts = values[..., -1:].sum(dim=1, keepdim=True).expand(-1, sums.shape[1], -1)
        return torch.cat([sums, counts], dim=-1)

    def statistics_of_sums(self, sums, values, sample_weight=None):
        """
        `[N_j ; S_j ; R_j]` from the compiled sums, then the mass `n` (`Σ_i w_i` with `sample_weight`): that of the
        ones column of `values` `[x_i ; 1]`, without a pass over it.
        """
        if sample_weight is None:
            mass = sums.new_full(sums.shape[:1], float(values.shape[1]))
        else:
            mass = sample_weight.to(torch.float64).sum(dim=1)
        return torch.cat([sums, mass[:, None, None].expand(-1, sums.shape[1], 1)], dim=-1)

    def sums_cancellation(self, parameters, statistics=None):
        """
        `κ_j = 4 s_j / (d σ_j^2)`: the M-step's variance `d σ_j^2 = s_j - |μ_j|^2 (+ d reg_covar)`, with `s_j = S_j /
        R_j` the mean of `|y_i|^2` and `μ_j = N_j / R_j`, moves by at most `κ_j ε σ_j^2` (to first order) when each
        sum is off by `ε` of its sum of absolute terms: `S/R` by `ε s`, `|N/R|^2` by `2 ε |μ| Σ_i r_ij |y_i| / R <=
        2 ε s` (Cauchy-Schwarz), both through `R` by `ε |2 |μ|^2 - s| <= ε s`. It cancels where the component lies far
        from the coordinates' origin against its spread, `|μ_j|^2 >> d σ_j^2`. Of the components that `statistics`
        `[N ; S ; R ; n]` give (after a pass: infinite where the variance is not positive, 0 where `R_j = 0`, whose
        parameters are kept), else of `parameters` (before it, `s_j` taken as `|μ_j|^2 + d σ_j^2`).
        """
        d = self.config.point_dim
        if statistics is None:
            centroids = parameters["centroids"].to(torch.float64)
            spreads = d * parameters["variances"].to(torch.float64)
            return 4 * ((centroids * centroids).sum(dim=-1) + spreads) / spreads
        sums, square_sums, masses = statistics[..., :d], statistics[..., d], statistics[..., d + 1]
        has_mass = masses > 0
        safe_masses = torch.where(has_mass, masses, torch.ones_like(masses))
        means, mean_squares = sums / safe_masses[..., None], square_sums / safe_masses
        spreads = mean_squares - (means * means).sum(dim=-1) + d * self.config.reg_covar
        cancellation = torch.where(spreads > 0, 4 * mean_squares / spreads, torch.full_like(spreads, math.inf))
        return torch.where(has_mass, cancellation, torch.zeros_like(cancellation))

    def untranslated_statistics(self, statistics, origin):
        """
        `[N_j ; S_j ; R_j ; n]` of the points `x_i` from those of `x_i - o`: `N_j = N'_j + o R_j` and `S_j = S'_j +
        2 o.N'_j + |o|^2 R_j` (in float64).
        """
        d, origin = self.config.point_dim, origin.to(torch.float64)
        sums, square_sums, rest = statistics[..., :d], statistics[..., d : d + 1], statistics[..., d + 1 :]
        masses = rest[..., :1]
        cross, square_norm = (sums * origin).sum(dim=-1, keepdim=True), (origin * origin).sum(dim=-1, keepdim=True)
        square_sums = square_sums + 2 * cross + square_norm * masses
        return torch.cat([sums + origin * masses, square_sums, rest], dim=-1)

    def finalize(self, statistics, parameters):
        """The M-step (`mixture_parameters`) from the summed `[N_j ; S_j ; R_j ; n]`."""
        d = self.config.point_dim
        means, variances, weights = mixture_parameters(
            statistics[..., :d], statistics[..., d : d + 1], statistics[..., d + 1 : d + 2], statistics[..., d + 2 :],
            {"centroids": parameters["centroids"], "variances": parameters["variances"][..., None]}, self.config,
        )
        return {"centroids": means, "variances": variances[..., 0], "weights": weights[..., 0]}


class KMeansTransformerMedoidUpdate(KMeansTransformerUpdate):
    """
    Deterministic `"kmedoids"`: the members only, scored `-cost_i` (query 1 from the `q_proj` bias, key `-cost_i`
    from the `medoid_cost` slot), under hardmax with the first maximiser: the new centre is the member with the least
    summed distance to its cluster, the first one on ties.
    """

    attention_function = "kmeans_hardmax"
    hardmax_ties = "first"
    candidates = "members"
    sums_over_points = False
    statistics_translate = False  # the medoids are data points, exactly
    query_bias = True

    @staticmethod
    def query_key_dim(config):
        return 1

    @staticmethod
    def write_score_projections(config, query, key_weight):
        query[1][0] = 1.0
        key_weight[0, config.token_slices["medoid_cost"]] = -1.0

    def compact_statistics(self, labels, point_tokens, centroids, sample_weight=None) -> torch.Tensor:
        """
        `[x_m(j) ; mass_j]` `(batch, k, d + 1)`: the medoid cost block and this block on the compact state. The
        members of cluster `j` are the points labelled `j` of weight > 0; `m(j)` is the first of them (in point
        order) of least `cost_i = Σ_{i'} w_i' |x_i - x_i'|` over the members, the distances in the points' dtype and
        their sum in float64 in point order (the compiled `cpu_kernels.medoid_update`, else blocks of candidates in
        PyTorch). `O(Σ_j |S_j|^2 d)` time, no `(n, n)` table.
        """
        points, k = point_tokens[..., :-1], self.config.num_clusters
        compiled = cpu_kernels.medoid_update(points, labels, k, sample_weight)
        if compiled is None:
            compiled = _medoids(points, labels, k, sample_weight)
        chosen, masses = compiled
        medoids = points.gather(1, chosen.clamp(min=0)[..., None].expand(-1, -1, points.shape[-1]))
        return torch.cat([medoids.to(torch.float64), masses[..., None]], dim=-1)

    def finalize(self, statistics, parameters):
        return chosen_centroids(statistics, parameters)


class KMeansTransformerDistanceUpdate(KMeansTransformerUpdate):
    """
    An update over the members scored by the distance to the centroid entering the iteration: query `c_j` (from the
    `previous` slot), key `x_i`, augmented by `augment_for_negative_squared_distance` into the score `-|x_i - c_j|^2`,
    times `scaling`. The kernel makes the variant.
    """

    candidates = "members"
    sums_over_points = False
    statistics_translate = False

    @staticmethod
    def query_key_dim(config):
        return config.point_dim

    @staticmethod
    def write_score_projections(config, query, key_weight):
        query[0][:, config.token_slices["previous"]] = torch.eye(config.point_dim)
        key_weight[:, config.token_slices["position"]] = torch.eye(config.point_dim)

    def prepare_query_key(self, query, key):
        return augment_for_negative_squared_distance(query, key)


class KMeansTransformerSparseUpdate(KMeansTransformerDistanceUpdate):
    """`"sparse"`: sparsemax over the members of `-γ |x_i - c_j|^2 / sqrt(d)`; far members get exactly zero weight."""

    attention_function = "kmeans_sparsemax"
    statistics_translate = True

    @staticmethod
    def attention_scaling(config):
        return config.inverse_temperature / math.sqrt(config.point_dim)

    def compact_statistics(self, labels, point_tokens, centroids, sample_weight=None) -> torch.Tensor:
        """
        `[Σ_i p_ij x_i ; mass_j]` `(batch, k, d + 1)`, this block on the compact state: for each cluster the sparsemax
        `p` of its members' scores (the points labelled `j` of weight > 0, each with its multiplicity `w_i`;
        `member_scores`), the kernel's projection on the members alone (no `(k, n)` scores): the compiled
        `cpu_kernels.sparsemax_update`, else one row per cluster of a `(batch · k, largest cluster)` table through
        `sparsemax_projection`. The weighted sum is taken in float64.
        """
        points, k = point_tokens[..., :-1], self.config.num_clusters
        compiled = cpu_kernels.sparsemax_update(points, labels, centroids, sample_weight, self.scaling)
        if compiled is not None:
            sums, masses = compiled
            return torch.cat([sums, masses[..., None]], dim=-1)
        counted = labels >= 0 if sample_weight is None else (labels >= 0) & (sample_weight > 0)
        scores = self.member_scores(labels, points, centroids)
        problem, point, row, column, shape = member_table(labels, counted, k)
        table = scores.new_full(shape, -math.inf).index_put_((row, column), scores[problem, point])
        multiplicities = None
        if sample_weight is not None:
            weights = sample_weight.to(scores.dtype)
            multiplicities = scores.new_zeros(shape).index_put_((row, column), weights[problem, point])
        projected = sparsemax_projection(table, multiplicities)
        weights = scores.new_zeros(labels.shape).index_put_((problem, point), projected[row, column])
        return self._member_sums(weights, points, labels.masked_fill(~counted, -1), sample_weight)

    def member_scores(self, labels, points, centroids) -> torch.Tensor:
        """
        Each point's score for its own cluster `a(i)` (`labels` `(batch, n)`, points `(batch, n, d)`, centroids
        `(batch, k, d)`): `s_i = scaling · ((2 c_a(i)·x_i - |x_i|^2) - |c_a(i)|^2)`, the kernel's augmented product
        `-scaling |x_i - c_a(i)|^2`, in the points' dtype `(batch, n)` (any value where `a(i) = -1`): the compiled
        `cpu_kernels.member_scores` (the scores of `sparsemax_update`, each sum in coordinate order), else PyTorch.
        """
        compiled = cpu_kernels.member_scores(points, labels, centroids, self.scaling)
        if compiled is not None:
            return compiled
        index = labels.clamp(min=0)
        own = centroids.gather(1, index[..., None].expand(-1, -1, points.shape[-1]))
        dot = 2 * (own * points).sum(dim=-1)  # = Σ_e (2 c_e) x_e: doubling is exact
        norms = (centroids * centroids).sum(dim=-1).gather(1, index)
        return ((dot - (points * points).sum(dim=-1)) - norms) * self.scaling

    def thresholded_statistics(self, labels, points, scores, thresholds, sample_weight=None) -> torch.Tensor:
        """
        `compact_statistics` from each cluster's sparsemax threshold `τ_j` (`thresholds` `(batch, k)`, found
        elsewhere, e.g. over points in chunks): `p_i = w_i max(s_i - τ_a(i), 0)` (`scores` from `member_scores`),
        then `[Σ_i p_i x_i ; mass_j]` over the members, as the projection computes them (the compiled
        `cpu_kernels.thresholded_sums`, else PyTorch).
        """
        compiled = cpu_kernels.thresholded_sums(points, labels, scores, thresholds.to(scores.dtype), sample_weight)
        if compiled is not None:
            sums, masses = compiled
            return torch.cat([sums, masses[..., None]], dim=-1)
        counted = labels >= 0 if sample_weight is None else (labels >= 0) & (sample_weight > 0)
        own = thresholds.to(scores.dtype).gather(1, labels.clamp(min=0))
        weights = (scores - own).clamp(min=0)
        if sample_weight is not None:
            weights = weights * sample_weight.to(scores.dtype)
        return self._member_sums(weights.masked_fill(~counted, 0), points, labels.masked_fill(~counted, -1),
                                 sample_weight)

    def _member_sums(self, weights, points, members, sample_weight) -> torch.Tensor:
        """`[Σ_i p_i x_i ; mass_j]` in float64 over the `members` (labels, -1 for none) with their weights `p`."""
        k = self.config.num_clusters
        sums, counts = code_sums(weights[..., None].to(torch.float64) * points.to(torch.float64), members, None, k)
        masses = counts.to(torch.float64)
        if sample_weight is not None:
            masses = code_sums(sample_weight[..., None].to(torch.float64), members, None, k)[0][..., 0]
        return torch.cat([sums, masses[..., None]], dim=-1)

    def untranslated_statistics(self, statistics, origin):
        """
        `[Σ_i p_ij x_i ; mass_j]` of the points `x_i` from those of `x_i - o`: the sparsemax weights of a cluster's
        members sum to 1 (the scores' differences, hence `p`, are those of the translated points), so `Σ_i p_ij x_i =
        Σ_i p_ij (x_i - o) + o` where the cluster has members (mass > 0), in float64.
        """
        origin, masses = origin.to(torch.float64), statistics[..., -1:]
        return torch.cat([statistics[..., :-1] + origin * (masses > 0), masses], dim=-1)

    def finalize(self, statistics, parameters):
        return chosen_centroids(statistics, parameters)


class KMeansTransformerGumbelMedoidUpdate(KMeansTransformerDistanceUpdate):
    """Gumbel `"kmedoids"`: one member drawn with weights `softmax(-γ |x_i - c_j|^2)` by Gumbel-max: the new medoid."""

    attention_function = "kmeans_gumbel_max"


def chosen_centroids(statistics: torch.Tensor, parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    The `finalize` of a member-based update (`compact_statistics`: `[c_j ; mass_j]`): the new centroid of each
    cluster with members, the entering one where it has none, in the centroids' dtype.
    """
    chosen, masses = statistics[..., :-1], statistics[..., -1:]
    centroids = torch.where(masses > 0, chosen.to(parameters["centroids"].dtype), parameters["centroids"])
    return {**parameters, "centroids": centroids}


def member_table(labels: torch.LongTensor, counted: torch.BoolTensor, num_clusters: int):
    """
    Every cluster's members as one row of a `(batch · k, largest cluster)` table, in point order: returns the
    members' `(problem, point)` indices, their `(row, column)` places and the table's shape.
    """
    k, (batch_size, num_points) = num_clusters, labels.shape
    groups = labels.masked_fill(~counted, k)
    counts = torch.zeros(batch_size, k + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, groups, torch.ones_like(groups))
    order = groups.argsort(dim=1, stable=True)
    grouped = groups.gather(1, order)
    slot = torch.arange(num_points, device=labels.device) - (counts.cumsum(1) - counts).gather(1, grouped)
    kept = grouped < k
    problem = torch.arange(batch_size, device=labels.device)[:, None].expand_as(order)[kept]
    row = (problem * k + grouped[kept])
    shape = (batch_size * k, max(int(counts[:, :k].max()), 1) if counts.numel() else 1)
    return problem, order[kept], row, slot[kept], shape


def _medoids(points, labels, num_clusters, sample_weight=None, budget=2**22):
    """
    `cpu_kernels.medoid_update` in PyTorch (any device): per cluster, its members' costs in blocks of candidates
    (`budget` numbers of differences at a time) and the first of least cost. Returns `(chosen, masses)`.
    """
    batch_size = points.shape[0]
    counted = labels >= 0 if sample_weight is None else (labels >= 0) & (sample_weight > 0)
    chosen = labels.new_full((batch_size, num_clusters), -1)
    masses = points.new_zeros(batch_size, num_clusters, dtype=torch.float64)
    for problem in range(batch_size):
        for cluster in range(num_clusters):
            members = torch.nonzero(counted[problem] & (labels[problem] == cluster))[:, 0]
            if len(members) == 0:
                continue
            rows = points[problem, members]
            weights = torch.ones(len(members), dtype=torch.float64, device=points.device)
            if sample_weight is not None:
                weights = sample_weight[problem, members].to(points.dtype).to(torch.float64)
            masses[problem, cluster] = weights.sum()
            step = max(1, budget // max(1, rows.numel()))
            best, best_cost = -1, math.inf
            for start in range(0, len(members), step):
                difference = rows[start : start + step, None, :] - rows[None, :, :]
                costs = ((difference * difference).sum(dim=-1).sqrt().to(torch.float64) * weights).sum(dim=-1)
                index = int(costs.argmin())
                if float(costs[index]) < best_cost:
                    best, best_cost = start + index, float(costs[index])
            chosen[problem, cluster] = members[best]
    return chosen, masses


class KMeansTransformerCentroidNorm(nn.Module):
    """
    `"spherical"`, a normalisation of the centroids' position slice: `c_j <- m_j / |m_j|` for the members' mean `m_j`.
    A mean of norm 0 (members that cancel) has no direction, and the centroid keeps its previous one (`previous`).
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config

    @staticmethod
    def parameter_count(config: KMeansTransformerConfig) -> int:
        return 0

    @staticmethod
    def normalize(mean: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """`m_j / |m_j|`, or `previous` where `m_j = 0` (every coordinate 0: a tiny mean still has a direction)."""
        return torch.where((mean != 0).any(dim=-1, keepdim=True), unit_normalize(mean), previous)

    def finalize(self, parameters: dict[str, torch.Tensor], previous: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This block on the statistics path: the update's means normalised, `previous` where a mean is 0."""
        return {**parameters, "centroids": self.normalize(parameters["centroids"], previous["centroids"])}

    def forward(self, centroid_states: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        slices = self.config.token_slices
        mean, previous = centroid_states[..., slices["position"]], centroid_states[..., slices["previous"]]
        delta = torch.zeros_like(centroid_states)
        delta[..., slices["position"]] = self.normalize(mean, previous) - mean
        return delta


class KMeansTransformerMixtureMStep(nn.Module):
    """
    `"gmm"`, the M-step as a feed-forward block on the centroid stream. From the sums `N_j`, `S_j`, `R_j` left by the
    update block it writes `μ_j = N_j / R_j`, `σ_j^2 = (S_j / R_j - |μ_j|^2) / d + reg_covar` and `π_j = R_j / n`, and
    clears `square_norm`. A component whose responsibilities all underflow (`R_j = 0`) saw only its own token, which
    wrote its previous mean: it keeps `μ_j` and `σ_j^2`, and `π_j = 0`. A variance that reaches 0 (a component on a
    single point, `reg_covar = 0`) raises an error. The variance is the moment form scikit-learn also uses; it loses
    digits when the data sit far from the origin compared with their spread (notably in float32): centre the data.
    With sample weights, `n` is their sum `Σ_i w_i`.
    """

    weighs_points = True

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config

    @staticmethod
    def parameter_count(config: KMeansTransformerConfig) -> int:
        return 0

    def finalize(self, parameters: dict[str, torch.Tensor], previous: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """On the statistics path the update's `finalize` has applied the M-step (`mixture_parameters`) already."""
        return parameters

    def forward(self, centroid_states: torch.Tensor, point_mask: torch.Tensor, sample_weight=None) -> torch.Tensor:
        slices = self.config.token_slices
        sums = centroid_states[..., slices["position"]]
        masses = point_mask.sum(dim=1) if sample_weight is None else sample_weight.sum(dim=1)
        means, variances, weights = mixture_parameters(
            sums,
            centroid_states[..., slices["square_norm"]],
            centroid_states[..., slices["mixing_weight"]],
            masses.to(sums.dtype)[:, None, None],
            {"centroids": sums, "variances": centroid_states[..., slices["variance"]]},
            self.config,
        )
        new = centroid_states.clone()
        new[..., slices["position"]] = means
        new[..., slices["square_norm"]] = 0.0
        new[..., slices["variance"]] = variances
        new[..., slices["mixing_weight"]] = weights
        return new - centroid_states


def mixture_parameters(sums, square_sums, masses, num_points, previous, config):
    """
    The M-step of an isotropic Gaussian mixture from the sums `N_j` `(..., d)`, `S_j` and `R_j` `(..., 1)` over `n`
    points: `μ_j = N_j / R_j`, `σ_j^2 = (S_j / R_j - |μ_j|^2) / d + reg_covar`, `π_j = R_j / n`; a component with
    `R_j = 0` keeps `previous["centroids"]` and `previous["variances"]` (`(..., 1)`). Returns `(μ, σ^2, π)`.
    """
    has_mass = masses > 0
    safe_masses = torch.where(has_mass, masses, torch.ones_like(masses))
    means = torch.where(has_mass, sums / safe_masses, previous["centroids"])
    spread = (square_sums / safe_masses - (means * means).sum(dim=-1, keepdim=True)) / config.point_dim
    variances = torch.where(has_mass, spread + config.reg_covar, previous["variances"])
    if not bool((variances > 0).all()):
        raise ValueError(
            "A mixture component's variance collapsed to 0 (a component on a single point); build the model with "
            "reg_covar > 0 or start from other parameters."
        )
    return means, variances, masses / num_points


# ---------------------------------------------------------------------------------------------------------------------
# The learned layer (`variant="learned"`): the four blocks with trainable projections.
# ---------------------------------------------------------------------------------------------------------------------


class KMeansTransformerLearnedAttention:
    """
    A block of the learned layer, mixed in before the analytic block it learns from (`construction`): query, key,
    value and output projections all with biases and trained; queries and keys of width `D = hidden_size`; the
    distance softmax `softmax_j(-γ |q_i - k_j|^2 / sqrt(D))` (the `"kmeans_distance_softmax"` kernel, γ =
    `config.inverse_temperature`) unless the block sets another kernel.

    `analytic_projections` is the construction's, with the query and key maps padded by zero rows to width `D` and
    multiplied by `D^(1/4)`, so that `|q_i - k_j|^2 / sqrt(D)` is the construction's `|x_i - c_j|^2`: with
    `init_from="lloyd"` the layer starts as soft k-means at γ itself, no rescaling of γ needed. With
    `init_from="random"` `_init_weights` draws every projection as `nn.Linear` does.
    """

    trainable = True
    construction: type = KMeansTransformerAttention
    attention_function = "kmeans_distance_softmax"
    query_bias = key_bias = value_bias = output_bias = True

    @staticmethod
    def query_key_dim(config):
        return config.hidden_size

    @staticmethod
    def attention_scaling(config):
        return config.inverse_temperature / math.sqrt(config.hidden_size)

    def prepare_query_key(self, query, key):
        return query, key  # the kernel takes the distances itself

    @classmethod
    def analytic_projections(cls, config):
        width, scale = cls.query_key_dim(config), 1.0
        if cls.attention_function == "kmeans_distance_softmax":
            scale = width**0.25
        projections = {}
        for name, (weight, bias) in cls.construction.analytic_projections(config).items():
            rows = width if name in ("q_proj", "k_proj") else weight.shape[0]
            factor = scale if name in ("q_proj", "k_proj") else 1.0
            padded_weight, padded_bias = torch.zeros(rows, weight.shape[1]), torch.zeros(rows)
            padded_weight[: weight.shape[0]] = factor * weight
            if bias is not None:
                padded_bias[: bias.shape[0]] = factor * bias
            projections[name] = (padded_weight, padded_bias)
        return projections


class KMeansTransformerLearnedPointErase(KMeansTransformerLearnedAttention, KMeansTransformerPointErase):
    """Block 1 of the learned layer: each point attends to itself (weight 1), value and output trained."""

    construction = KMeansTransformerPointErase


class KMeansTransformerLearnedAssign(KMeansTransformerLearnedAttention, KMeansTransformerAssign):
    """
    Block 2 of the learned layer: points attend to the centroids with the distance softmax. Starts (`"lloyd"`) as
    `q_i = D^(1/4) x_i`, `k_j = D^(1/4) c_j`, value `e_j`: `y_i` holds soft k-means' responsibilities at γ.
    """

    construction = KMeansTransformerSoftAssign


class KMeansTransformerLearnedCentroidErase(KMeansTransformerLearnedAttention, KMeansTransformerCentroidErase):
    """Block 3 of the learned layer: each centroid attends to itself (weight 1), value and output trained."""

    construction = KMeansTransformerCentroidErase


class KMeansTransformerLearnedUpdate(KMeansTransformerLearnedAttention, KMeansTransformerSoftUpdate):
    """
    Block 4 of the learned layer: each centroid attends to every real point and to its own token by normalised
    linear attention on the scores clamped at 0, `w_ij = max(q_j.k_i, 0) / Σ_i' max(q_j.k_i', 0)` (a softmax over
    linear maps of the tokens cannot weight the points by their responsibilities, so it could not start as soft
    k-means). Starts (`"lloyd"`) as soft k-means' update: query `e_j`, key `y_i` for a point and `e_j' - 1` for a
    centroid token (the `is_centroid` flag subtracts 1 from every entry, so its score is 0 and it has no weight),
    value `x_i` for a point, the `previous` slot for a centroid token. The own token lets training mix the entering
    centroid in. A row whose clamped scores are all 0 (at the start: a cluster whose responsibilities all underflow)
    gets zero weights, and the centroid becomes the output bias (0 at the start).
    """

    construction = KMeansTransformerSoftUpdate
    attention_function = "kmeans_linear"
    nonnegative_scores = True  # read by `linear_attention_forward`
    sums_over_points = False

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        projections["k_proj"][0][: config.num_clusters, config.token_slices["is_centroid"]] = -1.0
        return projections

    def forward(self, centroid_states, point_states, point_mask, **kwargs):
        k = centroid_states.shape[1]
        own_token = torch.eye(k, dtype=torch.bool, device=point_mask.device).expand(point_mask.shape[0], -1, -1)
        attention_mask = torch.cat([point_mask[:, None, :].expand(-1, k, -1), own_token], dim=-1)[:, None]
        memory = torch.cat([point_states, centroid_states], dim=1)
        return KMeansTransformerAttention.forward(self, centroid_states, memory, attention_mask, **kwargs)
