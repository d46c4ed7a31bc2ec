# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
r"""
Attention that learns about clusters: a k-head attention clustering layer whose head parameters are trained to find
the centroids of a Gaussian mixture, and identity attention, which quantises a context with no trainable parameter.
Both after Maulen-Soto, Marion and Boyer, "Attention-based clustering" (arXiv:2505.13112); the exact definitions are
our reading of the paper's description (docs/learning.md).

**Attention clustering layer** (`model_type="attention_clustering"`). Head `h = 1..k` holds one vector `θ_h ∈ R^d`,
its key and its value. A point `x` queries the heads with `[x ; 1]` against the keys `[θ_h ; -|θ_h|²/2]`, so that at
inverse temperature `λ`

    w_h(x) = softmax_h(λ (θ_h·x - |θ_h|²/2)) = softmax_h(-λ |x - θ_h|² / 2),     f(x) = Σ_h w_h(x) θ_h,

and the layer is trained on unlabeled points by minimising the population risk `R(θ) = E_x |x - f(x)|²`, estimated
on each batch of fresh samples. With `k = 2` this is the two-head layer.

**Identity attention** (`model_type="identity_attention"`). Query, key and value projections are the identity:

    x_i <- Σ_j softmax_j(λ x_i·x_j) x_j,

stacked `num_layers` times. Since `exp(λ x_i·x_j) = exp(-λ|x_i - x_j|²/2) exp(λ|x_i|²/2) exp(λ|x_j|²/2)`, one step is
a Gaussian mean-shift step at bandwidth `1/√λ` in which point `j` carries the weight `exp(λ|x_j|²/2)`.

This file and its configuration file import only torch and transformers, so checkpoints load with
`trust_remote_code=True`.
"""

import importlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_attention_clustering import AttentionClusteringConfig, IdentityAttentionConfig


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Softmax attention, `(batch, heads, q, dim)` queries against `(batch, heads, kv, dim)` keys; a boolean
    `attention_mask` (True where attending) hides keys. Returns `(batch, q, heads, value_dim)` and the weights."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _attention_function(config):
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


def _as_points(points, dtype, point_dim: int) -> torch.Tensor:
    """`(n, d)` or `(batch, n, d)` floating points of dimension `point_dim` -> `(batch, n, d)` in `dtype`."""
    points = torch.as_tensor(points)
    if not points.is_floating_point():
        raise ValueError(f"points must be floating-point, got {points.dtype}")
    if points.dim() == 2:
        points = points[None]
    if points.dim() != 3 or points.shape[-1] != point_dim:
        raise ValueError(f"points must have shape (batch, n, {point_dim}) or (n, {point_dim}), got {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("points must be finite (no NaN or infinity)")
    return points.to(dtype)


class CardedModelMixin:
    """
    `save_pretrained` also writes the model card, `README.md` (`kmeans_transformer.cards.render_learning_card`), and
    `push_to_hub` pushes it. Training code records what the card reports on the model: `card_training` (a dict of the
    training settings) and `card_evaluation` (`{"task", "dataset", "dataset_config", "metrics"}`, the metrics being
    what the evaluation function returned). Without the `kmeans_transformer` package (a checkpoint loaded with
    `trust_remote_code`), `card_writer` is None and transformers' own behaviour is kept.
    """

    card_writer = None  # set by the `kmeans_transformer` package to `cards.write_learning_card`
    checkpoint_saving = None  # set by the package to `convert.saving_checkpoint` (see `save_pretrained`)
    card_training: dict | None = None
    card_evaluation: dict | None = None

    def save_pretrained(self, save_directory, *args, overwrite: bool = False, push_to_hub: bool = False, **kwargs):
        """
        transformers' `save_pretrained`, and the card. With the package, the semantics of
        `kmeans_transformer.convert.saving_checkpoint`: files written under temporary names and renamed into place,
        the stale files of a previous checkpoint removed, other files left as they are, and a `README.md` the package
        did not write kept (with a warning) unless `overwrite`.
        """
        if push_to_hub:  # transformers' push writes its own card over ours: push through `push_to_hub`
            raise ValueError("save_pretrained(..., push_to_hub=True) is not supported; call model.push_to_hub(repo_id).")
        saving, writer = CardedModelMixin.checkpoint_saving, CardedModelMixin.card_writer
        if saving is None or writer is None or not kwargs.get("is_main_process", True):
            return super().save_pretrained(save_directory, *args, **kwargs)
        with saving(save_directory, overwrite=overwrite) as temporary:
            super().save_pretrained(temporary, *args, **kwargs)
            writer(self, temporary)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Push the model with its card (transformers' `push_to_hub`, then the card uploaded over its default one)."""
        commit = super().push_to_hub(repo_id, **kwargs)
        if CardedModelMixin.card_writer is None:
            return commit
        import tempfile
        from pathlib import Path

        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as directory:
            CardedModelMixin.card_writer(self, directory, repo_id=repo_id)
            options = {name: kwargs[name] for name in ("revision", "create_pr", "token") if name in kwargs}
            return HfApi(token=options.pop("token", None)).upload_file(
                path_or_fileobj=str(Path(directory) / "README.md"), path_in_repo="README.md", repo_id=repo_id,
                commit_message="Model card", **options,
            )


class _ClusteringPreTrainedModel(CardedModelMixin, PreTrainedModel):
    main_input_name = "points"
    _supports_sdpa = True

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Eager softmax (it returns the attention weights) unless another implementation is requested."""
        return super().get_correct_attn_implementation(requested_attention or "eager", is_init_check)


# ---------------------------------------------------------------------------------------------------------------------
# The k-head attention clustering layer
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class AttentionClusteringOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`): the empirical risk `mean_i |x_i - f(x_i)|²` on the given points.
    reconstruction (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)`): `f(x_i)`.
    head_weights (`torch.FloatTensor` of shape `(batch_size, num_points, num_heads)`): `w_h(x_i)`.
    labels (`torch.LongTensor` of shape `(batch_size, num_points)`): `argmax_h w_h(x_i)`, the nearest head.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    head_weights: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None


class AttentionClusteringModel(_ClusteringPreTrainedModel):
    """The k-head attention clustering layer (module docstring); `heads` is the `(k, d)` matrix of the `θ_h`."""

    config: AttentionClusteringConfig

    def __init__(self, config: AttentionClusteringConfig):
        super().__init__(config)
        self.heads = nn.Parameter(torch.empty(config.num_heads, config.point_dim))
        self.is_causal = False  # every query sees every key (read by the sdpa implementation)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is self:
            init.normal_(self.heads, std=self.config.initializer_range / self.config.point_dim**0.5)

    def forward(self, points, **kwargs) -> AttentionClusteringOutput:
        r"""
        Args:
            points (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)` or `(num_points, point_dim)`):
                the points `x_i`.
        """
        points = _as_points(points, self.heads.dtype, self.config.point_dim)
        heads = self.heads
        query = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)[:, None]
        key = torch.cat([heads, -0.5 * (heads * heads).sum(-1, keepdim=True)], dim=-1)
        key = key[None, None].expand(points.shape[0], 1, -1, -1)
        value = heads[None, None].expand(points.shape[0], 1, -1, -1)
        output, weights = _attention_function(self.config)(
            self, query, key, value, None, scaling=self.config.inverse_temperature, dropout=0.0, **kwargs
        )
        reconstruction = output[:, :, 0]
        if weights is None:  # an implementation that returns no weights (sdpa)
            weights = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * self.config.inverse_temperature, -1)
        weights = weights[:, 0]
        loss = ((points - reconstruction) ** 2).sum(-1).mean()
        return AttentionClusteringOutput(
            loss=loss, reconstruction=reconstruction, head_weights=weights, labels=weights.argmax(-1)
        )


def head_alignment(heads, centres) -> dict[str, float]:
    """How well the heads `θ` `(k, d)` match the centres `μ` `(k, d)`, heads matched one-to-one to centres to maximise
    the summed `cos` (a head is a location, so `θ_h ≈ -μ_j` is no match): `min_cos` and `mean_cos` (the matched
    `|cos(θ_h, μ_π(h))|`), `scaled_distance` (the largest
    `min_a |a θ_h - μ_π(h)| / |μ_π(h)|`, the distance after optimal scaling) and `distance` (the largest
    `|θ_h - μ_π(h)| / |μ_π(h)|`)."""
    import itertools

    heads = torch.as_tensor(heads, dtype=torch.float64).detach()
    centres = torch.as_tensor(np.array(centres, dtype=np.float64))  # a copy: NumPy views may have negative strides
    if heads.shape != centres.shape:
        raise ValueError(f"heads {tuple(heads.shape)} and centres {tuple(centres.shape)} must have the same shape")
    cosines = (heads @ centres.T) / (heads.norm(dim=-1)[:, None] * centres.norm(dim=-1)[None]).clamp_min(1e-300)
    k = heads.shape[0]
    best = max(itertools.permutations(range(k)), key=lambda p: float(cosines[range(k), list(p)].sum()))
    matched = centres[list(best)]
    absolute = cosines.abs()[range(k), list(best)]
    scale = (heads * matched).sum(-1) / (heads * heads).sum(-1).clamp_min(1e-300)
    norms = matched.norm(dim=-1)
    return {
        "min_cos": float(absolute.min()),
        "mean_cos": float(absolute.mean()),
        "scaled_distance": float(((scale[:, None] * heads - matched).norm(dim=-1) / norms).max()),
        "distance": float(((heads - matched).norm(dim=-1) / norms).max()),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Identity attention
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class IdentityAttentionOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)`): the points after `L` steps.
    hidden_states (`tuple(torch.FloatTensor)`): the points before the first step and after each (`L + 1` states).
    attentions (`tuple(torch.FloatTensor)`, *optional*): each step's `(batch_size, 1, num_points, num_points)`
        weights, when `output_attentions=True` and the implementation returns them.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class IdentityAttentionLayer(nn.Module):
    """One step `x_i <- Σ_j softmax_j(λ q_i·k_j) v_j` with `q = W_Q x`, `k = W_K x`, `v = W_V x`, all identities."""

    def __init__(self, config: IdentityAttentionConfig):
        super().__init__()
        self.config = config
        self.is_causal = False  # every point attends to every point (read by the sdpa implementation)
        self.q_proj = nn.Linear(config.point_dim, config.point_dim, bias=False)
        self.k_proj = nn.Linear(config.point_dim, config.point_dim, bias=False)
        self.v_proj = nn.Linear(config.point_dim, config.point_dim, bias=False)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        query, key, value = (proj(hidden_states)[:, None] for proj in (self.q_proj, self.k_proj, self.v_proj))
        output, weights = _attention_function(self.config)(
            self, query, key, value, attention_mask, scaling=self.config.inverse_temperature, dropout=0.0, **kwargs
        )
        return output[:, :, 0], weights


class IdentityAttentionModel(_ClusteringPreTrainedModel):
    """`num_layers` identity-attention steps (module docstring); padded points (`attention_mask` 0) are never
    attended to."""

    config: IdentityAttentionConfig

    def __init__(self, config: IdentityAttentionConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([IdentityAttentionLayer(config) for _ in range(config.num_layers)])
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            init.copy_(module.weight, torch.eye(module.in_features, dtype=module.weight.dtype))

    def forward(self, points, attention_mask=None, output_attentions: bool = False, **kwargs) -> IdentityAttentionOutput:
        r"""
        Args:
            points (`torch.FloatTensor` of shape `(batch_size, num_points, point_dim)` or `(num_points, point_dim)`).
            attention_mask (`torch.Tensor` of shape `(batch_size, num_points)`, *optional*): 1 for real points.
            output_attentions (`bool`, *optional*): return each step's attention weights.
        """
        hidden = _as_points(points, self.layers[0].q_proj.weight.dtype, self.config.point_dim)
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask, device=hidden.device).reshape(hidden.shape[:2]).bool()[:, None, None, :]
        states, attentions = [hidden], []
        for layer in self.layers:
            hidden, weights = layer(hidden, mask, **kwargs)
            states.append(hidden)
            attentions.append(weights)
        return IdentityAttentionOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(states),
            attentions=tuple(attentions) if output_attentions else None,
        )


def quantisation(outputs, centres, tolerance: float) -> dict[str, float]:
    """Quantisation of `outputs` `(n, d)` against the true `centres` `(k, d)`: `error`, the mean squared distance to
    the nearest centre, and `clusters`, the number of groups left when outputs closer than `tolerance` are merged
    (single linkage)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    outputs = torch.as_tensor(outputs, dtype=torch.float64).detach().numpy()
    centres = torch.as_tensor(centres, dtype=torch.float64).numpy()
    error = float(((outputs[:, None] - centres[None]) ** 2).sum(-1).min(-1).mean())
    clusters = 1 if len(outputs) < 2 else int(fcluster(linkage(outputs, "single"), tolerance, "distance").max())
    return {"error": error, "clusters": clusters}


__all__ = [
    "CardedModelMixin",
    "AttentionClusteringConfig",
    "AttentionClusteringModel",
    "AttentionClusteringOutput",
    "IdentityAttentionConfig",
    "IdentityAttentionModel",
    "IdentityAttentionOutput",
    "head_alignment",
    "quantisation",
]

# Within the installed package (not a checkpoint's copy of this file), the package attaches its saving and card hooks
# and the Auto classes; the module is named by a string, so that a checkpoint carries only this file's relative imports.
if __package__ == "kmeans_transformer":
    importlib.import_module("kmeans_transformer.hooks").attach_learning_models(
        CardedModelMixin, AttentionClusteringModel, IdentityAttentionModel
    )
