# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch k-means transformer: Lloyd's algorithm and its variants written exactly as attention and residual connections.

Points and centroids are tokens of one width (see `KMeansTransformerConfig.token_slices`):

    point token     p_i = [x_i ; y_i ; 0 ; 0 ; ...]     y_i: the assignment slot, 0 at the start
    centroid token  q_j = [c_j ; e_j ; c'_j ; 1 ; ...]  e_j: the cluster's identity, never changed; c'_j: previous centroid

One layer is one iteration, blocks each added to its stream by a residual connection (Lloyd's algorithm shown):

    1. point erase     p_i <- p_i + Attn_self(p_i)                 = [x_i ; 0 ; ...]
    2. assign          p_i <- p_i + Attn(p_i -> centroids)          = [x_i ; e_a(i) ; ...],  a(i) = argmin_j |x_i - c_j|^2
    3. centroid erase  q_j <- q_j + Attn_self(q_j)                  = [0 ; e_j ; c_j ; 1]
    4. update          q_j <- q_j + Attn(q_j -> points, centroids)  = [mean of S_j, or c_j if S_j is empty ; e_j ; c_j ; 1]

The variants change one piece each: the assign kernel (softmax for "soft" and "gmm"), the score (cosine for
"spherical", a Gaussian log-density for "gmm"), a gate on the point stream ("trimmed"), the update kernel and score
(sparsemax for "sparse", an argmin of summed distances or a Gumbel-max draw for "kmedoids", linear attention for "soft"
and "gmm"), or a feed-forward step on the centroid stream (unit normalisation for "spherical", the M-step for "gmm").
Under the exact `"hardmax"` attention (the default) the argmax blocks are exact; under softmax (`"eager"`, `"sdpa"`)
they run at inverse temperature `config.inverse_temperature`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .cpu_kernels import nearest_values, segment_sums
from .configuration_kmeans_transformer import KMeansTransformerConfig


logger = logging.get_logger(__name__)

BLOCK_NAMES = ("point_erase", "assign", "centroid_erase", "update")


@dataclass
class KMeansTransformerOutput(ModelOutput):
    r"""
    labels (`torch.LongTensor` of shape `(batch_size, num_points)`):
        Cluster of each point under the returned centroids (nearest centroid, lowest index on ties; largest cosine for
        `"spherical"`; largest responsibility for `"soft"` and `"gmm"`, where responsibilities equal in real arithmetic
        may round either way); -1 for padded points and trimmed outliers.
    centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)`):
        The centroids (medoids for `"kmedoids"`, means for `"gmm"`) after the last layer.
    inertia (`torch.FloatTensor` of shape `(batch_size,)`):
        Sum over labelled points of the squared distance to the centroid of their label (the k-means objective; on the
        unit-normalised points for `"spherical"`).
    assignments (`torch.FloatTensor` of shape `(batch_size, num_points, num_clusters)`):
        The assign attention of the returned centroids: one-hot rows under hardmax, responsibilities under softmax
        (`"soft"`, `"gmm"`), zero rows for padded points and trimmed outliers.
    outliers (`torch.BoolTensor` of shape `(batch_size, num_points)`, *optional*):
        `"trimmed"`: the points trimmed under the returned centroids.
    weights (`torch.FloatTensor` of shape `(batch_size, num_clusters)`, *optional*):
        `"gmm"`: the mixing weights `π_j`.
    variances (`torch.FloatTensor` of shape `(batch_size, num_clusters)`, *optional*):
        `"gmm"`: the per-component variances `σ_j^2`.
    responsibilities (`torch.FloatTensor` of shape `(batch_size, num_points, num_clusters)`, *optional*):
        `"soft"` and `"gmm"`: the responsibilities of the returned parameters (the same tensor as `assignments`).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The tokens as embedded and after each layer (`num_iterations + 1` states), each of shape
        `(batch_size, num_points + num_clusters, hidden_size)`: the point tokens first, then the centroid tokens
        (`point_hidden_states` and `centroid_hidden_states` split them).
    attentions (`tuple(tuple(torch.FloatTensor))`, *optional*, returned when `output_attentions=True`):
        One tuple per layer holding the weights of its four attention blocks, in the order `BLOCK_NAMES`: point
        erase `(batch_size, 1, num_points, 1)` (each token's weight on itself), assign `(batch_size, 1, num_points,
        num_clusters)`, centroid erase `(batch_size, 1, num_clusters, 1)` and update `(batch_size, 1, num_clusters,
        num_points + num_clusters)` (on the points, then on the centroid tokens). Empty under `"sdpa"`, which returns
        no weights.
    point_erase_attentions, assign_attentions, centroid_erase_attentions, update_attentions (`tuple(torch.FloatTensor)`, *optional*):
        The same weights per block, one entry per layer.
    """

    labels: torch.LongTensor | None = None
    centroids: torch.FloatTensor | None = None
    inertia: torch.FloatTensor | None = None
    assignments: torch.FloatTensor | None = None
    outliers: torch.BoolTensor | None = None
    weights: torch.FloatTensor | None = None
    variances: torch.FloatTensor | None = None
    responsibilities: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None
    point_erase_attentions: tuple[torch.FloatTensor, ...] | None = None
    assign_attentions: tuple[torch.FloatTensor, ...] | None = None
    centroid_erase_attentions: tuple[torch.FloatTensor, ...] | None = None
    update_attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def point_hidden_states(self) -> tuple[torch.FloatTensor, ...] | None:
        """The point stream of `hidden_states`: the `(batch_size, num_points, hidden_size)` point tokens per state."""
        if self.hidden_states is None:
            return None
        return tuple(state[:, : self.labels.shape[1]] for state in self.hidden_states)

    @property
    def centroid_hidden_states(self) -> tuple[torch.FloatTensor, ...] | None:
        """The centroid stream of `hidden_states`: the `(batch_size, num_clusters, hidden_size)` centroid tokens per state."""
        if self.hidden_states is None:
            return None
        return tuple(state[:, self.labels.shape[1] :] for state in self.hidden_states)


# ---------------------------------------------------------------------------------------------------------------------
# Attention kernels: the eager signature, `(module, query, key, value, attention_mask, ...) -> (output, weights)`, with
# `query` `(batch, heads, q_len, head_dim)`, `key` `(batch, heads, kv_len, head_dim)`, `value` `(batch, heads, kv_len,
# value_dim)` and a boolean `attention_mask` broadcastable to `(batch, heads, q_len, kv_len)`, True where attending.
# A query row that sees no key gets all-zero weights. Scores are `s_ij = scaling * query_i . key_j`.
# ---------------------------------------------------------------------------------------------------------------------


def _masked_scores(query, key, attention_mask, scaling):
    scores = torch.matmul(query, key.transpose(-1, -2))
    if scaling is not None and scaling != 1:
        scores = scores * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    return scores


def _attend(weights, value, attention_mask):
    """Zero the rows that see no key, then `(weights @ value)` as `(batch, q_len, heads, value_dim)`."""
    if attention_mask is not None:
        weights = weights.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention: `weights_i = softmax_j(s_ij)` over the visible keys."""
    weights = torch.softmax(_masked_scores(query, key, attention_mask, scaling), dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return _attend(weights, value, attention_mask)


def hardmax_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The exact `γ -> ∞` limit of softmax attention. With `M_i = argmax_j s_ij` over the visible keys:

    - `module.hardmax_ties == "average"` (the limit itself): `weights_ij = 1 / |M_i|` for `j` in `M_i`, else 0;
    - `module.hardmax_ties == "first"`: `weights_ij = 1` for the lowest index in `M_i`, else 0 (an argmax that breaks
      ties like Lloyd's argmin).

    A positive `scaling` does not change the maximisers and is ignored.
    """
    scores = _masked_scores(query, key, attention_mask, None)
    if getattr(module, "hardmax_ties", "average") == "first":
        weights = nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(value.dtype)
        return _attend(weights, value, attention_mask)
    maximisers = (scores == scores.amax(dim=-1, keepdim=True)).to(value.dtype)
    if attention_mask is not None:
        maximisers = maximisers.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    counts = maximisers.sum(dim=-1, keepdim=True).clamp(min=1)
    # the sum of the maximisers' values divided by their number: the mean as a sum and one rounding per coordinate
    output = (torch.matmul(maximisers, value) / counts).transpose(1, 2).contiguous()
    return output, maximisers / counts


def chunked_hardmax_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    `hardmax_attention_forward` in blocks of query rows, without its `(q_len, kv_len)` weights: each block's scores
    are the same products of the same queries and keys, so its maximisers, and its output, are those of the dense
    kernel. At most `module.config.score_chunk_size` scores are held at once. With `"first"` ties the output is the
    maximiser's value, gathered (the dense kernel's one-hot product gives the same numbers); on CPU, when the mask
    hides whole query rows only, the compiled `cpu_kernels.nearest_values` finds and gathers them without storing
    the scores (rounded in its own order, so only near-ties could resolve otherwise). Returns no weights.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_len = key.shape[-2]
    budget = getattr(getattr(module, "config", None), "score_chunk_size", None)
    budget = budget or (2**22 if query.device.type == "cpu" else 2**28)
    rows = max(1, budget // max(1, batch * heads * kv_len))
    first = getattr(module, "hardmax_ties", "average") == "first"
    if first and (attention_mask is None or attention_mask.shape[-1] == 1):
        output = nearest_values(
            query.reshape(batch * heads, q_len, head_dim),
            key.expand(batch, heads, kv_len, head_dim).reshape(batch * heads, kv_len, head_dim),
            value.expand(batch, heads, kv_len, value.shape[-1]).reshape(batch * heads, kv_len, -1),
            block_rows=max(1, min(rows, 4096, max(16, 2**16 // max(1, kv_len)))),
        )
        if output is not None:
            output = output.reshape(batch, heads, q_len, -1)
            if attention_mask is not None:
                output = output.masked_fill(~attention_mask, 0.0)
            return output.transpose(1, 2).contiguous(), None
    outputs = []
    for start in range(0, q_len, rows):
        block = slice(start, start + rows)
        mask = attention_mask
        if mask is not None and mask.shape[-2] != 1:
            mask = mask[..., block, :]
        scores = _masked_scores(query[:, :, block], key, mask, None)
        if first:
            index = scores.argmax(dim=-1, keepdim=True).expand(*scores.shape[:-1], value.shape[-1])
            output = value.expand(*scores.shape[:2], -1, -1).gather(2, index)
            if mask is not None:
                output = output.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
            outputs.append(output.transpose(1, 2))
        else:
            maximisers = (scores == scores.amax(dim=-1, keepdim=True)).to(value.dtype)
            if mask is not None:
                maximisers = maximisers.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
            counts = maximisers.sum(dim=-1, keepdim=True).clamp(min=1)
            outputs.append((torch.matmul(maximisers, value) / counts).transpose(1, 2))
    return torch.cat(outputs, dim=1).contiguous(), None


def index_hardmax_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    Hardmax attention between one-hot codes given in index form (as `input_ids` stand for one-hot rows): `query`
    `(batch, heads, q_len, 1)` and `key` `(batch, heads, kv_len, 1)` hold integer codes (-1 for the zero code), so
    `s_ij = [key_j = query_i]`. `attention_mask` is a key-padding mask broadcastable to `(batch, heads, 1, kv_len)`.
    Query `i`'s maximisers are its matching visible keys, or, when none matches, every visible key (all score 0),
    and the output is the sum of their values divided by their number (0 when no key is visible): the dense hardmax
    kernel's output, computed by index-add in `O(kv_len * value_dim)` without the `(q_len, kv_len)` scores. Returns no
    weights.
    """
    batch, heads, q_len, _ = query.shape
    kv_len, value_dim = key.shape[-2], value.shape[-1]
    groups = batch * heads
    query_codes = query.reshape(groups, q_len).long()
    key_codes = key.expand(batch, heads, kv_len, 1).reshape(groups, kv_len).long()
    values = value.expand(batch, heads, kv_len, value_dim).reshape(groups, kv_len, value_dim)
    visible = None if attention_mask is None else attention_mask.expand(batch, heads, 1, kv_len).reshape(groups, kv_len)
    num_codes = int(query_codes.max()) + 1 if query_codes.numel() else 0
    compiled = segment_sums(values, key_codes, visible, num_codes)
    if compiled is not None:
        sums, counts = compiled
    else:  # one bin per (group, code), and a last bin for the keys that match no code
        matched = (key_codes >= 0) & (key_codes < num_codes)
        if visible is not None:
            matched &= visible
        offsets = torch.arange(groups, device=key.device)[:, None] * num_codes
        bins = torch.where(matched, key_codes + offsets, groups * num_codes).reshape(-1)
        flat_values = values.reshape(groups * kv_len, value_dim)
        sums = value.new_zeros(groups * num_codes + 1, value_dim).index_add_(0, bins, flat_values)[:-1]
        counts = torch.bincount(bins, minlength=groups * num_codes + 1)[:-1]
        sums, counts = sums.reshape(groups, num_codes, value_dim), counts.reshape(groups, num_codes)
    safe_codes = query_codes.clamp(min=0)
    query_sums = sums.gather(1, safe_codes[..., None].expand(-1, -1, value_dim))
    query_counts = counts.gather(1, safe_codes)
    has_match = (query_counts > 0) & (query_codes >= 0)
    if not bool(has_match.all()):  # an unmatched query averages every visible key (all score 0)
        weights = torch.ones(groups, kv_len, 1, dtype=value.dtype, device=value.device)
        if visible is not None:
            weights = visible[..., None].to(value.dtype)
        all_sums, all_counts = (values * weights).sum(dim=1), weights[..., 0].sum(dim=1).long()
        query_sums = torch.where(has_match[..., None], query_sums, all_sums[:, None])
        query_counts = torch.where(has_match, query_counts, all_counts[:, None])
    output = query_sums / query_counts.clamp(min=1).to(value.dtype)[..., None]
    return output.reshape(batch, heads, q_len, value_dim).transpose(1, 2).contiguous(), None


def linear_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Linear attention on non-negative scores: `weights_ij = s_ij / Σ_j' s_ij'` over the visible keys (normalised), or
    `weights_ij = s_ij` when `module.normalize_weights` is False (sums). A row whose scores sum to 0 gets zero weights.
    """
    scores = torch.matmul(query, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, 0.0)
    if getattr(module, "normalize_weights", True):
        total = scores.sum(dim=-1, keepdim=True)
        scores = scores / torch.where(total == 0, torch.ones_like(total), total)
    return _attend(scores, value, attention_mask)


def sparsemax_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Sparsemax attention (Martins & Astudillo, 2016), the Euclidean projection of the scores onto the simplex:
    `weights_ij = max(s_ij - τ_i, 0)` with `τ_i` such that the weights sum to 1. With the visible scores sorted
    decreasingly `z_(1) >= z_(2) >= ...`, the support size is `K = max{r : 1 + r z_(r) > Σ_{s<=r} z_(s)}` and
    `τ = (Σ_{s<=K} z_(s) - 1) / K`. Low scores get exactly zero weight.
    """
    scores = _masked_scores(query, key, attention_mask, scaling)
    ordered = scores.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(dim=-1)
    ranks = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
    support = (1 + ranks * ordered > cumulative).sum(dim=-1, keepdim=True).clamp(min=1)
    threshold = (cumulative.gather(-1, support - 1) - 1) / support
    weights = (scores - threshold).clamp(min=0).nan_to_num(0.0)
    return _attend(weights, value, attention_mask)


def gumbel_max_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A one-hot draw from `softmax_j(s_ij)` over the visible keys by the Gumbel-max trick: `weights_ij = 1` for
    `j = argmax_j (s_ij + g_ij)`, `g_ij` independent standard Gumbel noise from `generator` (the global generator if
    None), so a seeded generator makes the draw reproducible.
    """
    scores = _masked_scores(query, key, attention_mask, scaling)
    uniform = torch.rand(scores.shape, generator=generator, dtype=scores.dtype, device=scores.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(scores.dtype).tiny)))
    weights = nn.functional.one_hot((scores + gumbel).argmax(dim=-1), scores.shape[-1]).to(value.dtype)
    return _attend(weights, value, attention_mask)


def distance_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Distance-weighted sums: `weights_ij = |query_i - key_j|` (Euclidean) on the visible keys, 0 elsewhere, and
    `output_i = Σ_j weights_ij value_j`. Computed in chunks of queries so that no `(q_len, kv_len, head_dim)` tensor
    is held at once; returns no weights.
    """
    batch, heads, q_len, _ = query.shape
    chunk = max(1, 2**22 // max(1, key.shape[-2] * key.shape[-1]))
    outputs = []
    for start in range(0, q_len, chunk):
        stop = min(start + chunk, q_len)
        difference = query[:, :, start:stop, None, :] - key[:, :, None, :, :]
        weights = (difference * difference).sum(dim=-1).sqrt()
        if attention_mask is not None:
            mask = attention_mask.expand(batch, heads, q_len, -1)[:, :, start:stop]
            weights = weights.masked_fill(~mask, 0.0)
        outputs.append(torch.matmul(weights, value))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


for _name, _function in (
    ("hardmax", hardmax_attention_forward),
    ("hardmax_chunked", chunked_hardmax_attention_forward),
    ("hardmax_index", index_hardmax_attention_forward),
    ("linear_attention", linear_attention_forward),
    ("sparsemax", sparsemax_attention_forward),
    ("gumbel_max", gumbel_max_attention_forward),
    ("distance", distance_attention_forward),
):
    AttentionInterface.register(_name, _function)


def augment_for_squared_distance(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Augmented query `[x ; 1]` and key `[2c ; -|c|^2]`, whose dot product `2 x.c - |c|^2 = |x|^2 - |x - c|^2` ranks
    the keys like the negative squared distance (`|x|^2` is the same for every key), so the distance kernel runs
    through any standard attention kernel. Shapes `(..., dim)` -> `(..., dim + 1)`.
    """
    return torch.cat([query, torch.ones_like(query[..., :1])], dim=-1), squared_distance_key(key)


def squared_distance_key(key: torch.Tensor) -> torch.Tensor:
    """The key `[2c ; -|c|^2]` of `augment_for_squared_distance`."""
    return torch.cat([2 * key, -(key * key).sum(dim=-1, keepdim=True)], dim=-1)


def augment_for_negative_squared_distance(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Augmented query `[2c ; -1 ; -|c|^2]` and key `[x ; |x|^2 ; 1]`, whose dot product is `-|x - c|^2` itself (for
    kernels that are not shift-invariant per query, or whose scores are reported). Shapes `(..., dim)` ->
    `(..., dim + 2)`.
    """
    query = torch.cat([2 * query, -torch.ones_like(query[..., :1]), -(query * query).sum(dim=-1, keepdim=True)], dim=-1)
    key = torch.cat([key, (key * key).sum(dim=-1, keepdim=True), torch.ones_like(key[..., :1])], dim=-1)
    return query, key


def gaussian_log_density_key(key: torch.Tensor) -> torch.Tensor:
    """
    From a component's `[μ ; σ^2 ; π]` `(..., d + 2)`, the key `[μ / σ^2 ; -1 / (2σ^2) ; log π - (d/2) log σ^2 -
    |μ|^2 / (2σ^2)]`, whose dot product with the query `[x ; |x|^2 ; 1]` is the isotropic Gaussian log-density
    `log π - (d/2) log σ^2 - |x - μ|^2 / (2σ^2)` up to the constant `-(d/2) log 2π`.
    """
    mean, variance, weight = key[..., :-2], key[..., -2:-1], key[..., -1:]
    precision = 1 / variance
    bias = torch.log(weight) - 0.5 * mean.shape[-1] * torch.log(variance) - 0.5 * precision * (mean * mean).sum(-1, keepdim=True)
    return torch.cat([mean * precision, -0.5 * precision, bias], dim=-1)


def unit_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """`x / |x|` along the last dimension; the zero vector stays 0."""
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    return vectors / torch.where(norms > 0, norms, torch.ones_like(norms))


# ---------------------------------------------------------------------------------------------------------------------
# Modules. Each module that holds projections says how they realise the construction in `analytic_projections`, which
# `KMeansTransformerPreTrainedModel._init_weights` writes into its `nn.Linear`s.
# ---------------------------------------------------------------------------------------------------------------------


def _projection(out_features: int, in_features: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.zeros(out_features, in_features), (torch.zeros(out_features) if bias else None)


def _tag(module: nn.Module, *names: str) -> None:
    """Mark `module`'s `nn.Linear`s as analytic: `_init_weights` reads them from `type(module).analytic_projections`."""
    for name in names:
        getattr(module, name).analytic_key = (type(module), name)


class KMeansTransformerEmbeddings(nn.Module):
    """
    Tokens from coordinates: point token `[x_i ; 0 ; 0 ; 0 ; ...]`, centroid token `[c_j ; e_j ; 0 ; 1 ; ...]`.
    `position_embedding` writes the coordinates into the position slice; `cluster_embeddings` `(num_clusters,
    hidden_size)` adds each centroid's identity `e_j` and the centroid flag. `"spherical"` first normalises points and
    centroids to unit norm; `"gmm"` writes `|x_i|^2` into the points' `square_norm` slot and the initial variances and
    mixing weights into the centroids' `variance` and `mixing_weight` slots.

    With `config.fitted_centroids`, it also holds the fitted centroids `fitted_centroids` `(num_clusters, point_dim)`
    (and for `"gmm"` the fitted `fitted_variances` and `fitted_weights`, `(num_clusters,)`): the model's default
    initial parameters, written by a fitted [`KMeans`] estimator (initialised to 0, 1 and 1/k).
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.normalize = config.variant == "spherical"
        self.position_embedding = nn.Linear(config.point_dim, config.hidden_size, bias=False)
        self.cluster_embeddings = nn.Parameter(torch.empty(config.num_clusters, config.hidden_size))
        _tag(self, "position_embedding")
        if config.fitted_centroids:
            self.fitted_centroids = nn.Parameter(torch.empty(config.num_clusters, config.point_dim))
            if config.variant == "gmm":
                self.fitted_variances = nn.Parameter(torch.empty(config.num_clusters))
                self.fitted_weights = nn.Parameter(torch.empty(config.num_clusters))

    def fitted_parameters(self) -> dict[str, torch.Tensor]:
        """The stored fitted parameters by forward argument name (`centroids`, `variances`, `weights`), if any."""
        names = {"centroids": "fitted_centroids", "variances": "fitted_variances", "weights": "fitted_weights"}
        return {argument: getattr(self, name) for argument, name in names.items() if hasattr(self, name)}

    @staticmethod
    def analytic_projections(config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, None]]:
        weight = torch.zeros(config.hidden_size, config.point_dim)
        weight[config.token_slices["position"]] = torch.eye(config.point_dim)
        return {"position_embedding": (weight, None)}

    @staticmethod
    def analytic_cluster_embeddings(config: KMeansTransformerConfig) -> torch.Tensor:
        slices = config.token_slices
        embeddings = torch.zeros(config.num_clusters, config.hidden_size)
        embeddings[:, slices["code"]] = torch.eye(config.num_clusters)
        embeddings[:, slices["is_centroid"]] = 1.0
        return embeddings

    def forward(
        self, points: torch.Tensor, centroids: torch.Tensor, slot_values: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """
        `(batch, n, d)`, `(batch, k, d)` -> `(batch, n + k, hidden_size)`, points first. `slot_values` maps a slot
        name to `(batch, n + k, width)` values written into it (the variant's extra coordinates).
        """
        if self.normalize:
            points, centroids = unit_normalize(points), unit_normalize(centroids)
        point_tokens = self.position_embedding(points)
        centroid_tokens = self.position_embedding(centroids) + self.cluster_embeddings
        tokens = torch.cat([point_tokens, centroid_tokens], dim=1)
        for name, values in (slot_values or {}).items():
            tokens[..., self.config.token_slices[name]] = values
        return tokens


class KMeansTransformerAttention(nn.Module):
    """
    One-head attention with `q_proj`, `k_proj`, `v_proj` and `o_proj`. Subclasses fix which tokens attend to which,
    the analytic projections, and the kernel: `attention_function = None` is an argmax block that runs the model's
    `config._attn_implementation` (exact `"hardmax"` by default, softmax at `γ` under `"eager"`/`"sdpa"`);
    `"softmax"` is the model's softmax kernel (`"eager"` when the model runs `"hardmax"`); any other name is a kernel
    registered with transformers' `AttentionInterface`, used whatever the model's implementation.
    """

    attention_function: str | None = None
    hardmax_ties = "average"  # read by `hardmax_attention_forward`
    query_bias = False
    value_bias = False

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
        self.k_proj = nn.Linear(width, head_dim, bias=False)
        self.v_proj = nn.Linear(width, width, bias=self.value_bias)
        self.o_proj = nn.Linear(width, width, bias=False)
        _tag(self, "q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def analytic_projections(cls, config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Zero query, key and value maps, identity output map; subclasses set what differs."""
        width, head_dim = config.hidden_size, cls.query_key_dim(config)
        return {
            "q_proj": _projection(head_dim, width, cls.query_bias),
            "k_proj": _projection(head_dim, width, False),
            "v_proj": _projection(width, width, cls.value_bias),
            "o_proj": (torch.eye(width), None),
        }

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
        elif name == "softmax":
            name = implementation if implementation != "hardmax" else ("eager" if need_weights else "sdpa")
        return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)

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
        that sees no key gets a zero output whatever the kernel.
        """
        query = self.q_proj(query_states).unsqueeze(1)
        key = self.k_proj(key_value_states).unsqueeze(1)
        value = self.v_proj(key_value_states).unsqueeze(1)
        query, key = self.prepare_query_key(query, key)
        attn_output, attn_weights = self.attention_interface(need_weights)(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
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

    erased_slices: tuple[str, ...] = ()
    moved_slices: tuple[tuple[str, str], ...] = ()

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        value, slices = projections["v_proj"][0], config.token_slices
        for name in cls.erased_slices:
            if name in slices:
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
    point slots (`assigned`, `distance`, `outlier`, `medoid_cost`), so after the residual `p_i = [x_i ; 0 ; ...]`.
    """

    erased_slices = ("code", "assigned", "distance", "outlier", "medoid_cost")


class KMeansTransformerCentroidErase(KMeansTransformerErase):
    """
    Block 3. Centroid `j` attends to itself; its value moves `c_j` from the position slice into `previous` (and, for
    `"gmm"`, clears the mixing weight), so after the residual `q_j = [0 ; e_j ; c_j ; 1 ; ...]`.
    """

    erased_slices = ("mixing_weight",)
    moved_slices = (("position", "previous"),)


class KMeansTransformerAssign(KMeansTransformerAttention):
    """
    Block 2, cross-attention from points to centroids. Query `[x_i ; 1]`, key `[2 c_j ; -|c_j|^2]` (built by
    `augment_for_squared_distance` from `q_proj(p_i) = x_i` and `k_proj(q_j) = c_j`), score `γ (|x_i|^2 - |x_i -
    c_j|^2)`; value `[0 ; e_j ; ...]`. Under hardmax, ties go to the lowest cluster index, so after the residual `p_i =
    [x_i ; e_a(i) ; ...]` with `a(i)` Lloyd's argmin. Padded points attend to nothing. Weights `(batch, 1, n, k)`.
    """

    hardmax_ties = "first"

    @staticmethod
    def query_key_dim(config):
        return config.point_dim

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        position, code = config.token_slices["position"], config.token_slices["code"]
        projections["q_proj"][0][:, position] = torch.eye(config.point_dim)
        projections["k_proj"][0][:, position] = torch.eye(config.point_dim)
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
        c_j`). The same queries and keys through the `"hardmax_chunked"` kernel, with the value `v_j = j`, the index
        form of the code `e_j`, so the output is the label `a(i)` itself. Compact point tokens `[x_i ; 1]` `(batch,
        n, d + 1)` and centroids `(batch, k, d)` -> labels `(batch, n)`, -1 for padded points (`point_mask` None:
        every point is real).
        """
        batch_size, num_clusters = centroids.shape[:2]
        query, key = self.compact_query_key(point_tokens, centroids)
        codes = torch.arange(num_clusters, device=centroids.device)[None, None, :, None].expand(batch_size, 1, -1, -1)
        attention_mask = None if point_mask is None else point_mask[:, None, :, None]
        labels, _ = ALL_ATTENTION_FUNCTIONS["hardmax_chunked"](
            self, query.unsqueeze(1), key.unsqueeze(1), codes, attention_mask
        )
        labels = labels[..., 0, 0]
        return labels if point_mask is None else labels.masked_fill(~point_mask, -1)


class KMeansTransformerSoftAssign(KMeansTransformerAssign):
    """`"soft"`: the assign block under softmax at `γ`: `y_i` holds the responsibilities `r_ij = softmax_j(-γ |x_i - c_j|^2)`."""

    attention_function = "softmax"


class KMeansTransformerCosineAssign(KMeansTransformerAssign):
    """`"spherical"`: score `x_i . c_j`, the cosine of unit vectors; under hardmax `a(i)` is the largest cosine (first on ties)."""

    def prepare_query_key(self, query, key):
        return query, key

    def compact_query_key(self, point_tokens, centroids):
        return point_tokens[..., :-1], centroids


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
        projections = super(KMeansTransformerAssign, cls).analytic_projections(config)
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
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.distance_proj = nn.Linear(config.hidden_size, config.point_dim, bias=False)
        _tag(self, "distance_proj")

    @staticmethod
    def analytic_projections(config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, None]]:
        slices = config.token_slices
        weight = torch.zeros(config.point_dim, config.hidden_size)
        weight[:, slices["position"]] = torch.eye(config.point_dim)
        weight[:, slices["assigned"]] = -torch.eye(config.point_dim)
        return {"distance_proj": (weight, None)}

    def forward(self, point_states: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        slices = self.config.token_slices
        difference = self.distance_proj(point_states)
        distance = (difference * difference).sum(dim=-1)
        codes = point_states[..., slices["code"]]
        assigned = point_mask & (codes.amax(dim=-1) > 0)
        if self.config.trim_quantile is not None:
            trimmed = assigned & (distance > self.cluster_quantiles(distance, codes.argmax(dim=-1), assigned))
        else:
            trimmed = self.largest_fraction(distance, assigned)
        new = point_states.clone()
        new[..., slices["distance"]] = distance[..., None]
        new[..., slices["code"]] = codes.masked_fill(trimmed[..., None], 0.0)
        new[..., slices["outlier"]] = trimmed[..., None].to(point_states.dtype)
        return new - point_states

    def cluster_quantiles(self, distance, labels, assigned) -> torch.Tensor:
        """For every point, the `trim_quantile` quantile of the distances in its cluster, `(batch, n)`."""
        k = self.config.num_clusters
        members = nn.functional.one_hot(labels, k).bool() & assigned[..., None]
        values = distance[:, None, :].expand(-1, k, -1).masked_fill(~members.transpose(1, 2), float("inf"))
        ordered = values.sort(dim=-1).values
        counts = members.sum(dim=1)
        position = self.config.trim_quantile * (counts - 1).clamp(min=0).to(torch.float64)
        below = position.floor().long()
        above = torch.minimum(below + 1, (counts - 1).clamp(min=0))
        fraction = (position - below).to(distance.dtype)
        low, high = ordered.gather(-1, below[..., None])[..., 0], ordered.gather(-1, above[..., None])[..., 0]
        step = torch.where(fraction > 0, high - low, torch.zeros_like(low))
        quantiles = torch.where(fraction < 0.5, low + fraction * step, high - step * (1 - fraction))
        return quantiles.gather(1, labels)

    def largest_fraction(self, distance, assigned) -> torch.Tensor:
        """The `floor(trim_fraction * n)` points with the largest distances (stable order), `(batch, n)` bool."""
        counts = assigned.sum(dim=1)
        num_trimmed = torch.floor(self.config.trim_fraction * counts.to(torch.float64)).long()
        order = distance.masked_fill(~assigned, float("inf")).argsort(dim=-1, stable=True)
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        return assigned & (ranks >= (counts - num_trimmed)[:, None])


class KMeansTransformerMedoidCost(KMeansTransformerAttention):
    """
    Deterministic `"kmedoids"`, self-attention among the points of one cluster under the `"distance"` kernel (weights
    `|x_i - x_i'|`): query = key = `x_i`, value 1 on the `medoid_cost` slot (the `v_proj` bias), so the slot holds
    `cost_i = Σ_{i' : a(i') = a(i)} |x_i - x_i'|`, the summed distance to the point's cluster.
    """

    attention_function = "distance"
    value_bias = True

    @staticmethod
    def query_key_dim(config):
        return config.point_dim

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        slices = config.token_slices
        projections["q_proj"][0][:, slices["position"]] = torch.eye(config.point_dim)
        projections["k_proj"][0][:, slices["position"]] = torch.eye(config.point_dim)
        projections["v_proj"][1][slices["medoid_cost"]] = 1.0
        return projections

    def forward(self, point_states: torch.Tensor, point_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        codes = point_states[..., self.config.token_slices["code"]]
        labels = codes.argmax(dim=-1).masked_fill(~point_mask | (codes.amax(dim=-1) <= 0), -1)
        same_cluster = (labels[:, :, None] == labels[:, None, :]) & (labels >= 0)[:, :, None]
        return super().forward(point_states, point_states, same_cluster[:, None], **kwargs)[0]


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

    def forward(self, centroid_states, point_states, point_mask, **kwargs):
        k = centroid_states.shape[1]
        codes = point_states[..., self.config.token_slices["code"]]
        weighted = (codes > 0) & point_mask[..., None]
        if self.candidates == "members":
            visible_points = weighted.transpose(1, 2)
        else:
            visible_points = point_mask[:, None, :].expand(-1, k, -1)
        identity = torch.eye(k, dtype=torch.bool, device=point_mask.device)
        own_token = identity[None] & ~weighted.any(dim=1)[:, :, None]
        attention_mask = torch.cat([visible_points, own_token], dim=-1)[:, None]
        memory = torch.cat([point_states, centroid_states], dim=1)
        return super().forward(centroid_states, memory, attention_mask, **kwargs)

    def update_from_labels(
        self, tokens: torch.Tensor, labels: torch.LongTensor, point_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """
        The fast path (`"lloyd"`, `"spherical"`): this block on the compact state, for the analytic weights. The
        compact tokens `(batch, n + k, d + 1)` (`[x_i ; 1]` for points, `[c_j ; 1]` for centroids, `c_j` the centroid
        entering the iteration) are the values; the queries `e_j` and the keys `y_i` (points) and `e_j` (centroid
        tokens) are in index form, `j` and `a(i)`, through the `"hardmax_index"` kernel: the mean of each cluster's
        members. A centroid's own token is the dense block's too: it counts only for an empty cluster, where it is the
        one maximiser and keeps `c_j`. Here it carries the zero code (-1) when its cluster has members, scoring 0 below
        them, rather than being masked: the same maximisers, without a mask over every key. `(batch, k, d)`.
        """
        batch_size, num_clusters = tokens.shape[0], tokens.shape[1] - labels.shape[1]
        if point_mask is None:
            occupied = labels.new_zeros(batch_size, num_clusters, dtype=torch.bool).scatter_(1, labels, True)
        else:  # padded points (label -1) go to an extra column
            padded = labels.masked_fill(labels < 0, num_clusters)
            occupied = labels.new_zeros(batch_size, num_clusters + 1, dtype=torch.bool).scatter_(1, padded, True)
            occupied = occupied[:, :num_clusters]
        own = torch.arange(num_clusters, device=labels.device).expand(batch_size, -1)
        key = torch.cat([labels, own.masked_fill(occupied, -1)], dim=1)[:, None, :, None]
        attention_mask = None
        if point_mask is not None:
            attention_mask = torch.cat([point_mask, point_mask.new_ones(batch_size, num_clusters)], dim=1)
            attention_mask = attention_mask[:, None, None, :]
        new_centroids, _ = ALL_ATTENTION_FUNCTIONS["hardmax_index"](
            self, own[:, None, :, None], key, tokens[:, None], attention_mask
        )
        return new_centroids[:, :, 0, :-1]


class KMeansTransformerSoftUpdate(KMeansTransformerUpdate):
    """
    `"soft"`: normalised linear attention on the same scores, `c_j = Σ_i r_ij x_i / Σ_i r_ij` (a softmax update would
    not be soft k-means). A cluster whose responsibilities all underflow to 0 keeps `c_j`.
    """

    attention_function = "linear_attention"


class KMeansTransformerMixtureUpdate(KMeansTransformerUpdate):
    """
    `"gmm"`, the sums of the M-step: linear attention without normalisation on the responsibilities, with values
    `[x_i ; |x_i|^2 ; 1]` (the 1 is the `v_proj` bias minus `is_centroid`), so the centroid token receives
    `N_j = Σ_i r_ij x_i`, `S_j = Σ_i r_ij |x_i|^2` and `R_j = Σ_i r_ij` in its position, `square_norm` and
    `mixing_weight` slots. The M-step block turns them into parameters.
    """

    attention_function = "linear_attention"
    normalize_weights = False  # read by `linear_attention_forward`
    value_bias = True

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        slices = config.token_slices
        value_weight, value_bias = projections["v_proj"]
        value_weight[slices["square_norm"], slices["square_norm"]] = 1.0
        value_weight[slices["mixing_weight"], slices["is_centroid"]] = -1.0
        value_bias[slices["mixing_weight"]] = 1.0
        return projections


class KMeansTransformerMedoidUpdate(KMeansTransformerUpdate):
    """
    Deterministic `"kmedoids"`: the members only, scored `-cost_i` (query 1 from the `q_proj` bias, key `-cost_i`
    from the `medoid_cost` slot), under hardmax with the first maximiser: the new centre is the member with the least
    summed distance to its cluster, the first one on ties.
    """

    attention_function = "hardmax"
    hardmax_ties = "first"
    candidates = "members"
    query_bias = True

    @staticmethod
    def query_key_dim(config):
        return 1

    @staticmethod
    def write_score_projections(config, query, key_weight):
        query[1][0] = 1.0
        key_weight[0, config.token_slices["medoid_cost"]] = -1.0


class KMeansTransformerDistanceUpdate(KMeansTransformerUpdate):
    """
    An update over the members scored by the distance to the centroid entering the iteration: query `c_j` (from the
    `previous` slot), key `x_i`, augmented by `augment_for_negative_squared_distance` into the score `-|x_i - c_j|^2`,
    times `scaling`. The kernel makes the variant.
    """

    candidates = "members"

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

    attention_function = "sparsemax"

    @staticmethod
    def attention_scaling(config):
        return config.inverse_temperature / math.sqrt(config.point_dim)


class KMeansTransformerGumbelMedoidUpdate(KMeansTransformerDistanceUpdate):
    """Gumbel `"kmedoids"`: one member drawn with weights `softmax(-γ |x_i - c_j|^2)` by Gumbel-max: the new medoid."""

    attention_function = "gumbel_max"


class KMeansTransformerCentroidNorm(nn.Module):
    """
    `"spherical"`, a normalisation of the centroids' position slice: `c_j <- m_j / |m_j|` for the members' mean `m_j`.
    A mean of norm 0 (members that cancel) has no direction, and the centroid keeps its previous one (`previous`).
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config

    @staticmethod
    def normalize(mean: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """`m_j / |m_j|`, or `previous` where `m_j = 0`."""
        norm = torch.linalg.vector_norm(mean, dim=-1, keepdim=True)
        return torch.where(norm > 0, unit_normalize(mean), previous)

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
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config

    def forward(self, centroid_states: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        slices = self.config.token_slices
        sums, square_sums = centroid_states[..., slices["position"]], centroid_states[..., slices["square_norm"]]
        masses, variances = centroid_states[..., slices["mixing_weight"]], centroid_states[..., slices["variance"]]
        has_mass = masses > 0
        safe_masses = torch.where(has_mass, masses, torch.ones_like(masses))
        means = sums / safe_masses
        spread = (square_sums / safe_masses - (means * means).sum(dim=-1, keepdim=True)) / self.config.point_dim
        new_variances = torch.where(has_mass, spread + self.config.reg_covar, variances)
        if not bool((new_variances > 0).all()):
            raise ValueError(
                "A mixture component's variance collapsed to 0 (a component on a single point); build the model with "
                "reg_covar > 0 or start from other parameters."
            )
        new = centroid_states.clone()
        new[..., slices["position"]] = means
        new[..., slices["square_norm"]] = 0.0
        new[..., slices["variance"]] = new_variances
        new[..., slices["mixing_weight"]] = masses / point_mask.sum(dim=1).to(masses.dtype)[:, None, None]
        return new - centroid_states


def variant_blocks(config: KMeansTransformerConfig) -> dict:
    """
    The blocks of one iteration of `config.variant`: the assign and update attention classes, and the extra blocks
    on the point stream (after the assignment) and on the centroid stream (after the update).
    """
    blocks = {
        "lloyd": (KMeansTransformerAssign, {}, KMeansTransformerUpdate, {}),
        "soft": (KMeansTransformerSoftAssign, {}, KMeansTransformerSoftUpdate, {}),
        "spherical": (
            KMeansTransformerCosineAssign, {}, KMeansTransformerUpdate, {"centroid_norm": KMeansTransformerCentroidNorm}
        ),
        "trimmed": (KMeansTransformerTrimmedAssign, {"trim_gate": KMeansTransformerTrimGate}, KMeansTransformerUpdate, {}),
        "sparse": (KMeansTransformerAssign, {}, KMeansTransformerSparseUpdate, {}),
        "kmedoids": (
            (KMeansTransformerAssign, {}, KMeansTransformerGumbelMedoidUpdate, {})
            if config.medoid_selection == "gumbel"
            else (KMeansTransformerAssign, {"medoid_cost": KMeansTransformerMedoidCost}, KMeansTransformerMedoidUpdate, {})
        ),
        "gmm": (
            KMeansTransformerGaussianAssign, {}, KMeansTransformerMixtureUpdate, {"m_step": KMeansTransformerMixtureMStep}
        ),
    }[config.variant]
    return dict(zip(("assign", "point_blocks", "update", "centroid_blocks"), blocks))


class KMeansTransformerLayer(GradientCheckpointingLayer):
    """One iteration on the tokens `(batch, n + k, hidden_size)`, points first."""

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        blocks = variant_blocks(config)
        self.point_erase = KMeansTransformerPointErase(config)
        self.assign = blocks["assign"](config)
        self.point_blocks = nn.ModuleDict({name: block(config) for name, block in blocks["point_blocks"].items()})
        self.centroid_erase = KMeansTransformerCentroidErase(config)
        self.update = blocks["update"](config)
        self.centroid_blocks = nn.ModuleDict({name: block(config) for name, block in blocks["centroid_blocks"].items()})

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        points = points + self.point_erase(points, **kwargs)[0]  # [x_i ; 0 ; ...]
        points = points + self.assign(points, centroids, point_mask, **kwargs)[0]  # [x_i ; e_a(i) ; ...]
        for block in self.point_blocks.values():
            points = points + block(points, point_mask)
        centroids = centroids + self.centroid_erase(centroids, **kwargs)[0]  # [0 ; e_j ; c_j ; 1]
        centroids = centroids + self.update(centroids, points, point_mask, **kwargs)[0]
        for block in self.centroid_blocks.values():
            centroids = centroids + block(centroids, point_mask)
        return torch.cat([points, centroids], dim=1)

    def compact_forward(self, tokens: torch.Tensor, point_mask: torch.Tensor | None) -> torch.LongTensor:
        """
        The fast path: this iteration on the compact tokens `(batch, n + k, d + 1)`, `[x_i ; 1]` then `[c_j ; 1]`
        (see `KMeansTransformerModel.fast_path_applies`), with `point_mask` None when every point is real. Blocks 1 and 3 are bookkeeping there: the labels are made
        anew, and the centroid tokens hold the previous centroids until the update's result replaces them, in place.
        Returns the labels this iteration assigned.
        """
        num_points = tokens.shape[1] - self.update.config.num_clusters
        centroids = tokens[:, num_points:, :-1]
        labels = self.assign.assign_labels(tokens[:, :num_points], centroids, point_mask)
        new_centroids = self.update.update_from_labels(tokens, labels, point_mask)
        for block in self.centroid_blocks.values():  # "spherical": the centroid normalisation
            new_centroids = block.normalize(new_centroids, centroids)
        centroids.copy_(new_centroids)
        return labels


class KMeansTransformerAssignmentHead(nn.Module):
    """
    Blocks 1 and 2 once more (and the trim gate of `"trimmed"`), against the returned centroids: the assignment that
    `labels`, `inertia` and `outliers` report.
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        blocks = variant_blocks(config)
        self.point_erase = KMeansTransformerPointErase(config)
        self.assign = blocks["assign"](config)
        gates = {name: block for name, block in blocks["point_blocks"].items() if block is KMeansTransformerTrimGate}
        self.point_blocks = nn.ModuleDict({name: block(config) for name, block in gates.items()})

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        points = points + self.point_erase(points)[0]
        points = points + self.assign(points, centroids, point_mask)[0]
        for block in self.point_blocks.values():
            points = points + block(points, point_mask)
        return points


class KMeansTransformerPreTrainedModel(PreTrainedModel):
    config: KMeansTransformerConfig
    base_model_prefix = "kmeans_transformer"
    main_input_name = "points"
    _no_split_modules = ["KMeansTransformerLayer"]
    _supports_sdpa = True
    _can_record_outputs = {
        # The tokens as embedded, then after each layer: T + 1 states, also for T = 0.
        "hidden_states": [
            OutputRecorder(KMeansTransformerEmbeddings, index=0, capture_initial_hidden_state=False),
            OutputRecorder(KMeansTransformerLayer, index=0, capture_initial_hidden_state=False),
        ],
        **{
            f"{name}_attentions": OutputRecorder(block, index=1, layer_name="layers")
            for name, block in zip(
                BLOCK_NAMES,
                (
                    KMeansTransformerPointErase,
                    KMeansTransformerAssign,
                    KMeansTransformerCentroidErase,
                    KMeansTransformerUpdate,
                ),
            )
        },
    }

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """The exact `"hardmax"` kernel unless another one is requested."""
        return super().get_correct_attn_implementation(requested_attention or "hardmax", is_init_check)

    @torch.no_grad()
    def _init_weights(self, module):
        """Write the analytic construction: a model built from its config is the algorithm of `config.variant`."""
        if isinstance(module, nn.Linear) and hasattr(module, "analytic_key"):
            owner, name = module.analytic_key
            weight, bias = owner.analytic_projections(self.config)[name]
            init.copy_(module.weight, weight)
            if module.bias is not None:
                init.copy_(module.bias, bias)
        elif isinstance(module, KMeansTransformerEmbeddings):
            init.copy_(module.cluster_embeddings, module.analytic_cluster_embeddings(self.config))
            if self.config.fitted_centroids:
                init.zeros_(module.fitted_centroids)
                if self.config.variant == "gmm":
                    init.ones_(module.fitted_variances)
                    init.constant_(module.fitted_weights, 1.0 / self.config.num_clusters)


class KMeansTransformerModel(KMeansTransformerPreTrainedModel):
    r"""
    A clustering algorithm as a transformer: `num_iterations` layers, one iteration of `config.variant` each, then an
    assignment head.

    Example:

    ```python
    >>> import torch
    >>> from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
    >>> points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> model = KMeansTransformerModel(KMeansTransformerConfig(num_clusters=2, point_dim=2, num_iterations=3))
    >>> out = model(points, centroids=points[[0, 2]])
    >>> out.labels.tolist(), out.centroids.tolist()
    ([[0, 0, 1, 1]], [[[0.0, 0.5], [10.0, 0.5]]])

    ```
    """

    def __init__(self, config: KMeansTransformerConfig):
        config.validate_kmeans()
        super().__init__(config)
        self.embeddings = KMeansTransformerEmbeddings(config)
        num_layers = 1 if config.share_layers else config.num_iterations
        self.layers = nn.ModuleList([KMeansTransformerLayer(config) for _ in range(num_layers)])
        self.assignment_head = KMeansTransformerAssignmentHead(config)
        self.gradient_checkpointing = False
        self.post_init()
        if not any(p.is_meta for p in self.parameters()):  # `_init_weights` has just written the construction
            self._analytic_state, self._analytic = self._parameter_state(), True

    def forward(
        self,
        points: torch.Tensor,
        centroids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_iterations: int | None = None,
        variances: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        final_assignment: bool = True,
        output_assignments: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> KMeansTransformerOutput | tuple:
        r"""
        Args:
            points (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)` or `(num_points, point_dim)`):
                The points; cast to the model's dtype.
            centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)` or `(num_clusters,
            point_dim)`, *optional*):
                Initial centroids (a 2-D tensor is shared by the batch). Defaults to the stored fitted centroids
                when `config.fitted_centroids`, else to the first `num_clusters` real points of each problem, in order.
            attention_mask (`torch.Tensor` of shape `(batch_size, num_points)`, *optional*):
                1 (or True) for real points, 0 for padding, so problems of different sizes share a batch. Every
                problem needs at least `num_clusters` real points.
            num_iterations (`int`, *optional*):
                Number of iterations, overriding `config.num_iterations`; only for shared layers.
            variances (`torch.FloatTensor` of shape `(batch_size, num_clusters)` or `(num_clusters,)`, *optional*):
                `"gmm"` only: initial variances `σ_j^2 > 0`. Defaults to each problem's total variance per
                coordinate, `mean_i |x_i - x̄|^2 / d` (1 if the points are all equal), or the stored fitted ones.
            weights (`torch.FloatTensor` of shape `(batch_size, num_clusters)` or `(num_clusters,)`, *optional*):
                `"gmm"` only: initial mixing weights `π_j >= 0` summing to 1. Defaults to `1 / k`, or the stored
                fitted ones.
            generator (`torch.Generator`, *optional*):
                Gumbel `"kmedoids"` only: the random generator of the medoid draws (seed it for reproducible runs).
            final_assignment (`bool`, *optional*, defaults to `True`):
                Run the assignment head, so that `labels`, `assignments`, `outliers` and `inertia` are those of the
                returned centroids. If `False` (needs `num_iterations >= 1`), skip it, one assign block less: they
                are then the assignment made by the last layer, from the centroids entering it, with `inertia`
                measured against the returned centroids (the objective after the last update). The looped fit of
                [`KMeans`] runs this way, one iteration per call.
            output_assignments (`bool`, *optional*, defaults to `True`):
                Return the `(batch_size, num_points, num_clusters)` `assignments` (and `responsibilities`); `False`
                leaves them out, so that the fast path never holds a tensor of that size.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        fitted = self.embeddings.fitted_parameters()
        centroids = fitted.get("centroids") if centroids is None else centroids
        if self.config.variant == "gmm":
            variances = fitted.get("variances") if variances is None else variances
            weights = fitted.get("weights") if weights is None else weights
        points, centroids, point_mask = self._check_inputs(points, centroids, attention_mask)
        slot_values = self._variant_slot_values(points, centroids, point_mask, variances, weights, generator)
        num_iterations = self._check_num_iterations(num_iterations)
        if not final_assignment and num_iterations == 0:
            raise ValueError("`final_assignment=False` needs `num_iterations >= 1`: with no layer there is no assignment.")
        if self.fast_path_applies(bool(output_attentions), bool(output_hidden_states)):
            outputs = self._run_compact(
                points, centroids, point_mask, num_iterations, final_assignment, output_assignments
            )
        else:
            outputs = self._run_layers(
                points,
                centroids,
                point_mask,
                num_iterations,
                slot_values,
                generator,
                final_assignment,
                need_weights=bool(output_attentions),
                output_hidden_states=bool(output_hidden_states),
                **{f"output_{name}_attentions": bool(output_attentions) for name in BLOCK_NAMES},
            )
            if output_attentions and outputs.assign_attentions:
                outputs.attentions = tuple(
                    zip(*(getattr(outputs, f"{name}_attentions") for name in BLOCK_NAMES), strict=True)
                )
        if not output_assignments:
            outputs.assignments = outputs.responsibilities = None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()

    def push_to_hub(self, repo_id: str, *, exist_ok: bool = True, **push_options):
        """
        Push the model with its card: validated against its variant's reference now, the figures in the card's text
        and `model-index` (`kmeans_transformer.hub.push_model`; `push_options`: `private`, `revision`,
        `commit_message`, `commit_description`, `create_pr`, `token`). Without the `kmeans_transformer` package (a
        model loaded with `trust_remote_code`), transformers' own `push_to_hub` and card are used.
        """
        try:
            from kmeans_transformer.hub import push_model
        except ImportError:
            return super().push_to_hub(repo_id, **push_options)
        return push_model(self, repo_id, exist_ok=exist_ok, **push_options)

    def fast_path_applies(self, output_attentions: bool = False, output_hidden_states: bool = False) -> bool:
        """
        Whether `forward` runs the fast path: `config.fast_hardmax`, the `"hardmax"` attention, variant `"lloyd"` or
        `"spherical"`, no attentions or hidden states asked for (the compact state has no tokens), no gradient to
        record for the weights (call the model under `torch.no_grad()` or with frozen weights), and the weights of the
        analytic construction (checked once per change of the weights), so that the compact state is exact.
        """
        if not (self.config.fast_hardmax and self.config._attn_implementation == "hardmax"):
            return False
        if self.config.variant not in ("lloyd", "spherical") or output_attentions or output_hidden_states:
            return False
        if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in self.parameters()):
            return False
        return self.has_analytic_weights()

    def has_analytic_weights(self) -> bool:
        """
        Whether every analytic weight (and the cluster embeddings) still holds the construction's value: checked once
        per change of the weights (inference tensors, which keep no version counter, are checked every time). A model
        just built from its config holds the construction without a check.
        """
        state = self._parameter_state()
        if state is None or getattr(self, "_analytic_state", None) != state:
            analytic = True
            for module in self.modules():
                linears = [
                    child for child in module.children()
                    if isinstance(child, nn.Linear) and getattr(child, "analytic_key", (None,))[0] is type(module)
                ]
                if linears:  # one module's projections at a time
                    projections = type(module).analytic_projections(self.config)
                    for linear in linears:
                        weight, bias = projections[linear.analytic_key[1]]
                        analytic &= torch.equal(linear.weight, weight.to(linear.weight))
                        analytic &= linear.bias is None or torch.equal(linear.bias, bias.to(linear.bias))
                if isinstance(module, KMeansTransformerEmbeddings):
                    expected = module.analytic_cluster_embeddings(self.config).to(module.cluster_embeddings)
                    analytic &= torch.equal(module.cluster_embeddings, expected)
            self._analytic_state, self._analytic = state, analytic
        return self._analytic

    def _parameter_state(self) -> tuple | None:
        """Identity, version, dtype and device of every parameter; None if one keeps no version counter."""
        parameters = list(self.parameters())
        if any(p.is_inference() for p in parameters):
            return None
        return tuple((id(p), p._version, p.dtype, p.device) for p in parameters)

    def _run_compact(
        self, points, centroids, point_mask, num_iterations, final_assignment, output_assignments
    ) -> KMeansTransformerOutput:
        """
        The layers and the assignment head on the compact tokens (see `fast_path_applies`): `[x_i ; 1]` for points
        and `[c_j ; 1]` for centroids, the position slice and a constant feature, one `(batch, n + k, d + 1)` tensor
        written once; the labels are carried in index form.
        """
        if self.config.variant == "spherical":
            points, centroids = unit_normalize(points), unit_normalize(centroids)
        batch_size, num_points, point_dim = points.shape
        tokens = points.new_empty(batch_size, num_points + centroids.shape[1], point_dim + 1)
        tokens[:, :num_points, :-1] = points
        tokens[:, num_points:, :-1] = centroids
        tokens[..., -1] = 1.0
        points, centroids = tokens[:, :num_points, :-1], tokens[:, num_points:, :-1]
        point_mask = None if bool(point_mask.all()) else point_mask
        for iteration in range(num_iterations):
            layer = self.layers[0] if self.config.share_layers else self.layers[iteration]
            labels = layer.compact_forward(tokens, point_mask)
        if final_assignment:
            labels = self.assignment_head.assign.assign_labels(tokens[:, :num_points], centroids, point_mask)
        centroids = centroids.clone()
        output = KMeansTransformerOutput(labels=labels, centroids=centroids, inertia=_inertia(points, centroids, labels))
        if output_assignments:
            assignments = nn.functional.one_hot(labels.clamp(min=0), self.config.num_clusters).to(points.dtype)
            output.assignments = assignments.masked_fill_((labels < 0)[..., None], 0.0)
        return output

    @capture_outputs(tie_last_hidden_states=False)
    def _run_layers(
        self, points, centroids, point_mask, num_iterations, slot_values, generator, final_assignment, need_weights,
        **kwargs,
    ) -> KMeansTransformerOutput:
        layer_kwargs = {"generator": generator} if generator is not None else {}
        hidden_states = self.embeddings(points, centroids, slot_values)
        for iteration in range(num_iterations):
            layer = self.layers[0] if self.config.share_layers else self.layers[iteration]
            hidden_states = layer(hidden_states, point_mask, need_weights=need_weights, **layer_kwargs)

        num_points, slices = points.shape[1], self.config.token_slices
        final_points = (
            self.assignment_head(hidden_states, point_mask) if final_assignment else hidden_states[:, :num_points]
        )
        final_centroids = hidden_states[:, num_points:, slices["position"]]
        assignments = final_points[..., slices["code"]]
        labelled = point_mask & (assignments.amax(dim=-1) > 0)
        labels = assignments.argmax(dim=-1).masked_fill(~labelled, -1)
        seen_points = hidden_states[:, :num_points, slices["position"]]  # the points as the model sees them
        output = KMeansTransformerOutput(
            labels=labels,
            centroids=final_centroids,
            inertia=_inertia(seen_points, final_centroids, labels),
            assignments=assignments,
        )
        if "outlier" in slices:
            output.outliers = final_points[..., slices["outlier"]][..., 0] > 0
        if "mixing_weight" in slices:
            output.weights = hidden_states[:, num_points:, slices["mixing_weight"]][..., 0]
            output.variances = hidden_states[:, num_points:, slices["variance"]][..., 0]
        if self.config.variant in ("soft", "gmm"):
            output.responsibilities = assignments
        return output

    def _variant_slot_values(self, points, centroids, point_mask, variances, weights, generator) -> dict[str, torch.Tensor]:
        """Check the variant's own inputs; return the values of its extra token slots (see the embeddings)."""
        variant = self.config.variant
        if variant != "gmm" and (variances is not None or weights is not None):
            raise ValueError(f"`variances` and `weights` are inputs of variant 'gmm', not of {variant!r}.")
        if generator is not None:
            if variant != "kmedoids" or self.config.medoid_selection != "gumbel":
                raise ValueError("`generator` is an input of variant 'kmedoids' with medoid_selection='gumbel' only.")
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")
        if variant == "spherical":
            norms = torch.linalg.vector_norm(points, dim=-1)
            if ((norms == 0) & point_mask).any():
                raise ValueError("Spherical k-means needs non-zero points: a point has norm 0 and no direction.")
            if (torch.linalg.vector_norm(centroids, dim=-1) == 0).any():
                raise ValueError("Spherical k-means needs non-zero centroids: a centroid has norm 0 and no direction.")
        if variant != "gmm":
            return {}

        batch_size, num_points, d = points.shape
        k, dtype, device = self.config.num_clusters, points.dtype, points.device
        counts = point_mask.sum(dim=1, keepdim=True).to(dtype)
        if variances is None:
            centre = points.sum(dim=1, keepdim=True) / counts[..., None]
            spread = (((points - centre) ** 2).sum(dim=-1) * point_mask).sum(dim=1, keepdim=True) / (counts * d)
            variances = torch.where(spread > 0, spread, torch.ones_like(spread)).expand(batch_size, k)
        else:
            variances = self._check_component_values(variances, "variances", batch_size)
            if not (variances > 0).all():
                raise ValueError("`variances` must be > 0.")
        if weights is None:
            weights = torch.full((batch_size, k), 1.0 / k, dtype=dtype, device=device)
        else:
            weights = self._check_component_values(weights, "weights", batch_size)
            if not (weights >= 0).all() or not torch.allclose(weights.sum(dim=-1), torch.ones((), dtype=dtype, device=device), atol=1e-6):
                raise ValueError("`weights` must be >= 0 and sum to 1 in every problem.")
        point_zeros = points.new_zeros(batch_size, num_points, 1)
        return {
            "square_norm": torch.cat([(points * points).sum(dim=-1, keepdim=True), points.new_zeros(batch_size, k, 1)], dim=1),
            "variance": torch.cat([point_zeros, variances[..., None]], dim=1),
            "mixing_weight": torch.cat([point_zeros, weights[..., None]], dim=1),
        }

    def _check_component_values(self, values, name, batch_size) -> torch.Tensor:
        k = self.config.num_clusters
        dtype, device = self.embeddings.cluster_embeddings.dtype, self.embeddings.cluster_embeddings.device
        values = _as_float_tensor(values, name, dtype, device)
        if values.dim() == 1:
            values = values.unsqueeze(0).expand(batch_size, -1)
        if tuple(values.shape) != (batch_size, k):
            raise ValueError(
                f"`{name}` must have shape (batch_size, num_clusters) = {(batch_size, k)} or (num_clusters,) = {(k,)}, "
                f"got {tuple(values.shape)}."
            )
        if not torch.isfinite(values).all():
            raise ValueError(f"`{name}` contain NaN or infinite values.")
        return values

    def _check_num_iterations(self, num_iterations: int | None) -> int:
        if num_iterations is None:
            return self.config.num_iterations
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
            raise ValueError(f"`num_iterations` must be an integer >= 0, got {num_iterations!r}.")
        if not self.config.share_layers and num_iterations != self.config.num_iterations:
            raise ValueError(
                f"This model has {self.config.num_iterations} separate layers (share_layers=False), so "
                f"`num_iterations` cannot be {num_iterations}; build it with share_layers=True to loop one layer."
            )
        return num_iterations

    def _check_inputs(self, points, centroids, attention_mask):
        """Validate shapes, dtypes and values; return `(batch, n, d)` points, `(batch, k, d)` centroids and a bool mask."""
        k, d = self.config.num_clusters, self.config.point_dim
        dtype, device = self.embeddings.cluster_embeddings.dtype, self.embeddings.cluster_embeddings.device
        points = _as_float_tensor(points, "points", dtype, device)
        if points.dim() == 2:
            points = points.unsqueeze(0)
        if points.dim() != 3:
            raise ValueError(f"`points` must have shape (batch_size, num_points, {d}) or (num_points, {d}), got {tuple(points.shape)}.")
        batch_size, num_points, point_dim = points.shape
        if point_dim != d:
            raise ValueError(
                f"`points` have dimension {point_dim}, but this model was built for point_dim={d}."
            )
        if batch_size == 0 or num_points == 0:
            raise ValueError(f"`points` is empty: shape {tuple(points.shape)}.")

        if attention_mask is None:
            point_mask = torch.ones(batch_size, num_points, dtype=torch.bool, device=device)
        else:
            attention_mask = torch.as_tensor(attention_mask, device=device)
            if tuple(attention_mask.shape) != (batch_size, num_points):
                raise ValueError(
                    f"`attention_mask` must have shape (batch_size, num_points) = {(batch_size, num_points)}, "
                    f"got {tuple(attention_mask.shape)}."
                )
            if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
                if not torch.isin(attention_mask, torch.tensor([0.0, 1.0], device=device, dtype=attention_mask.dtype)).all():
                    raise ValueError("`attention_mask` must hold only 0 and 1.")
            elif attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("`attention_mask` must hold only 0 and 1.")
            point_mask = attention_mask.bool()
        real_counts = point_mask.sum(dim=1)
        if (real_counts < k).any():
            problem = int(torch.nonzero(real_counts < k)[0])
            raise ValueError(
                f"num_clusters={k} is larger than the number of points ({int(real_counts[problem])}) of problem "
                f"{problem}: every problem needs at least k points."
            )
        if attention_mask is not None and not bool(point_mask.all()):
            points = points.masked_fill(~point_mask[..., None], 0.0)  # padding's values do not count
        # a sum is finite when every term is (a finite sum that overflows is told apart by the full check)
        if not bool(torch.isfinite(points.sum())) and not all(
            bool(torch.isfinite(block).all()) for block in points.reshape(-1, d).split(2**20)
        ):
            raise ValueError("`points` contain NaN or infinite values.")

        if centroids is None:
            first_real = torch.argsort((~point_mask).to(torch.int8), dim=1, stable=True)[:, :k]
            centroids = points.gather(1, first_real[..., None].expand(-1, -1, d))
        else:
            centroids = _as_float_tensor(centroids, "centroids", dtype, device)
            if centroids.dim() == 2:
                centroids = centroids.unsqueeze(0).expand(batch_size, -1, -1)
            if tuple(centroids.shape) != (batch_size, k, d):
                raise ValueError(
                    f"`centroids` must have shape (batch_size, num_clusters, point_dim) = {(batch_size, k, d)} or "
                    f"(num_clusters, point_dim) = {(k, d)}, got {tuple(centroids.shape)}."
                )
            if not torch.isfinite(centroids).all():
                raise ValueError("`centroids` contain NaN or infinite values.")
        return points, centroids, point_mask


def _inertia(points: torch.Tensor, centroids: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
    """
    `Σ_i |x_i - c_label(i)|^2` over the labelled points (`labels >= 0`), per problem, in blocks of points small
    enough (about 2**18 numbers) that the temporaries stay in cache.
    """
    batch_size, num_points, point_dim = points.shape
    rows = max(1, 2**18 // (batch_size * point_dim))
    flat_centroids = centroids.reshape(-1, point_dim)
    offsets = torch.arange(batch_size, device=labels.device)[:, None] * centroids.shape[1]
    total = points.new_zeros(batch_size)
    for start in range(0, num_points, rows):
        block, block_labels = points[:, start : start + rows], labels[:, start : start + rows]
        nearest = flat_centroids.index_select(0, (block_labels.clamp(min=0) + offsets).reshape(-1))
        squares = (block - nearest.reshape(block.shape)).square_().sum(dim=-1)
        total += (squares * (block_labels >= 0)).sum(dim=-1)
    return total


def _as_float_tensor(values, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A real floating tensor (from a tensor or an array), cast to the model's dtype and device."""
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"`{name}` must be a tensor or an array of floats, got {type(values).__name__}.") from error
    if not values.dtype.is_floating_point:
        raise TypeError(f"`{name}` must hold real floating-point numbers, got dtype {values.dtype}.")
    return values.to(device=device, dtype=dtype)


__all__ = ["KMeansTransformerModel", "KMeansTransformerPreTrainedModel", "KMeansTransformerOutput"]
