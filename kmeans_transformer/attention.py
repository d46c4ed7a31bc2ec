# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
Attention kernels of the k-means transformer and the query/key augmentations that turn distances into dot products.

Every kernel follows transformers' eager signature and is registered with `AttentionInterface` under a name that
says whose it is (`kmeans_hardmax`, ...); the earlier generic names (`hardmax`, ...) stay registered as aliases, so
configs that name them keep loading. The registration happens on the first call of `attention_functions()` (the
modeling module makes it when imported): transformers.modeling_utils, which holds the interface, takes seconds to
import, and a configuration or the command line's parser needs none of it.
"""

import math

import torch
from torch import nn

from .cpu_kernels import nearest_values, segment_sums

# ---------------------------------------------------------------------------------------------------------------------
# Attention kernels: the eager signature, `(module, query, key, value, attention_mask, ...) -> (output, weights)`, with
# `query` `(batch, heads, q_len, head_dim)`, `key` `(batch, heads, kv_len, head_dim)`, `value` `(batch, heads, kv_len,
# value_dim)` and a boolean `attention_mask` broadcastable to `(batch, heads, q_len, kv_len)`, True where attending.
# A query row that sees no key gets all-zero weights. Scores are `s_ij = scaling * query_i . key_j`.
#
# Sample weights: the kernels that attend to points take `key_weights` `(batch, kv_len)` (None: all 1), the multiplicity
# of each key. A key of weight `w_j` counts as `w_j` copies of itself: softmax over `s_ij + log w_j`, a hardmax mean
# weighted by `w_j` among the maximisers, linear and distance weights times `w_j`, sparsemax projected with the keys
# repeated; so an integer weight gives exactly the result of repeating the key.
# ---------------------------------------------------------------------------------------------------------------------


def _key_weights(key_weights, scores):
    """`key_weights` `(batch, kv_len)` as `(batch, 1, 1, kv_len)` in the scores' dtype (None stays None)."""
    return None if key_weights is None else key_weights[:, None, None, :].to(scores.dtype)


def _log_key_weights(key_weights, scores):
    """`log w_j` broadcastable to the scores (0 where `w_j = 0`: such keys are masked), or 0 when unweighted."""
    weights = _key_weights(key_weights, scores)
    if weights is None:
        return 0.0
    return torch.where(weights > 0, torch.log(weights.clamp(min=torch.finfo(scores.dtype).tiny)), 0.0)


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


def softmax_weights(scores: torch.Tensor, key_weights=None) -> torch.Tensor:
    """The softmax rule, `weights_ij = softmax_j(s_ij + log w_j)` (`key_weights` `w`, or none)."""
    return torch.softmax(scores + _log_key_weights(key_weights, scores), dim=-1)


def fuzzy_weights(squared_distances: torch.Tensor, fuzzifier: float) -> torch.Tensor:
    """
    The fuzzy c-means rule on squared distances `D_ij^2` (`inf` for a hidden key), `weights_ij = (δ_i^2 / D_ij^2)^q
    / Σ_j' (δ_i^2 / D_ij'^2)^q` with `q = 1/(m-1)` and `δ_i = min_j D_ij`, so no power overflows; a row with `δ_i =
    0` shares its weight equally among its zero distances (the limit of the formula), so no weight is NaN.
    """
    nearest = squared_distances.amin(dim=-1, keepdim=True)
    ratios = (nearest / squared_distances).pow_(1.0 / (fuzzifier - 1.0))  # in [0, 1]; 0/0 only where nearest = 0
    scores = torch.where(nearest == 0, (squared_distances == 0).to(ratios.dtype), ratios)
    return scores / scores.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


def eager_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention: `weights_i = softmax_j(s_ij + log w_j)` over the visible keys."""
    scores = _masked_scores(query, key, attention_mask, scaling)
    weights = softmax_weights(scores, kwargs.get("key_weights"))
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return _attend(weights, value, attention_mask)


def hardmax_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The exact `γ -> ∞` limit of softmax attention. With `M_i = argmax_j s_ij` over the visible keys:

    - `module.hardmax_ties == "average"` (the limit itself): `weights_ij = 1 / |M_i|` for `j` in `M_i`, else 0;
    - `module.hardmax_ties == "first"`: `weights_ij = 1` for the lowest index in `M_i`, else 0 (an argmax that breaks
      ties like Lloyd's argmin).

    A positive `scaling` does not change the maximisers and is ignored. With `key_weights` the average is weighted:
    `weights_ij = w_j / Σ_{j' in M_i} w_j'` (the `"first"` maximiser does not depend on them).
    """
    scores = _masked_scores(query, key, attention_mask, None)
    if getattr(module, "hardmax_ties", "average") == "first":
        weights = nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(value.dtype)
        return _attend(weights, value, attention_mask)
    maximisers = (scores == scores.amax(dim=-1, keepdim=True)).to(value.dtype)
    if attention_mask is not None:
        maximisers = maximisers.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    key_weights = _key_weights(kwargs.get("key_weights"), maximisers)
    if key_weights is not None:
        maximisers = maximisers * key_weights
        counts = maximisers.sum(dim=-1, keepdim=True)
        counts = torch.where(counts > 0, counts, torch.ones_like(counts))
        output = maximiser_means(maximisers, value, counts).transpose(1, 2).contiguous()
        return output, maximisers / counts
    counts = maximisers.sum(dim=-1, keepdim=True).clamp(min=1)
    # the sum of the maximisers' values divided by their number: the mean as a float64 sum and one rounding per coordinate
    output = maximiser_means(maximisers, value, counts).transpose(1, 2).contiguous()
    return output, maximisers / counts


def maximiser_means(maximisers: torch.Tensor, value: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """
    `(maximisers @ value) / counts` with the sums accumulated in float64 whatever the dtype (a float32 mean of a
    million equal values keeps its digits), divided in float64 and rounded once to `value`'s dtype. float64 values
    are summed as they are.
    """
    if value.dtype == torch.float64:
        return torch.matmul(maximisers, value) / counts
    return (torch.matmul(maximisers.to(torch.float64), value.to(torch.float64)) / counts).to(value.dtype)


def chunked_hardmax_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
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
            outputs.append(maximiser_means(maximisers, value, counts).transpose(1, 2))
    return torch.cat(outputs, dim=1).contiguous(), None


def code_sums(
    values: torch.Tensor, codes: torch.LongTensor, visible: torch.BoolTensor | None, num_codes: int
) -> tuple[torch.Tensor, torch.LongTensor]:
    """
    Per-group, per-code sums `(groups, num_codes, width)` and counts `(groups, num_codes)` of the rows of `values`
    `(groups, rows, width)` whose code (`codes` `(groups, rows)`) is in `[0, num_codes)` and that are visible: the
    compiled `cpu_kernels.segment_sums` where it runs, else an index-add (one bin per (group, code), and a last bin
    for the rows that match no code). The sums are accumulated and returned in float64 whatever the dtype of
    `values` (float32 rows are widened a block at a time), so that a float32 mean of many points keeps its digits.
    """
    compiled = segment_sums(values, codes, visible, num_codes)
    if compiled is not None:
        return compiled
    groups, rows, width = values.shape
    matched = (codes >= 0) & (codes < num_codes)
    if visible is not None:
        matched &= visible
    offsets = torch.arange(groups, device=values.device)[:, None] * num_codes
    bins = torch.where(matched, codes + offsets, groups * num_codes).reshape(-1)
    flat = values.reshape(groups * rows, width)
    sums = flat.new_zeros(groups * num_codes + 1, width, dtype=torch.float64)
    traced = torch.compiler.is_compiling()  # one block, and counts of a static shape (no bincount)
    block = max(1, flat.shape[0]) if values.dtype == torch.float64 or traced else max(1, 2**20 // max(1, width))
    for start in [0] if traced else range(0, flat.shape[0], block):
        sums.index_add_(0, bins[start : start + block], flat[start : start + block].to(torch.float64))
    counts = bins.new_zeros(groups * num_codes + 1).index_add_(0, bins, torch.ones_like(bins))[:-1]
    return sums[:-1].reshape(groups, num_codes, width), counts.reshape(groups, num_codes)


def index_hardmax_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, None]:
    """
    Hardmax attention between one-hot codes given in index form (as `input_ids` stand for one-hot rows): `query`
    `(batch, heads, q_len, 1)` and `key` `(batch, heads, kv_len, 1)` hold integer codes (-1 for the zero code), so
    `s_ij = [key_j = query_i]`. `attention_mask` is a key-padding mask broadcastable to `(batch, heads, 1, kv_len)`.
    Query `i`'s maximisers are its matching visible keys, or, when none matches, every visible key (all score 0),
    and the output is the sum of their values (in float64) divided by their number (0 when no key is visible): the
    dense hardmax kernel's output, computed by index-add in `O(kv_len * value_dim)` without the `(q_len, kv_len)`
    scores. Returns no weights.
    """
    batch, heads, q_len, _ = query.shape
    kv_len, value_dim = key.shape[-2], value.shape[-1]
    groups = batch * heads
    query_codes = query.reshape(groups, q_len).long()
    key_codes = key.expand(batch, heads, kv_len, 1).reshape(groups, kv_len).long()
    values = value.expand(batch, heads, kv_len, value_dim).reshape(groups, kv_len, value_dim)
    visible = None if attention_mask is None else attention_mask.expand(batch, heads, 1, kv_len).reshape(groups, kv_len)
    num_codes = int(query_codes.max()) + 1 if query_codes.numel() else 0
    sums, counts = code_sums(values, key_codes, visible, num_codes)
    safe_codes = query_codes.clamp(min=0)
    query_sums = sums.gather(1, safe_codes[..., None].expand(-1, -1, value_dim))
    query_counts = counts.gather(1, safe_codes)
    has_match = (query_counts > 0) & (query_codes >= 0)
    if not bool(has_match.all()):  # an unmatched query averages every visible key (all score 0)
        weights = torch.ones(groups, kv_len, 1, dtype=torch.float64, device=value.device)
        if visible is not None:
            weights = visible[..., None].to(torch.float64)
        all_sums, all_counts = (values.to(torch.float64) * weights).sum(dim=1), weights[..., 0].sum(dim=1).long()
        query_sums = torch.where(has_match[..., None], query_sums, all_sums[:, None])
        query_counts = torch.where(has_match, query_counts, all_counts[:, None])
    output = (query_sums / query_counts.clamp(min=1).to(torch.float64)[..., None]).to(value.dtype)
    return output.reshape(batch, heads, q_len, value_dim).transpose(1, 2).contiguous(), None


def linear_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Linear attention on non-negative scores: `weights_ij = s_ij / Σ_j' s_ij'` over the visible keys (normalised), or
    `weights_ij = s_ij` when `module.normalize_weights` is False (sums). With `module.nonnegative_scores` the scores
    are first clamped at 0 (`max(s_ij, 0)`: the learned update, whose trained scores may turn negative); with
    `module.score_power` p (default 1) they are raised to the power p (fuzzy c-means' `u^m`). A row whose scores
    sum to 0 gets zero weights.
    """
    scores = torch.matmul(query, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, 0.0)
    if getattr(module, "nonnegative_scores", False):
        scores = scores.clamp(min=0)
    power = getattr(module, "score_power", 1)
    if power != 1:
        scores = scores.clamp(min=0) ** power
    key_weights = _key_weights(kwargs.get("key_weights"), scores)
    if key_weights is not None:
        scores = scores * key_weights
    if getattr(module, "normalize_weights", True):
        total = scores.sum(dim=-1, keepdim=True)
        scores = scores / torch.where(total == 0, torch.ones_like(total), total)
    return _attend(scores, value, attention_mask)


def sparsemax_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Sparsemax attention (Martins & Astudillo, 2016), the Euclidean projection of the scores onto the simplex:
    `weights_ij = max(s_ij - τ_i, 0)` with `τ_i` such that the weights sum to 1. With the visible scores sorted
    decreasingly `z_(1) >= z_(2) >= ...`, the support size is `K = max{r : 1 + r z_(r) > Σ_{s<=r} z_(s)}` and
    `τ = (Σ_{s<=K} z_(s) - 1) / K`. Low scores get exactly zero weight. With `key_weights` the scores are projected
    as a multiset (key `j` repeated `w_j` times): `W_r = Σ_{s<=r} w_(s)`, `K = max{r : 1 + W_r z_(r) > Σ_{s<=r}
    w_(s) z_(s)}`, `τ = (Σ_{s<=K} w_(s) z_(s) - 1) / W_K` and `weights_ij = w_j max(s_ij - τ_i, 0)`.
    """
    scores = _masked_scores(query, key, attention_mask, scaling)
    weights = sparsemax_projection(scores, _key_weights(kwargs.get("key_weights"), scores))
    return _attend(weights, value, attention_mask)


def sparsemax_projection(scores: torch.Tensor, key_weights: torch.Tensor | None = None) -> torch.Tensor:
    """
    The weights of `sparsemax_attention_forward` from its scores (`-inf` where a key is hidden), along the last axis;
    `key_weights` (broadcastable to the scores, or None) the keys' multiplicities.
    """
    if key_weights is None:
        ordered = scores.sort(dim=-1, descending=True).values
        cumulative = ordered.cumsum(dim=-1)
        ranks = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
        support = (1 + ranks * ordered > cumulative).sum(dim=-1, keepdim=True).clamp(min=1)
        threshold = (cumulative.gather(-1, support - 1) - 1) / support
        return (scores - threshold).clamp(min=0).nan_to_num(0.0)
    ordered, order = scores.sort(dim=-1, descending=True)
    multiplicities = key_weights.expand_as(scores).gather(-1, order)
    visible = torch.isfinite(ordered)
    masses = torch.where(visible, multiplicities, 0.0).cumsum(dim=-1)
    cumulative = torch.where(visible, multiplicities * ordered, 0.0).cumsum(dim=-1)
    support = (visible & (1 + masses * ordered > cumulative)).sum(dim=-1, keepdim=True).clamp(min=1)
    threshold = (cumulative.gather(-1, support - 1) - 1) / masses.gather(-1, support - 1)
    return ((scores - threshold).clamp(min=0) * key_weights).nan_to_num(0.0)


def gumbel_max_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, generator=None, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A one-hot draw from `softmax_j(s_ij)` over the visible keys by the Gumbel-max trick: `weights_ij = 1` for
    `j = argmax_j (s_ij + g_ij)`, `g_ij` independent standard Gumbel noise from `generator` (the global generator if
    None), so a seeded generator makes the draw reproducible.
    """
    scores = _masked_scores(query, key, attention_mask, scaling)
    scores = scores + _log_key_weights(kwargs.get("key_weights"), scores)
    uniform = torch.rand(scores.shape, generator=generator, dtype=scores.dtype, device=scores.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(scores.dtype).tiny)))
    weights = nn.functional.one_hot((scores + gumbel).argmax(dim=-1), scores.shape[-1]).to(value.dtype)
    return _attend(weights, value, attention_mask)


def distance_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Distance-weighted sums: `weights_ij = |query_i - key_j|` (Euclidean) on the visible keys, 0 elsewhere, and
    `output_i = Σ_j weights_ij value_j` (times `w_j` with `key_weights`). Computed in chunks of queries so that no
    `(q_len, kv_len, head_dim)` tensor is held at once; returns no weights.
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
        key_weights = _key_weights(kwargs.get("key_weights"), weights)
        if key_weights is not None:
            weights = weights * key_weights
        outputs.append(torch.matmul(weights, value))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None



def distance_softmax_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Distance softmax: `weights_ij = softmax_j(-scaling |query_i - key_j|^2)` over the visible keys (the learned layer
    sets `scaling = γ / sqrt(D)`, D the query/key width). Computed as the eager softmax of `scaling (2 query_i.key_j -
    |key_j|^2)` (`augment_for_squared_distance`), which differs from `-scaling |query_i - key_j|^2` by
    `scaling |query_i|^2`, the same for every key.
    """
    query, key = augment_for_squared_distance(query, key)
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


def fuzzy_membership_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Fuzzy c-means memberships as attention weights (Bezdek): with `D_ij = |query_i - key_j|` (Euclidean, from the
    differences) and `module.fuzzifier` m > 1, `weights_ij = D_ij^(-2/(m-1)) / Σ_j' D_ij'^(-2/(m-1))` over the
    visible keys, the softmax of the scores `-(2/(m-1)) log D_ij`. A query at distance 0 from some keys shares its
    weight equally among them (the limit of the formula), so no weight is NaN.
    """
    difference = query[..., :, None, :] - key[..., None, :, :]
    squared_distances = (difference * difference).sum(dim=-1)
    if attention_mask is not None:
        squared_distances = squared_distances.masked_fill(~attention_mask, float("inf"))
    return _attend(fuzzy_weights(squared_distances, module.fuzzifier), value, attention_mask)


# name -> kernel; each is also registered under its earlier generic name (`KERNEL_ALIASES`).
KMEANS_ATTENTION_FUNCTIONS = {
    "kmeans_hardmax": hardmax_attention_forward,
    "kmeans_hardmax_chunked": chunked_hardmax_attention_forward,
    "kmeans_hardmax_index": index_hardmax_attention_forward,
    "kmeans_linear": linear_attention_forward,
    "kmeans_sparsemax": sparsemax_attention_forward,
    "kmeans_gumbel_max": gumbel_max_attention_forward,
    "kmeans_distance": distance_attention_forward,
    "kmeans_fuzzy": fuzzy_membership_attention_forward,
    "kmeans_distance_softmax": distance_softmax_attention_forward,
}
KERNEL_ALIASES = {
    "hardmax": "kmeans_hardmax",
    "hardmax_chunked": "kmeans_hardmax_chunked",
    "hardmax_index": "kmeans_hardmax_index",
    "linear_attention": "kmeans_linear",
    "sparsemax": "kmeans_sparsemax",
    "gumbel_max": "kmeans_gumbel_max",
    "distance": "kmeans_distance",
}
_registered = False


def attention_functions():
    """
    transformers' attention interface (`ALL_ATTENTION_FUNCTIONS`), this module's kernels and their aliases registered
    with it on the first call.
    """
    global _registered
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if not _registered:
        for name, function in KMEANS_ATTENTION_FUNCTIONS.items():
            AttentionInterface.register(name, function)
        for alias, name in KERNEL_ALIASES.items():
            AttentionInterface.register(alias, KMEANS_ATTENTION_FUNCTIONS[name])
        _registered = True
    return ALL_ATTENTION_FUNCTIONS


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


def squared_distances(points: torch.Tensor, centroids: torch.Tensor, cancellation: float = 0.5) -> torch.Tensor:
    """
    `|x_i - c_j|^2` `(batch, m, k)` for `points` `(batch, m, d)` and `centroids` `(batch, k, d)` from one GEMM,
    `|x_i|^2 + |c_j|^2 - 2 x_i.c_j`, where that is accurate: an entry under `cancellation (|x_i|^2 + |c_j|^2)`
    (the sum cancels there, a point on a centroid among them) is taken again from the differences, so a zero
    distance is exactly 0 and every squared distance is within about `(d + 2) ε / cancellation` of itself.
    """
    scale = (points * points).sum(dim=-1, keepdim=True) + (centroids * centroids).sum(dim=-1)[:, None, :]
    squared = torch.baddbmm(scale, points, centroids.transpose(1, 2), alpha=-2)
    close = torch.nonzero(squared < cancellation * scale, as_tuple=True)
    if close[0].numel():
        batch, row, column = close
        difference = points[batch, row] - centroids[batch, column]
        squared[close] = (difference * difference).sum(dim=-1)
    return squared.clamp_(min=0)


def unit_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """
    `x / |x|` along the last dimension; the zero vector stays 0. A vector whose largest `|coordinate|` lies outside
    the safe range of its dtype (`safe_magnitude_exponents`), where `|x|^2` would overflow or underflow, is first
    multiplied by a power of two (exact) that brings that coordinate into `[1/2, 1)`: any finite non-zero vector has
    a direction. When every norm shows its vector inside the range, the vectors are divided by their norms as they
    are.
    """
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    low, high = safe_magnitude_exponents(vectors.dtype, vectors.shape[-1])
    suspect = (norms > 2.0**high) | ((norms > 0) & (norms < 2.0**low * math.sqrt(vectors.shape[-1])))
    if bool((norms == 0).any()):  # all zero, or squares that all underflow
        suspect |= (norms == 0) & (vectors != 0).any(dim=-1, keepdim=True)
    if bool(suspect.any()):
        detached = vectors.detach()
        magnitudes = torch.maximum(detached.amax(dim=-1, keepdim=True), -detached.amin(dim=-1, keepdim=True))
        vectors = times_power_of_two(vectors, -rescaling_exponents(magnitudes, vectors.shape[-1]))
        norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    return vectors / torch.where(norms > 0, norms, torch.ones_like(norms))


# ---------------------------------------------------------------------------------------------------------------------
# The numeric range: squared distances are computed without overflow or harmful underflow when the data's largest
# |coordinate| m lies in a range of the dtype; data outside it is multiplied by a power of two, which is exact.
# ---------------------------------------------------------------------------------------------------------------------


def safe_magnitude_exponents(dtype: torch.dtype, terms: int) -> tuple[int, int]:
    """
    `(low, high)`: data whose largest `|coordinate|` m satisfies `2**low <= m <= 2**high` has squared distances and
    sums of `terms` squares (`16 * terms * m^2`) below the largest finite number of `dtype`, and squares of its
    significant differences (`eps * m^2`) in the normal range (no precision lost to underflow). float32: `low = -51`
    (about 4.4e-16), `high` about `62 - log2(terms) / 2`; float64: `low = -485` (about 1e-146), `high` about
    `510 - log2(terms) / 2`.
    """
    info = torch.finfo(dtype)
    max_exponent, tiny_exponent = math.frexp(info.max)[1], math.frexp(info.tiny)[1] - 1
    low = math.ceil((tiny_exponent - math.log2(info.eps)) / 2)
    high = math.floor((max_exponent - 4 - math.log2(max(terms, 1))) / 2)
    return low, high


def rescaling_exponents(magnitudes: torch.Tensor, terms: int) -> torch.LongTensor:
    """
    For each magnitude m (a largest `|coordinate|`): 0 when m is 0 or inside the safe range (`safe_magnitude_exponents`),
    else the exponent `e` with `m` in `[2**(e - 1), 2**e)`, so that `m * 2**-e` lies in `[1/2, 1)`.
    """
    low, high = safe_magnitude_exponents(magnitudes.dtype, terms)
    outside = (magnitudes > 0) & ((magnitudes < 2.0**low) | (magnitudes > 2.0**high))
    return torch.where(outside, torch.frexp(magnitudes).exponent.to(torch.int64), 0)


def times_power_of_two(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """
    `values * 2**exponents` (integer `exponents` broadcastable to `values`), in steps whose factors are normal
    numbers of the dtype, so every step is exact except where the result itself overflows or falls below the normal
    range.
    """
    info = torch.finfo(values.dtype)
    limit = min(math.frexp(info.max)[1] - 1, -(math.frexp(info.tiny)[1] - 1))
    remaining = exponents.to(device=values.device, dtype=torch.int64)
    while bool((remaining != 0).any()):
        step = remaining.clamp(-limit, limit)
        values = values * torch.exp2(step.to(values.dtype))
        remaining = remaining - step
    return values
