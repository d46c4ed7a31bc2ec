# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
r"""
An in-context clustering transformer, pre-trained on random mixture instances, after He et al., "Transformers versus
the EM algorithm in multi-class clustering" (arXiv:2502.06007); the architecture below is ours.

The model reads a context of `n` points and `k` initial centroids and returns each point's posterior over `k`
components:

1. **EM prefix** (`num_em_iterations = E >= 1`): `E` exact EM iterations for an isotropic Gaussian mixture, run by
   the package's gmm construction (`KMeansTransformerModel` with `variant="gmm"`, its analytic weights, frozen),
   from the initial centroids, variances `mean_i |x_i - x̄|² / d` and weights `1/k` (variances regularised by
   `em_reg_covar`). It gives means `μ_j`, variances
   `σ_j²`, weights `π_j` and responsibilities `r_ij`. With `E = 0` there is no prefix: `μ_j` are the initial
   centroids and the base logits below are 0.
2. **Tokens**: point `i` is `W_p x_i`, component `j` is `W_c [μ_j ; log σ_j² ; log π_j]` (width `hidden_size`);
   no token carries a component index, so the model is equivariant under relabelling the components.
3. **Layers** (`num_layers`): pre-norm transformer layers, multi-head softmax self-attention over all `n + k` tokens
   through the attention interface, then a GELU MLP, each added to the residual stream.
4. **Readout**: `logits_ij = log r_ij + (W_Q h_i)·(W_K h_{n+j}) / √hidden_size`, `posterior_i = softmax_j(logits_ij)`.

`initialization="gmm"` (needs `E >= 1`) sets `W_Q = 0`: the untrained model's posteriors are EM's responsibilities,
and training learns a correction on top of EM. `initialization="random"` draws every weight from `N(0, 0.02²)` (the
usual transformer initialisation). Training minimises the cross-entropy under the best matching of components to the
true labels (`matched_cross_entropy`), so the loss does not depend on how the components are numbered.
"""

import importlib
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput

from .attention_clustering import CardedModelMixin, _as_points, eager_attention_forward
from .configuration_in_context import INITIALIZATIONS, InContextClusteringConfig
from .modeling_kmeans_transformer import KMeansTransformerEmbeddings, KMeansTransformerModel, KMeansTransformerPreTrainedModel


@dataclass
class InContextClusteringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): `matched_cross_entropy`, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_points, num_clusters)`): `logits_ij`.
    posteriors (`torch.FloatTensor` of shape `(batch_size, num_points, num_clusters)`): `softmax_j(logits_ij)`.
    labels (`torch.LongTensor` of shape `(batch_size, num_points)`): `argmax_j logits_ij`.
    em_responsibilities (`torch.FloatTensor`, *optional*): the prefix's `r_ij` (None without a prefix).
    centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)`): the prefix's means `μ_j` (the
        initial centroids without a prefix).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*): the `n + k` tokens as embedded and after each layer.
    attentions (`tuple(torch.FloatTensor)`, *optional*): each layer's `(batch, heads, n + k, n + k)` weights.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    posteriors: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    em_responsibilities: torch.FloatTensor | None = None
    centroids: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class InContextClusteringAttention(nn.Module):
    """Multi-head softmax self-attention over the tokens, dispatched through the attention interface."""

    def __init__(self, config: InContextClusteringConfig):
        super().__init__()
        self.config = config
        self.is_causal = False  # every token attends to every token (read by the sdpa implementation)
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(config.hidden_size, config.hidden_size) for _ in range(4)
        )

    def forward(self, hidden_states, attention_mask, **kwargs):
        batch, length, _ = hidden_states.shape
        query, key, value = (
            proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        function = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = function(self, query, key, value, attention_mask, scaling=self.head_dim**-0.5, dropout=0.0, **kwargs)
        return self.o_proj(output.reshape(batch, length, -1)), weights


class InContextClusteringLayer(nn.Module):
    """`h <- h + Attn(LN(h))`, then `h <- h + MLP(LN(h))`."""

    def __init__(self, config: InContextClusteringConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = InContextClusteringAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )

    def forward(self, hidden_states, attention_mask, **kwargs):
        update, weights = self.attention(self.attention_norm(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + update
        return hidden_states + self.mlp(self.mlp_norm(hidden_states)), weights


class InContextClusteringPreTrainedModel(CardedModelMixin, PreTrainedModel):
    config: InContextClusteringConfig
    base_model_prefix = "in_context_clustering"
    main_input_name = "points"
    _supports_sdpa = True
    _no_split_modules = ["InContextClusteringLayer"]

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Eager softmax (it returns the attention weights) unless another implementation is requested."""
        return super().get_correct_attn_implementation(requested_attention or "eager", is_init_check)

    @torch.no_grad()
    def _init_weights(self, module):
        """The EM prefix gets the gmm construction; the rest the usual random weights, except the readout query under
        `initialization="gmm"`, which is zero (so that the untrained model is EM)."""
        if (isinstance(module, nn.Linear) and hasattr(module, "analytic_key")) or isinstance(
            module, KMeansTransformerEmbeddings
        ):
            KMeansTransformerPreTrainedModel._init_weights(self.em, module)
        elif isinstance(module, nn.Linear):
            if module is getattr(self, "readout_query", None) and self.config.initialization == "gmm":
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class InContextClusteringModel(InContextClusteringPreTrainedModel):
    """The in-context clustering transformer (module docstring)."""

    def __init__(self, config: InContextClusteringConfig):
        super().__init__(config)
        self.em = None
        if config.num_em_iterations > 0:
            self.em = KMeansTransformerModel(config.em_config())
            self.em.requires_grad_(False)
        self.point_embedding = nn.Linear(config.point_dim, config.hidden_size)
        self.component_embedding = nn.Linear(config.point_dim + 2, config.hidden_size)
        self.layers = nn.ModuleList([InContextClusteringLayer(config) for _ in range(config.num_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.readout_query = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.readout_key = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.post_init()

    @property
    def _dtype(self):
        return self.point_embedding.weight.dtype

    def _components(self, points, centroids, point_mask):
        """The prefix's (or the initial) means, variances, weights and base logits."""
        k = self.config.num_clusters
        if self.em is not None:
            em = self.em(points, centroids=centroids, attention_mask=point_mask)
            tiny = torch.finfo(points.dtype).tiny
            base = torch.log(em.responsibilities.clamp_min(tiny))
            return em.centroids, em.variances, em.weights, base, em.responsibilities
        counts = point_mask.sum(1, keepdim=True).to(points.dtype)
        mean = (points * point_mask[..., None]).sum(1, keepdim=True) / counts[..., None]
        spread = (((points - mean) ** 2).sum(-1) * point_mask).sum(1, keepdim=True) / (counts * points.shape[-1])
        variances = torch.where(spread > 0, spread, torch.ones_like(spread)).expand(-1, k)
        weights = torch.full_like(variances, 1.0 / k)
        base = points.new_zeros(points.shape[0], points.shape[1], k)
        return centroids, variances, weights, base, None

    def forward(
        self,
        points,
        centroids=None,
        attention_mask=None,
        labels=None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> InContextClusteringOutput:
        r"""
        Args:
            points (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)` or `(num_points, point_dim)`).
            centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)`, *optional*): the
                initialisation; defaults to the first `num_clusters` points.
            attention_mask (`torch.Tensor` of shape `(batch_size, num_points)`, *optional*): 1 for real points.
            labels (`torch.LongTensor` of shape `(batch_size, num_points)`, *optional*): true components, for the loss.
        """
        k, dtype = self.config.num_clusters, self._dtype
        points = _as_points(points, dtype, self.config.point_dim)
        batch, n, _ = points.shape
        if n < k:
            raise ValueError(f"a context needs at least num_clusters={k} points, got {n}")
        if centroids is None:
            centroids = points[:, :k]
        centroids = torch.as_tensor(centroids, device=points.device).to(dtype)
        if centroids.dim() == 2:
            centroids = centroids[None].expand(batch, -1, -1)
        if centroids.shape != (batch, k, self.config.point_dim):
            raise ValueError(f"centroids must have shape ({batch}, {k}, {self.config.point_dim}), got {tuple(centroids.shape)}")
        point_mask = torch.ones(batch, n, dtype=torch.bool, device=points.device)
        if attention_mask is not None:
            point_mask = torch.as_tensor(attention_mask, device=points.device).reshape(batch, n).bool()
        means, variances, weights, base, responsibilities = self._components(points, centroids, point_mask)
        components = torch.cat([means, torch.log(variances)[..., None], torch.log(weights.clamp_min(1e-30))[..., None]], -1)
        hidden = torch.cat([self.point_embedding(points), self.component_embedding(components)], dim=1)
        visible = torch.cat([point_mask, point_mask.new_ones(batch, k)], dim=1)[:, None, None, :]
        states, attentions = [hidden], []
        for layer in self.layers:
            hidden, layer_weights = layer(hidden, visible, **kwargs)
            states.append(hidden)
            attentions.append(layer_weights)
        hidden = self.norm(hidden)
        scores = self.readout_query(hidden[:, :n]) @ self.readout_key(hidden[:, n:]).transpose(1, 2)
        logits = base + scores / self.config.hidden_size**0.5
        loss = None if labels is None else matched_cross_entropy(logits, labels, point_mask)
        return InContextClusteringOutput(
            loss=loss,
            logits=logits,
            posteriors=torch.softmax(logits, dim=-1),
            labels=logits.argmax(-1).masked_fill(~point_mask, -1),
            em_responsibilities=responsibilities,
            centroids=means,
            hidden_states=tuple(states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


def _permutations(k: int, device) -> torch.LongTensor:
    if k > 7:
        raise ValueError(f"matching by enumeration is for k <= 7 components, got {k}")
    return torch.tensor(list(itertools.permutations(range(k))), device=device)


def _best_matching_cost(cost: torch.Tensor, maximise: bool) -> torch.Tensor:
    """`(batch, k, k)` costs `C[a, j]` (true component `a`, model component `j`) -> `(batch,)` best `Σ_a C[a, π(a)]`."""
    permutations = _permutations(cost.shape[-1], cost.device)
    totals = cost[:, torch.arange(cost.shape[-1], device=cost.device), permutations].sum(-1)  # (batch, k!)
    return totals.amax(-1) if maximise else totals.amin(-1)


def matched_cross_entropy(logits, labels, point_mask=None) -> torch.Tensor:
    """Mean over problems of `min_π -mean_i log p_{i, π(z_i)}`: the cross-entropy under the best matching of the
    true components `z_i` to the model's (all `k!` matchings enumerated). Points with `labels < 0` or a False
    `point_mask` are left out."""
    log_probabilities = torch.log_softmax(logits, dim=-1)
    k = logits.shape[-1]
    labels = torch.as_tensor(labels, device=logits.device).long()
    valid = labels >= 0 if point_mask is None else point_mask & (labels >= 0)
    one_hot = nn.functional.one_hot(labels.clamp_min(0), k).to(logits.dtype) * valid[..., None]
    cost = -one_hot.transpose(1, 2) @ log_probabilities  # (batch, true a, model j)
    return (_best_matching_cost(cost, maximise=False) / valid.sum(1).clamp_min(1)).mean()


def misclustering_rate(predicted, labels, num_clusters: int) -> torch.Tensor:
    """`(batch,)` fraction of points misclustered under the best matching of predicted to true components."""
    predicted = torch.as_tensor(predicted).long()
    labels = torch.as_tensor(labels).long()
    if predicted.dim() == 1:
        predicted, labels = predicted[None], labels[None]
    one_hot = lambda values: nn.functional.one_hot(values, num_clusters).double()  # noqa: E731
    agreement = one_hot(labels).transpose(1, 2) @ one_hot(predicted)
    return 1 - _best_matching_cost(agreement, maximise=True) / labels.shape[1]


__all__ = [
    "InContextClusteringConfig",
    "InContextClusteringModel",
    "InContextClusteringOutput",
    "matched_cross_entropy",
    "misclustering_rate",
]

# Within the installed package (not a checkpoint's copy of this file), the package attaches its saving and card hooks
# and the Auto class (named by a string, so that a checkpoint carries only this file's relative imports).
if __package__ == "kmeans_transformer":
    importlib.import_module("kmeans_transformer.hooks").attach_learning_models(CardedModelMixin, InContextClusteringModel)
