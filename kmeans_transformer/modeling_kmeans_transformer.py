# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""PyTorch k-means transformer: Lloyd's algorithm written exactly as attention and residual connections.

Points and centroids are tokens of one width `D = d + k + 1` (see `KMeansTransformerConfig`):

    point token     p_i = [x_i ; y_i ; 0]      y_i: the assignment slot, 0 at the start
    centroid token  q_j = [c_j ; e_j ; 1]      e_j: the cluster's identity, never changed

One layer is one Lloyd iteration, four attention blocks each added to its stream by a residual connection:

    1. point erase     p_i <- p_i + Attn_self(p_i)                 = [x_i ; 0 ; 0]
    2. assign          p_i <- p_i + Attn(p_i -> centroids)          = [x_i ; e_a(i) ; 0],  a(i) = argmin_j |x_i - c_j|^2
    3. centroid erase  q_j <- q_j + Attn_self(q_j)                  = [0 ; e_j ; 1]
    4. update          q_j <- q_j + Attn(q_j -> points, centroids)  = [mean of S_j, or c_j if S_j is empty ; e_j ; 1]

Under the exact `"hardmax"` attention (the default) the model is Lloyd's algorithm; under softmax (`"eager"`,
`"sdpa"`) it is the same construction at inverse temperature `config.inverse_temperature`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_kmeans_transformer import KMeansTransformerConfig


logger = logging.get_logger(__name__)

BLOCK_NAMES = ("point_erase", "assign", "centroid_erase", "update")


@dataclass
class KMeansTransformerOutput(ModelOutput):
    r"""
    labels (`torch.LongTensor` of shape `(batch_size, num_points)`):
        Index of the returned centroid nearest to each point (lowest index on ties); -1 for padded points.
    centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)`):
        The centroids after the last layer.
    inertia (`torch.FloatTensor` of shape `(batch_size,)`):
        Sum over real points of the squared distance to the centroid of their label (the k-means objective).
    assignments (`torch.FloatTensor` of shape `(batch_size, num_points, num_clusters)`):
        The assign attention of the returned centroids: one-hot rows under hardmax, responsibilities under
        softmax, zero rows for padded points.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The tokens before the first layer and after each layer, each of shape
        `(batch_size, num_points + num_clusters, hidden_size)`: the point tokens first, then the centroid tokens.
    attentions (`tuple(tuple(torch.FloatTensor))`, *optional*, returned when `output_attentions=True`):
        One tuple per layer holding the weights of its four blocks, in the order `BLOCK_NAMES`: point erase
        `(batch_size, 1, num_points, 1)` (each token's weight on itself), assign `(batch_size, 1, num_points,
        num_clusters)`, centroid erase `(batch_size, 1, num_clusters, 1)` and update `(batch_size, 1, num_clusters,
        num_points + num_clusters)` (on the points, then on the centroids). Empty under `"sdpa"`, which returns no
        weights.
    point_erase_attentions, assign_attentions, centroid_erase_attentions, update_attentions (`tuple(torch.FloatTensor)`, *optional*):
        The same weights per block, one entry per layer.
    """

    labels: torch.LongTensor | None = None
    centroids: torch.FloatTensor | None = None
    inertia: torch.FloatTensor | None = None
    assignments: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None
    point_erase_attentions: tuple[torch.FloatTensor, ...] | None = None
    assign_attentions: tuple[torch.FloatTensor, ...] | None = None
    centroid_erase_attentions: tuple[torch.FloatTensor, ...] | None = None
    update_attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Attention kernels: the eager signature, `(module, query, key, value, attention_mask, ...) -> (output, weights)`, with
# `query` `(batch, heads, q_len, head_dim)`, `key` `(batch, heads, kv_len, head_dim)`, `value` `(batch, heads, kv_len,
# value_dim)` and a boolean `attention_mask` broadcastable to `(batch, heads, q_len, kv_len)`, True where attending.
# A query row that sees no key gets all-zero weights.
# ---------------------------------------------------------------------------------------------------------------------


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
    """Softmax attention: `weights = softmax(scaling * query @ key^T)` over the visible keys."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if attention_mask is not None:
        weights = weights.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


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
    The exact `γ -> ∞` limit of softmax attention. With scores `s_ij = query_i . key_j` over the visible keys and
    `M_i = argmax_j s_ij`:

    - `module.hardmax_ties == "average"` (the limit itself): `weights_ij = 1 / |M_i|` for `j` in `M_i`, else 0;
    - `module.hardmax_ties == "first"`: `weights_ij = 1` for the lowest index in `M_i`, else 0 (an argmax that breaks
      ties like Lloyd's argmin).

    A positive `scaling` does not change the maximisers and is ignored.
    """
    scores = torch.matmul(query, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    if getattr(module, "hardmax_ties", "average") == "first":
        weights = nn.functional.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(value.dtype)
    else:
        weights = (scores == scores.amax(dim=-1, keepdim=True)).to(value.dtype)
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if attention_mask is not None:
        weights = weights.masked_fill(~attention_mask.any(dim=-1, keepdim=True), 0.0)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


AttentionInterface.register("hardmax", hardmax_attention_forward)


def augment_for_squared_distance(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Augmented query `[x ; 1]` and key `[2c ; -|c|^2]`, whose dot product `2 x.c - |c|^2 = |x|^2 - |x - c|^2` ranks
    the keys like the negative squared distance (`|x|^2` is the same for every key), so the distance kernel runs
    through any standard attention kernel. Shapes `(..., dim)` -> `(..., dim + 1)`.
    """
    query = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)
    key = torch.cat([2 * key, -(key * key).sum(dim=-1, keepdim=True)], dim=-1)
    return query, key


# ---------------------------------------------------------------------------------------------------------------------
# Modules. Each module that holds projections says how they realise the construction in `analytic_projections`, which
# `KMeansTransformerPreTrainedModel._init_weights` writes into its `nn.Linear`s.
# ---------------------------------------------------------------------------------------------------------------------


class KMeansTransformerEmbeddings(nn.Module):
    """
    Tokens from coordinates: point token `[x_i ; 0 ; 0]`, centroid token `[c_j ; e_j ; 1]`. `position_embedding`
    writes the coordinates into the position slice; `cluster_embeddings` `(num_clusters, hidden_size)` adds each
    centroid's identity `e_j` and the centroid flag.
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.position_embedding = nn.Linear(config.point_dim, config.hidden_size, bias=False)
        self.position_embedding.analytic_key = (type(self), "position_embedding")
        self.cluster_embeddings = nn.Parameter(torch.empty(config.num_clusters, config.hidden_size))

    @staticmethod
    def analytic_projections(config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, None]]:
        slices = config.token_slices
        weight = torch.zeros(config.hidden_size, config.point_dim)
        weight[slices["position"]] = torch.eye(config.point_dim)
        return {"position_embedding": (weight, None)}

    @staticmethod
    def analytic_cluster_embeddings(config: KMeansTransformerConfig) -> torch.Tensor:
        slices = config.token_slices
        embeddings = torch.zeros(config.num_clusters, config.hidden_size)
        embeddings[:, slices["code"]] = torch.eye(config.num_clusters)
        embeddings[:, slices["is_centroid"]] = 1.0
        return embeddings

    def forward(self, points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """`(batch, n, d)`, `(batch, k, d)` -> `(batch, n + k, hidden_size)`, points first."""
        point_tokens = self.position_embedding(points)
        centroid_tokens = self.position_embedding(centroids) + self.cluster_embeddings
        return torch.cat([point_tokens, centroid_tokens], dim=1)


class KMeansTransformerAttention(nn.Module):
    """
    One-head attention with `q_proj`, `k_proj`, `v_proj` and `o_proj`, its kernel chosen by
    `config._attn_implementation` through transformers' attention interface. Subclasses fix which tokens attend to
    which and give the analytic projections.
    """

    hardmax_ties = "average"  # read by `hardmax_attention_forward`
    query_bias = False

    @staticmethod
    def query_key_dim(config: KMeansTransformerConfig) -> int:
        """Width of the projected queries and keys (before `prepare_query_key`)."""
        return 1

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.scaling = config.inverse_temperature
        self.is_causal = False
        width, head_dim = config.hidden_size, self.query_key_dim(config)
        self.q_proj = nn.Linear(width, head_dim, bias=self.query_bias)
        self.k_proj = nn.Linear(width, head_dim, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(self, name).analytic_key = (type(self), name)

    @classmethod
    def analytic_projections(cls, config: KMeansTransformerConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Zero query and key maps, identity output map; subclasses set what differs."""
        width, head_dim = config.hidden_size, cls.query_key_dim(config)
        bias = torch.zeros(head_dim) if cls.query_bias else None
        return {
            "q_proj": (torch.zeros(head_dim, width), bias),
            "k_proj": (torch.zeros(head_dim, width), None),
            "v_proj": (torch.zeros(width, width), None),
            "o_proj": (torch.eye(width), None),
        }

    def prepare_query_key(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return query, key

    def forward(
        self,
        query_states: torch.Tensor,
        key_value_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, q_len, D)` attends to `(batch, kv_len, D)`; returns `(batch, q_len, D)` and the weights."""
        query = self.q_proj(query_states).unsqueeze(1)
        key = self.k_proj(key_value_states).unsqueeze(1)
        value = self.v_proj(key_value_states).unsqueeze(1)
        query, key = self.prepare_query_key(query, key)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        attn_output = attn_output.reshape(*query_states.shape[:-1], -1)
        return self.o_proj(attn_output), attn_weights


class KMeansTransformerErase(KMeansTransformerAttention):
    """
    Every token attends only to itself (a diagonal mask) with value `-(its slice erased_slice)`, so after the
    residual that slice is 0. Evaluated as windows of one token, so the cost is linear in the number of tokens; a
    single visible key has weight 1 under every kernel. Weights are returned as `(batch, 1, seq_len, 1)`.
    """

    erased_slice = "code"

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        erased = config.token_slices[cls.erased_slice]
        projections["v_proj"][0][erased, erased] = -torch.eye(erased.stop - erased.start)
        return projections

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, width = hidden_states.shape
        windows = hidden_states.reshape(batch_size * seq_len, 1, width)
        attn_output, attn_weights = super().forward(windows, windows, None, **kwargs)
        if attn_weights is not None:
            attn_weights = attn_weights.reshape(batch_size, 1, seq_len, 1)
        return attn_output.reshape(batch_size, seq_len, width), attn_weights


class KMeansTransformerPointErase(KMeansTransformerErase):
    """Block 1. Point `i` attends to itself; value `-[0 ; y_i ; 0]`, so after the residual `p_i = [x_i ; 0 ; 0]`."""

    erased_slice = "code"


class KMeansTransformerAssign(KMeansTransformerAttention):
    """
    Block 2, cross-attention from points to centroids. Query `[x_i ; 1]`, key `[2 c_j ; -|c_j|^2]` (built by
    `augment_for_squared_distance` from `q_proj(p_i) = x_i` and `k_proj(q_j) = c_j`), score `γ (|x_i|^2 - |x_i -
    c_j|^2)`; value `[0 ; e_j ; 0]`. Under hardmax, ties go to the lowest cluster index, so after the residual `p_i =
    [x_i ; e_a(i) ; 0]` with `a(i)` Lloyd's argmin. Padded points attend to nothing and stay `[x_i ; 0 ; 0]`.
    Weights `(batch, 1, n, k)`.
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


class KMeansTransformerCentroidErase(KMeansTransformerErase):
    """Block 3. Centroid `j` attends to itself; value `-[c_j ; 0 ; 0]`, so after the residual `q_j = [0 ; e_j ; 1]`."""

    erased_slice = "position"


class KMeansTransformerUpdate(KMeansTransformerAttention):
    """
    Block 4, cross-attention from the centroids to the (assigned) points and to the centroid tokens as they entered
    the layer. Query `[e_j ; -1/2]`, key `[y_i ; 0]` for points and `[e_j' ; 1]` for centroids, so the score is 1 for
    the members of cluster `j`, 0 for the other points, 1/2 for centroid `j` itself and -1/2 for the other centroids.
    Value: the position slice (`x_i`, or `c_j'`). Under hardmax the maximisers are the members, whose values are
    averaged: the new centroid is the mean of `S_j`; when `S_j` is empty the only maximiser is the centroid itself,
    which keeps its previous position. Padded points are invisible. Weights `(batch, 1, k, n + k)`.
    """

    query_bias = True

    @staticmethod
    def query_key_dim(config):
        return config.num_clusters + 1

    @classmethod
    def analytic_projections(cls, config):
        projections = super().analytic_projections(config)
        slices, k = config.token_slices, config.num_clusters
        query_weight, query_bias = projections["q_proj"]
        query_weight[:k, slices["code"]] = torch.eye(k)
        query_bias[k] = -0.5
        key_weight = projections["k_proj"][0]
        key_weight[:k, slices["code"]] = torch.eye(k)
        key_weight[k, slices["is_centroid"]] = 1.0
        projections["v_proj"][0][slices["position"], slices["position"]] = torch.eye(config.point_dim)
        return projections

    def forward(self, centroid_states, point_states, layer_input_centroid_states, point_mask, **kwargs):
        memory = torch.cat([point_states, layer_input_centroid_states], dim=1)
        centroid_visible = point_mask.new_ones(point_mask.shape[0], centroid_states.shape[1])
        attention_mask = torch.cat([point_mask, centroid_visible], dim=1)[:, None, None, :]
        return super().forward(centroid_states, memory, attention_mask, **kwargs)


class KMeansTransformerLayer(GradientCheckpointingLayer):
    """One Lloyd iteration on the tokens `(batch, n + k, hidden_size)`, points first."""

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.point_erase = KMeansTransformerPointErase(config)
        self.assign = KMeansTransformerAssign(config)
        self.centroid_erase = KMeansTransformerCentroidErase(config)
        self.update = KMeansTransformerUpdate(config)

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        layer_input_centroids = centroids
        points = points + self.point_erase(points, **kwargs)[0]  # [x_i ; 0 ; 0]
        points = points + self.assign(points, centroids, point_mask, **kwargs)[0]  # [x_i ; e_a(i) ; 0]
        centroids = centroids + self.centroid_erase(centroids, **kwargs)[0]  # [0 ; e_j ; 1]
        centroids = centroids + self.update(centroids, points, layer_input_centroids, point_mask, **kwargs)[0]
        return torch.cat([points, centroids], dim=1)  # centroids: [mean of S_j, or c_j if empty ; e_j ; 1]


class KMeansTransformerAssignmentHead(nn.Module):
    """Blocks 1 and 2 once more, against the returned centroids: the assignment that `labels` and `inertia` report."""

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.point_erase = KMeansTransformerPointErase(config)
        self.assign = KMeansTransformerAssign(config)

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor) -> torch.Tensor:
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        points = points + self.point_erase(points)[0]
        points = points + self.assign(points, centroids, point_mask)[0]
        return points


class KMeansTransformerPreTrainedModel(PreTrainedModel):
    config: KMeansTransformerConfig
    base_model_prefix = "kmeans_transformer"
    main_input_name = "points"
    _no_split_modules = ["KMeansTransformerLayer"]
    _supports_sdpa = True
    _can_record_outputs = {
        "hidden_states": OutputRecorder(KMeansTransformerLayer, index=0),
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


class KMeansTransformerModel(KMeansTransformerPreTrainedModel):
    r"""
    Lloyd's k-means as a transformer: `num_iterations` layers of four attention blocks, then an assignment head.

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

    def forward(
        self,
        points: torch.Tensor,
        centroids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_iterations: int | None = None,
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
                Initial centroids (a 2-D tensor is shared by the batch). Defaults to the first `num_clusters` real
                points of each problem, in order.
            attention_mask (`torch.Tensor` of shape `(batch_size, num_points)`, *optional*):
                1 (or True) for real points, 0 for padding, so problems of different sizes share a batch. Every
                problem needs at least `num_clusters` real points.
            num_iterations (`int`, *optional*):
                Number of Lloyd iterations, overriding `config.num_iterations`; only for shared layers.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        points, centroids, point_mask = self._check_inputs(points, centroids, attention_mask)
        outputs = self._run_layers(
            points,
            centroids,
            point_mask,
            self._check_num_iterations(num_iterations),
            output_hidden_states=bool(output_hidden_states),
            **{f"output_{name}_attentions": bool(output_attentions) for name in BLOCK_NAMES},
        )
        if output_attentions and outputs.assign_attentions:
            outputs.attentions = tuple(
                zip(*(getattr(outputs, f"{name}_attentions") for name in BLOCK_NAMES), strict=True)
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()

    @capture_outputs(tie_last_hidden_states=False)
    def _run_layers(self, points, centroids, point_mask, num_iterations, **kwargs) -> KMeansTransformerOutput:
        hidden_states = self.embeddings(points, centroids)
        for iteration in range(num_iterations):
            layer = self.layers[0] if self.config.share_layers else self.layers[iteration]
            hidden_states = layer(hidden_states, point_mask)

        num_points, slices = points.shape[1], self.config.token_slices
        final_points = self.assignment_head(hidden_states, point_mask)
        final_centroids = hidden_states[:, num_points:, slices["position"]]
        assignments = final_points[..., slices["code"]]
        labels = assignments.argmax(dim=-1).masked_fill(~point_mask, -1)
        nearest = final_centroids.gather(1, labels.clamp(min=0)[..., None].expand_as(points))
        inertia = (((points - nearest) ** 2).sum(dim=-1) * point_mask).sum(dim=-1)
        return KMeansTransformerOutput(
            labels=labels, centroids=final_centroids, inertia=inertia, assignments=assignments
        )

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
        if not torch.isfinite(points[point_mask]).all():
            raise ValueError("`points` contain NaN or infinite values.")
        points = points.masked_fill(~point_mask[..., None], 0.0)

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
