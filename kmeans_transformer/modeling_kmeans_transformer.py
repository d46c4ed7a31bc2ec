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

A variant (`variants.VARIANTS`, selected by `config.variant`) chooses the assign and update blocks and the
feed-forward blocks added after them (`blocks.py`); the kernels are in `attention.py`. Two engines run the same
iteration (`KMeansTransformerModel.engine`): the token layers, and, for the variants whose spec allows it, the compact
engine, which runs the assign block on a compact state and the update block as its sufficient statistics.
"""

import contextlib
import difflib
import importlib
import inspect
import math
import operator
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .attention import (
    attention_functions,
    hardmax_attention_forward,
    rescaling_exponents,
    safe_magnitude_exponents,
    times_power_of_two,
)
from .blocks import (
    EXACT_ARGMAX_KERNELS,
    KMeansTransformerAssign,
    KMeansTransformerCentroidErase,
    KMeansTransformerPointErase,
    KMeansTransformerUpdate,
    tag_analytic,
)
from .configuration_kmeans_transformer import KMeansTransformerConfig
from . import cpu_kernels
from .cpu_kernels import MEMBERSHIP_LANE_ROWS, lloyd_step, membership_sums, membership_sums_run, nearest_inertia
from .variants import VARIANTS


logger = logging.get_logger(__name__)

# transformers' attention interface, with this package's kernels registered (`kmeans_hardmax`, ...).
ALL_ATTENTION_FUNCTIONS = attention_functions()

BLOCK_NAMES = ("point_erase", "assign", "centroid_erase", "update")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ENGINES = ("compact", "tokens")
# Keywords that transformers' own callers may pass to any model's `forward` (the Trainer's `num_items_in_batch`, the
# generic `use_cache`): accepted and ignored. Any other unknown keyword is a `TypeError`.
IGNORED_FORWARD_KWARGS = ("num_items_in_batch", "use_cache")


@dataclass
class KMeansTransformerOutput(ModelOutput):
    r"""
    labels (`torch.LongTensor` of shape `(batch_size, num_points)`):
        Cluster of each point under the returned centroids (nearest centroid, lowest index on ties; largest cosine for
        `"spherical"`; largest responsibility or membership for `"soft"`, `"gmm"` and `"fuzzy"`, where values equal in
        real arithmetic may round either way); -1 for padded points and trimmed outliers.
    centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)`):
        The centroids (medoids for `"kmedoids"`, means for `"gmm"`) after the last layer.
    inertia (`torch.FloatTensor` of shape `(batch_size,)`):
        Sum over labelled points of the squared distance to the centroid of their label (the k-means objective; on the
        unit-normalised points for `"spherical"`), accumulated in float64 and rounded once to the model's dtype.
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
        Variants with a soft assignment (`"soft"`, `"gmm"`, `"fuzzy"`: `VariantSpec.soft_assignment`): the
        responsibilities or memberships of the returned parameters (the same tensor as `assignments`).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The tokens as embedded and after each layer (`num_iterations + 1` states), each of shape
        `(batch_size, num_points + num_clusters, hidden_size)`: the point tokens first, then the centroid tokens
        (`point_hidden_states` and `centroid_hidden_states` split them).
    attentions (`tuple(tuple(torch.FloatTensor))`, *optional*, returned when `output_attentions=True`):
        One tuple per layer holding the weights of its four attention blocks, in the order `BLOCK_NAMES`: point
        erase `(batch_size, 1, num_points, 1)` (each token's weight on itself), assign `(batch_size, 1, num_points,
        num_clusters)`, centroid erase `(batch_size, 1, num_clusters, 1)` and update `(batch_size, 1, num_clusters,
        num_points + num_clusters)` (on the points, then on the centroid tokens). Blocks whose kernel returns no
        weights (`"sdpa"`, `"kmeans_hardmax_chunked"`) run the dense kernel of the same weights for this.
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




class KMeansTransformerEmbeddings(nn.Module):
    """
    Tokens from coordinates: point token `[x_i ; 0 ; 0 ; 0 ; ...]`, centroid token `[c_j ; e_j ; 0 ; 1 ; ...]`.
    `position_embedding` writes the coordinates into the position slice; `cluster_embeddings` `(num_clusters,
    hidden_size)` adds each centroid's identity `e_j` and the centroid flag. The variant's spec adds the rest: a
    `unit_norm` variant sees unit-normalised points and centroids, a slot with a `point_value` gets it on the point
    tokens, and each carried state (gmm's variances and mixing weights) is written into its slot on the centroids.

    With `config.fitted_centroids`, it also holds the fitted parameters, the model's default initial parameters:
    `fitted_centroids` `(num_clusters, point_dim)` and one `fitted_<state>` `(num_clusters,)` per carried state,
    written by `KMeansTransformerModel.set_fitted_parameters`.
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        self.config = config
        self.position_embedding = nn.Linear(config.point_dim, config.hidden_size, bias=False)
        self.cluster_embeddings = nn.Parameter(torch.empty(config.num_clusters, config.hidden_size))
        tag_analytic(self, "position_embedding")
        if config.fitted_centroids:
            self.fitted_centroids = nn.Parameter(torch.empty(config.num_clusters, config.point_dim))
            for state in config.variant_spec.state:
                setattr(self, f"fitted_{state.name}", nn.Parameter(torch.empty(config.num_clusters)))

    def fitted_parameters(self) -> dict[str, torch.Tensor]:
        """The stored fitted parameters by forward argument name (`centroids` and the carried states), if any."""
        if not self.config.fitted_centroids:
            return {}
        names = ("centroids", *self.config.variant_spec.state_names)
        return {name: getattr(self, f"fitted_{name}") for name in names}

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

    def forward(self, points: torch.Tensor, centroids: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """
        `(batch, n, d)` points, `(batch, k, d)` centroids and the carried `state` (name -> `(batch, k)`) -> `(batch, n
        + k, hidden_size)` tokens, points first.
        """
        spec, slices = self.config.variant_spec, self.config.token_slices
        points, centroids = spec.seen_points(points), spec.seen_points(centroids)
        point_tokens = self.position_embedding(points)
        centroid_tokens = self.position_embedding(centroids) + self.cluster_embeddings
        for slot in spec.slots:
            if slot.point_value is not None:
                point_tokens[..., slices[slot.name]] = slot.point_value(points)
                centroid_tokens[..., slices[slot.name]] = 0.0
        for carried in spec.state:
            point_tokens[..., slices[carried.slot]] = 0.0
            centroid_tokens[..., slices[carried.slot]] = state[carried.name][..., None]
        return torch.cat([point_tokens, centroid_tokens], dim=1)


class KMeansTransformerLayer(GradientCheckpointingLayer):
    """
    One iteration: the four attention blocks and the variant's feed-forward blocks (`config.variant_spec`), on the
    tokens (`forward`) or, for the statistics path, as `accumulate` / `finalize`.
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        spec = config.variant_spec
        self.point_erase = spec.point_erase(config)
        self.assign = spec.assign(config)
        self.point_blocks = nn.ModuleDict({name: block(config) for name, block in spec.point_blocks.items()})
        self.centroid_erase = spec.centroid_erase(config)
        self.update = spec.update(config)
        self.centroid_blocks = nn.ModuleDict({name: block(config) for name, block in spec.centroid_blocks.items()})
        # Lloyd's own blocks and nothing else: the compact step may run as one compiled loop (`cpu_kernels.lloyd_step`)
        self.plain_lloyd = (type(self.assign) is KMeansTransformerAssign and type(self.update) is KMeansTransformerUpdate
                            and not self.point_blocks and not self.centroid_blocks)

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor, sample_weight=None, **kwargs):
        """
        `sample_weight` `(batch, n)` (None: every point weighs 1): the assign block labels every real point; the
        blocks after it count a point with its weight (`weighted_blocks`), and a point of weight 0 not at all.
        """
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        points = points + self.point_erase(points, **kwargs)[0]  # [x_i ; 0 ; ...]
        points = points + self.assign(points, centroids, point_mask, **kwargs)[0]  # [x_i ; e_a(i) ; ...]
        counted, weighted = weighted_blocks(point_mask, sample_weight)
        for block in self.point_blocks.values():
            points = points + block(points, counted, **weighted(block))
        centroids = centroids + self.centroid_erase(centroids, **kwargs)[0]  # [0 ; e_j ; c_j ; 1]
        centroids = centroids + self.update(centroids, points, counted, **weighted(self.update), **kwargs)[0]
        for block in self.centroid_blocks.values():
            centroids = centroids + block(centroids, counted, **weighted(block))
        return torch.cat([points, centroids], dim=1)

    def finalize(self, statistics: torch.Tensor, parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        The parameters after this iteration from the update's summed sufficient statistics (`update.accumulate`) and
        the entering `parameters`: the update's `finalize`, then each centroid block's.
        """
        new = self.update.finalize(statistics, parameters)
        for block in self.centroid_blocks.values():
            new = block.finalize(new, parameters)
        return new

    def compact_forward(self, tokens: torch.Tensor, point_mask: torch.Tensor | None, sample_weight=None):
        """
        The compact engine's iteration on the compact tokens `(batch, n + k, d + 1)`, `[x_i ; 1]` then `[c_j ; 1]`
        (`point_mask` None when every point is real). Blocks 1 and 3 are bookkeeping there: the labels are made anew
        (the assign block's `assign_labels`), and the centroid tokens hold the entering centroids until
        `finalize(accumulate(...))` replaces them, in place. Returns the labels this iteration assigned.
        """
        return self.compact_step(tokens, point_mask, sample_weight)[0]

    def compact_step(self, tokens: torch.Tensor, point_mask: torch.Tensor | None, sample_weight=None):
        """
        `compact_forward`, returning also the statistics `(batch, k, width)` the update read (`compact_statistics`;
        the last column is each cluster's mass). For Lloyd's blocks without sample weights on CPU the assign, the sums
        and the update run per problem in one compiled loop (`cpu_kernels.lloyd_step`: the same numbers as the steps
        below, without a Python operation between them).
        """
        num_points = tokens.shape[1] - self.update.config.num_clusters
        centroids = tokens[:, num_points:, :-1]
        if self.plain_lloyd and sample_weight is None:
            fused = lloyd_step(tokens, self.assign.compact_query_key(tokens[:, :num_points], centroids)[1], point_mask)
            if fused is not None:
                return fused
        labels = CompactFrame.labels(self.assign, self.update, tokens[:, :num_points], centroids, point_mask)
        labels = gated_labels(self.point_blocks, tokens[:, :num_points], centroids, labels, sample_weight)
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
        statistics = self.update.compact_statistics(labels, tokens[:, :num_points], centroids, **weighted)
        centroids.copy_(self.finalize(statistics, {"centroids": centroids})["centroids"])
        return labels, statistics


class KMeansTransformerAssignmentHead(nn.Module):
    """
    Blocks 1 and 2 once more (and the variant's point blocks that report on the assignment, such as the trim gate of
    `"trimmed"`), against the returned centroids: the assignment that `labels`, `inertia` and `outliers` report.
    """

    def __init__(self, config: KMeansTransformerConfig):
        super().__init__()
        spec = config.variant_spec
        point_erase, assign = spec.head_blocks
        self.point_erase = point_erase(config)
        self.assign = assign(config)
        gates = {name: block for name, block in spec.point_blocks.items() if block.reports_assignment}
        self.point_blocks = nn.ModuleDict({name: block(config) for name, block in gates.items()})
        # Lloyd's assign and no gate: the labels and the inertia may come from one compiled pass (`nearest_inertia`)
        self.plain_assign = type(self.assign) is KMeansTransformerAssign and not self.point_blocks
        self.update_class = spec.update  # the layers' update, whose statistics decide the labels' `CompactFrame`

    def compact_labels(self, point_tokens, centroids, point_mask, sample_weight=None) -> torch.LongTensor:
        """
        The head on the compact state: the assign block's labels (`CompactFrame.labels`), then its gates' (-1:
        padding, an outlier).
        """
        labels = CompactFrame.labels(self.assign, self.update_class, point_tokens, centroids, point_mask)
        return gated_labels(self.point_blocks, point_tokens, centroids, labels, sample_weight)

    def compact_labels_and_inertia(self, tokens, point_mask, sample_weight=None):
        """
        `compact_labels` on the compact tokens `(batch, n + k, d + 1)` and `labelled_inertia` against their centroid
        rows, in one compiled pass (`cpu_kernels.nearest_inertia`: the same numbers) where the head is Lloyd's
        assign alone and takes its labels in the tokens' dtype (`CompactFrame.labels_dtype`); else None.
        """
        if not self.plain_assign:
            return None
        num_points = tokens.shape[1] - self.assign.config.num_clusters
        centroids = tokens[:, num_points:, :-1]
        if CompactFrame.labels_dtype(self.assign, self.update_class, centroids) != tokens.dtype:
            return None
        key = self.assign.compact_query_key(tokens[:, :num_points], centroids)[1]
        return nearest_inertia(tokens, key, point_mask, sample_weight)

    def forward(self, hidden_states: torch.Tensor, point_mask: torch.Tensor, sample_weight=None) -> torch.Tensor:
        num_points = point_mask.shape[1]
        points, centroids = hidden_states[:, :num_points], hidden_states[:, num_points:]
        points = points + self.point_erase(points)[0]
        points = points + self.assign(points, centroids, point_mask)[0]
        counted, weighted = weighted_blocks(point_mask, sample_weight)
        for block in self.point_blocks.values():
            points = points + block(points, counted, **weighted(block))
        return points


def check_local_path(name) -> None:
    """
    `OSError` at once if `name` looks like a local path (a `PathLike`, or a string that contains a path separator
    other than a single `OWNER/NAME` slash, ends with one, or starts with `.` or `~`) and is no directory: such a
    name is never sent to the Hub. A plain `OWNER/NAME` or `NAME` that is no local directory stays a Hub id.
    """
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
    if text is None or os.path.isdir(os.path.expanduser(text)):
        return
    looks_local = (
        not isinstance(name, str)
        or text.startswith((".", "~", os.sep))
        or text.endswith(("/", os.sep))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
        or os.path.exists(text)
    )
    if looks_local:
        what = "is a file, not a checkpoint directory" if os.path.exists(text) else "does not exist"
        raise OSError(f"{text}: {what} (a local checkpoint is a directory written by save_pretrained)")


# The names `attn_implementation` accepts: the exact hardmax kernels first, then the softmax backends and the other
# kernels of `attention.py` (which only the blocks that name them should run).
ATTENTION_BACKENDS = (
    "kmeans_hardmax", "hardmax", "kmeans_hardmax_chunked", "eager", "sdpa", "kmeans_linear", "kmeans_sparsemax",
    "kmeans_gumbel_max", "kmeans_distance", "kmeans_fuzzy",
)


def attention_backend_problem(config: KMeansTransformerConfig, implementation: str) -> str | None:
    """
    Why `implementation` may not run a model of `config`, or None. A variant's argmax blocks (`attention_function =
    None`: Lloyd's assign and mean update, and their spherical, trimmed, k-medoids and sparse forms) run the model's
    implementation; under anything but the exact hardmax kernels they become a softmax at `inverse_temperature`, a
    different algorithm. That relaxation is run only when asked for by an explicit `inverse_temperature` on a variant
    that reads it for nothing else (a default of None in its spec); otherwise it is refused, in one line.
    """
    if ALL_ATTENTION_FUNCTIONS.get(implementation) in EXACT_ARGMAX_KERNELS:
        return None
    spec = config.variant_spec
    layer_blocks = (spec.assign, spec.update, *spec.point_blocks.values(), *spec.centroid_blocks.values())
    if not any(getattr(block, "attention_function", "") is None for block in layer_blocks):
        return None  # its blocks name their own kernels: the same algorithm under every implementation
    relaxation_only = "inverse_temperature" in spec.parameters and spec.parameters["inverse_temperature"] is None
    if relaxation_only and config.inverse_temperature is not None:
        return None
    how = (
        ", or pass an explicit `inverse_temperature` to ask for that relaxation" if relaxation_only
        else f" ({spec.title} reads `inverse_temperature` for its own update, so it has no softmax relaxation)"
    )
    return (
        f"attn_implementation={implementation!r} would turn {spec.title}'s argmax blocks into a softmax at "
        f"`inverse_temperature`, a different algorithm: keep the exact \"kmeans_hardmax\" (the default){how}."
    )


def gated_labels(blocks, point_tokens, centroids, labels, sample_weight=None) -> torch.LongTensor:
    """
    The labels after the point blocks on the compact state: each block's `compact_labels` (the trim gate sets its
    outliers' labels to -1); the spec allows the compact engine only where every point block has one.
    """
    for block in blocks.values():
        labels = block.compact_labels(point_tokens, centroids, labels, sample_weight)
    return labels


def weighted_blocks(point_mask: torch.Tensor, sample_weight: torch.Tensor | None):
    """
    The mask of the points that count (real, weight > 0) and a function giving each block its `sample_weight`
    keyword (the update block and the blocks with `weighs_points`; nothing when every point weighs 1).
    """
    if sample_weight is None:
        return point_mask, lambda block: {}
    counted = point_mask & (sample_weight > 0)

    def weighted(block):
        weighs = getattr(block, "weighs_points", False) or isinstance(block, KMeansTransformerUpdate)
        return {"sample_weight": sample_weight} if weighs else {}

    return counted, weighted


class KMeansTransformerPreTrainedModel(PreTrainedModel):
    config: KMeansTransformerConfig
    base_model_prefix = "kmeans_transformer"
    main_input_name = "points"
    _no_split_modules = ["KMeansTransformerLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True  # the layers are `GradientCheckpointingLayer`s
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
        """
        The exact `"kmeans_hardmax"` kernel unless another one is requested; `ValueError` listing the valid names
        for an unknown one, and for one that would change the algorithm (`attention_backend_problem`).
        """
        requested = requested_attention or "kmeans_hardmax"
        if requested not in ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]:
            raise ValueError(
                f"Specified `attn_implementation={requested!r}` is not supported; valid: {list(ATTENTION_BACKENDS)} "
                "(the exact `\"kmeans_hardmax\"`, alias `\"hardmax\"`, is the default)."
            )
        if (problem := attention_backend_problem(self.config, requested)) is not None:
            raise ValueError(problem)
        return super().get_correct_attn_implementation(requested, is_init_check)

    def initialize_weights(self):
        """transformers' initialisation, each block's analytic projections computed once (not once per projection)."""
        self._analytic_projections = {}
        try:
            super().initialize_weights()
        finally:
            del self._analytic_projections

    @torch.no_grad()
    def _init_weights(self, module):
        """
        Write the analytic construction: a model built from its config is the algorithm of `config.variant`. The
        trainable blocks of `"learned"` with `init_from="random"` are drawn instead, as `nn.Linear` draws them
        (weights uniform in ±1/sqrt(fan_in) by Kaiming's rule with a = sqrt(5), biases uniform in ±1/sqrt(fan_in)).
        """
        if isinstance(module, nn.Linear) and hasattr(module, "analytic_key"):
            owner, name = module.analytic_key
            if getattr(owner, "trainable", False) and self.config.init_from == "random":
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.weight.shape[1])
                    init.uniform_(module.bias, -bound, bound)
                return
            cache = self.__dict__.get("_analytic_projections")  # set during `initialize_weights`
            if cache is None:
                projections = owner.analytic_projections(self.config)
            elif (projections := cache.get(id(owner))) is None:
                projections = cache[id(owner)] = owner.analytic_projections(self.config)
            weight, bias = projections[name]
            init.copy_(module.weight, weight)
            if module.bias is not None:
                init.copy_(module.bias, bias)
        elif isinstance(module, KMeansTransformerEmbeddings):
            init.copy_(module.cluster_embeddings, module.analytic_cluster_embeddings(self.config))
            if self.config.fitted_centroids:
                init.zeros_(module.fitted_centroids)
                for state in self.config.variant_spec.state:
                    init.constant_(getattr(module, f"fitted_{state.name}"), state.fitted_value(self.config.num_clusters))


@dataclass
class PreparedInputs:
    """
    The checked inputs of one forward call: `(batch, n, d)` points, `(batch, k, d)` centroids, a bool mask, state;
    rescaled by `2**-exponents` per problem where the data lies outside the dtype's safe range.
    """

    points: torch.Tensor
    centroids: torch.Tensor
    point_mask: torch.Tensor
    state: dict[str, torch.Tensor]
    exponents: torch.LongTensor | None = None  # per problem: the data was multiplied by 2**-exponent (None: by 1)
    sample_weight: torch.Tensor | None = None  # (batch, n), 0 on padding; None: every point weighs 1


# The largest rounding of an expanded float32 score (in the score's units, see `expanded_score_rounding`) that a
# weighted pass accepts: above it the compact engine's pass takes its products in float64, and the token engine warns.
EXPANDED_SCORE_TOLERANCE = 2.0**-12
# The largest bound on the relative error of a result that a float32 pass's sums cancel into (gmm's variances, see
# `CompactFrame.lane_sums`) that the pass accepts from float32 lane sums: above it the sums' products are in float64.
LANE_SUMS_TOLERANCE = 2.0**-14


def expanded_score_rounding(
    assign, parameters: dict, dtype: torch.dtype, origin: torch.Tensor | None = None, point_reach=None
) -> torch.Tensor | None:
    """
    The bound `u a_j (r + |c_j - o|)^2` `(batch, k)` (float64) on the rounding of `assign`'s scores in `dtype` when
    they are expanded dot products, `a_j (|x_i - o|^2 - 2 (x_i - o).(c_j - o) + |c_j - o|^2)` (`u` the dtype's unit
    roundoff, `a_j` the key's `assign.expanded_score_scales(parameters)`, `c_j` the `parameters`' centroids), for the
    points within `r` of the origin `o`: `origin` `(batch, 1, d)` (None: the coordinates' own), `point_reach` `r`
    `(batch, 1)` (None: the centroids' reach `max_j |c_j - o|`). Each term rounds by about `u` times its size, and
    `|x_i - o|^2 + 2 |x_i - o| |c_j - o| + |c_j - o|^2 = (|x_i - o| + |c_j - o|)^2`. None where the block takes its
    scores from the differences (nothing cancels).
    """
    scales = assign.expanded_score_scales(parameters)
    if scales is None:
        return None
    centroids = parameters["centroids"].detach().to(torch.float64)
    radii = torch.linalg.vector_norm(centroids if origin is None else centroids - origin.to(centroids), dim=-1)
    reach = radii + (radii.amax(dim=-1, keepdim=True) if point_reach is None else point_reach)
    return torch.finfo(dtype).eps / 2 * scales.detach().to(torch.float64) * reach * reach


@dataclass
class CompactFrame:
    """
    The coordinates of the compact engine's passes in a model narrower than float64 whose scores are expanded dot
    products (`assign.expanded_score_scales`): the points and parameters translated to `origin` `o` `(batch, 1, d)`,
    the mean of the entering centroids. Assignments (labels, memberships, trims, sparsemax weights) depend on the
    differences `x_i - c_j` alone and are unchanged by a common translation, the inertia too, and the statistics
    translate back exactly in float64 (`update.untranslated_statistics`: `Σ_i w_ij x_i = Σ_i w_ij (x_i - o) + o Σ_i
    w_ij`); near the data the expanded scores `|x|^2 - 2 x.c + |c|^2` round by `2^-24 (|x - o| + |c - o|)^2`, not
    `2^-24 (|x| + |c|)^2`, and the sums are of small numbers. `origin` None: the identity (the points as they are: a
    float64 model, or data already around the origin, which is neither copied nor translated).

    A weighted pass (soft, gmm, fuzzy) holds its frame (`of`), in the products' `dtype`: `values`, the compact point
    tokens `[x_i - o ; 1]`, and `queries`, the compiled passes' queries made from them, by assign block class;
    `lane_sums` decides, pass by pass, whether the compiled sums may be float32 lanes. A hard assignment (lloyd,
    trimmed, sparse) takes only the origin (`labels_origin`), once per call: its tokens `[x_i - o ; 1]` and `[c_j -
    o ; 1]` are written in the one pass that writes them (`cpu_kernels.compact_tokens`), the iterations run in the
    frame, and each iteration's centroids are also taken in the points' coordinates from its statistics
    (`iteration_centroids`): the returned ones are rounded once, as without a frame. A hard assignment whose update's
    statistics do not translate (k-medoids: its medoids are the data rows themselves) keeps the points as they are,
    and takes its labels from float64 products where the float32 ones would round past the tolerance
    (`labels_dtype`, `labels`).
    """

    origin: torch.Tensor | None
    dtype: torch.dtype
    values: torch.Tensor
    queries: dict

    @staticmethod
    def mean_origin(centroids: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """
        The mean `o` `(batch, 1, d)` of `centroids` `(batch, k, d)`, and whether every problem is already central:
        `|o| <= max_j |c_j - o|`, where translating gains at most a factor 2 in `|x| + |c|` and costs a copy.
        """
        origin = centroids.mean(dim=1, keepdim=True)
        wide, wide_origin = centroids.to(torch.float64), origin.to(torch.float64)
        reach = torch.linalg.vector_norm(wide - wide_origin, dim=-1).amax(dim=-1, keepdim=True)  # max_j |c_j - o|
        return origin, bool((torch.linalg.vector_norm(wide_origin, dim=-1) <= reach).all())

    @classmethod
    def labels_origin(cls, assign, update, centroids: torch.Tensor) -> torch.Tensor | None:
        """
        The origin of a hard-assignment compact pass of `assign` (a block) and `update` (a block or its class)
        entering with `centroids` `(batch, k, d)`: their mean (`mean_origin`), or None (the identity) in float64, where
        the scores are not expanded distances (spherical's cosines: `expanded_score_scales` None), where the update's
        statistics do not translate (medoids, exact data points: `update.statistics_translate`; their labels' precision
        is `labels_dtype`'s), and where the centroids are already central.
        """
        if centroids.dtype == torch.float64 or not update.statistics_translate or centroids.shape[1] == 0:
            return None
        if assign.expanded_score_scales({"centroids": centroids[:, :1]}) is None:  # a declaration: any centroid says it
            return None
        origin, central = cls.mean_origin(centroids)
        return None if central else origin

    @staticmethod
    def labels_dtype(assign, update, centroids: torch.Tensor) -> torch.dtype:
        """
        The dtype of the products from which a hard-assignment compact pass of `assign` and `update` (a block or its
        class) entering with `centroids` `(batch, k, d)` takes its labels: the centroids' own, or float64 where no
        frame translates the pass (the update's statistics do not translate: `update.statistics_translate`) and its
        expanded scores at the coordinates' own origin round past `EXPANDED_SCORE_TOLERANCE` (`expanded_score_rounding`,
        for the points within the centroids' reach, as `of` bounds them). float64 products of float32 points and
        centroids round `2^-29` of the float32 ones: k-medoids' labels are then those of the differences, and its
        medoid update, which is `O(Σ_j |S_j|^2 d)`, still reads the points as given. The centroids' own dtype while
        `torch.compile` traces (no values to bound; nor is a frame taken there, `_compact_tokens`).
        """
        dtype = centroids.dtype
        if dtype == torch.float64 or update.statistics_translate or centroids.shape[1] == 0:
            return dtype
        if torch.compiler.is_compiling():
            return dtype
        rounding = expanded_score_rounding(assign, {"centroids": centroids}, dtype)
        if rounding is None or bool((rounding <= EXPANDED_SCORE_TOLERANCE).all()):
            return dtype
        return torch.float64

    @classmethod
    def labels(cls, assign, update, point_tokens: torch.Tensor, centroids: torch.Tensor, point_mask):
        """
        `assign.assign_labels` `(batch, n)` of the compact point tokens `(batch, n, d + 1)` against `centroids`
        `(batch, k, d)` (`point_mask` None: every point is real), the tokens and centroids widened to `labels_dtype`
        (a copy of the tokens, made for these labels only).
        """
        dtype = cls.labels_dtype(assign, update, centroids)
        return assign.assign_labels(point_tokens.to(dtype), centroids.to(dtype), point_mask)

    @staticmethod
    def iteration_centroids(layer, statistics: torch.Tensor, entering: torch.Tensor, origin: torch.Tensor):
        """
        The centroids after an iteration of `layer` in the frame of `origin`, in the points' coordinates: its
        `finalize` of the float64 `statistics` translated back (`update.untranslated_statistics`), from the
        `entering` centroids in the points' coordinates (kept by an empty cluster), so that each is the float64
        quotient rounded once to the dtype, as without a frame (`c_j = N_j / R_j` for Lloyd's sums).
        """
        statistics = layer.update.untranslated_statistics(statistics, origin)
        return layer.finalize(statistics, {"centroids": entering})["centroids"]

    @classmethod
    def of(cls, assign, points: torch.Tensor, parameters: dict, previous: "CompactFrame | None") -> "CompactFrame":
        """
        The frame of a pass of `assign` over the seen `points` `(batch, n, d)` with `parameters`;
        `previous`: that of the forward call's last pass, kept (with its translated points and queries) while it is
        precise enough. The origin is the mean `o` of the entering centroids, or the coordinates' own origin where
        that is no farther from `o` than the farthest centroid (translating gains at most a factor 2 there, and costs
        a copy of the points). The expanded scores of the points within `r = max_j |c_j - o|` of the origin round
        by at most `expanded_score_rounding` (`u a_j (r + |c_j - o|)^2`); where that bound exceeds
        `EXPANDED_SCORE_TOLERANCE` even from the centroids' mean (clusters far apart, or one whose spread is tiny
        against its distance from the others), the products are taken in float64, in the previous float64 frame
        while the bound holds there in float64 (a collapsed gmm component, pass after pass: no new copy each pass).
        """
        dtype = points.dtype
        if dtype == torch.float64:
            return previous if previous is not None else cls(None, dtype, _with_ones(points), {})

        def precise_enough(origin, products=dtype):
            rounding = expanded_score_rounding(assign, parameters, products, origin)
            return rounding is None or bool((rounding <= EXPANDED_SCORE_TOLERANCE).all())

        if previous is not None and previous.dtype == dtype and precise_enough(previous.origin):
            return previous
        origin, central = cls.mean_origin(parameters["centroids"])
        if central and precise_enough(None):
            if previous is not None and previous.origin is None:
                return previous
            return cls(None, dtype, _with_ones(points), {})
        if not precise_enough(origin):
            dtype = torch.float64
            if previous is not None and previous.dtype == dtype and precise_enough(previous.origin, dtype):
                return previous  # float64 products still: the frame is kept while float64 is precise enough in it
        if previous is not None and previous.dtype == dtype and previous.origin is not None:
            if torch.equal(previous.origin, origin):
                return previous
        return cls(origin, dtype, _with_ones(points, origin.to(dtype)), {})

    def parameters(self, parameters: dict) -> dict:
        """The parameters in this frame: the centroids translated to the origin, everything in the frame's dtype."""
        found = {name: value.to(self.dtype) for name, value in parameters.items()}
        if self.origin is not None:
            found["centroids"] = found["centroids"] - self.origin.to(self.dtype)
        return found

    def lane_sums(self, update, parameters: dict, statistics: torch.Tensor | None = None) -> bool:
        """
        Whether the compiled pass of `update` in this frame adds its products in float32 lanes
        (`cpu_kernels.membership_sums`: each sum within `ε = (MEMBERSHIP_LANE_ROWS + 2) u` of its sum of absolute
        terms, `u = 2^-24`: the roundings of a lane's products and additions, of `|y_i|^2` and of `s_i y_i`) rather
        than in float64: in a float32 frame, where the result that the update's `finalize` takes from the sums moves
        by at most `LANE_SUMS_TOLERANCE` of itself, `ε κ_j` (`update.sums_cancellation`) for every component. Before
        the pass `κ_j` is that of the entering `parameters` (in this frame); after it, that of the pass's
        `statistics` (in this frame), and where it fails there the pass is taken again with float64 products (a
        component whose spread collapsed in that iteration).
        """
        if self.dtype != torch.float32:
            return False
        cancellation = update.sums_cancellation(parameters, statistics)
        if cancellation is None:
            return True
        lane_error = (MEMBERSHIP_LANE_ROWS + 2) * torch.finfo(torch.float32).eps / 2
        return bool((lane_error * cancellation <= LANE_SUMS_TOLERANCE).all())

    def statistics(self, update, statistics: torch.Tensor | None) -> torch.Tensor | None:
        """The float64 statistics of the points themselves from those summed in this frame."""
        if statistics is None or self.origin is None:
            return statistics
        return update.untranslated_statistics(statistics, self.origin)


class CompactIterations:
    """
    The compact engine's state between iterations (see [`KMeansTransformerModel.compact_iterations`]): the compact
    tokens of a batch of problems, on which `step()` runs the model's one layer (`compact_forward`, the same
    iteration `forward` runs). `centroids` are those entering the next step; `set_centroids` replaces them and
    `keep` drops the problems a caller is done with.
    """

    def __init__(self, model: "KMeansTransformerModel", inputs: PreparedInputs):
        self.layer = model.layers[0]
        self.num_points = inputs.points.shape[1]
        self.tokens, self.point_mask, self.origin = model._compact_tokens(inputs)  # the tokens in the `CompactFrame`
        self.sample_weight = inputs.sample_weight
        # in a frame, the centroids in the points' coordinates (`CompactFrame.iteration_centroids`)
        self.returned = None if self.origin is None else model.config.variant_spec.seen_points(inputs.centroids)

    @property
    def framed_centroids(self) -> torch.Tensor:
        """The centroid rows of the tokens, `(batch, k, d)`: `c_j - o` in the `CompactFrame` of `origin` (a view)."""
        return self.tokens[:, self.num_points :, :-1]

    @property
    def centroids(self) -> torch.Tensor:
        """The centroids entering the next step, `(batch, k, d)`, in the points' coordinates (clone to keep them)."""
        return self.framed_centroids if self.origin is None else self.returned

    def step(self) -> tuple[torch.LongTensor, torch.Tensor]:
        """
        One iteration: the labels it assigned `(batch, n)` from the entering centroids, which it then updates, and
        each cluster's mass in that assignment `(batch, k)` (its point count, or its total sample weight).
        """
        labels, statistics = self.layer.compact_step(self.tokens, self.point_mask, self.sample_weight)
        if self.origin is not None:
            self.returned = CompactFrame.iteration_centroids(self.layer, statistics, self.returned, self.origin)
        return labels, statistics[..., -1]

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Continue from `centroids` `(batch, k, d)` (as the variant sees them)."""
        if self.origin is None:
            self.framed_centroids.copy_(centroids)
        else:
            self.returned = centroids.to(self.tokens.dtype).clone()
            self.framed_centroids.copy_(self.returned - self.origin)

    def keep(self, problems: torch.LongTensor) -> None:
        """Keep only the problems at indices `problems` of the batch, in that order."""
        self.tokens = self.tokens[problems]
        if self.origin is not None:
            self.origin, self.returned = self.origin[problems], self.returned[problems]
        if self.point_mask is not None:
            self.point_mask = self.point_mask[problems]
        if self.sample_weight is not None:
            self.sample_weight = self.sample_weight[problems]


class KMeansTransformerModel(KMeansTransformerPreTrainedModel):
    r"""
    A clustering algorithm as a transformer: `num_iterations` layers, one iteration of `config.variant` each, then an
    assignment head.

    Numeric range. Squared distances overflow or underflow when the data's largest `|coordinate|` lies outside a
    range of the dtype (`attention.safe_magnitude_exponents`: [4.4e-16, 4.6e18] in float32 and [1e-146, 3.3e153] in
    float64 for a single number; the top is lower by the square root of the number of squares summed). A problem
    outside it is multiplied by a power of two (exact) into the range and its outputs scaled back (centroids,
    inertia, gmm's variances) when the variant's result is equivariant (`VariantSpec.scaling`); a variant with a
    parameter in units of the data (`VariantSpec.scale_parameters`: soft, sparse, gumbel kmedoids, gmm with
    `reg_covar > 0`) refuses it (`ValueError` naming the range); spherical normalises every vector at any scale. Data
    inside the range is used as it is. Sums over points (hard means, the inertia) are accumulated in float64.

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

    # Set by the `kmeans_transformer` package (`hooks.attach`, at the end of this file) to its carded push
    # (`hub.push_model`); None where only this file and its relative imports are present (a model loaded with
    # `trust_remote_code`): transformers' own push is used.
    carded_push = None
    # Set by the package to `convert.saving_checkpoint` (the save semantics of `save_pretrained` below); None where
    # only this file and its relative imports are present: transformers' own `save_pretrained` is used.
    checkpoint_saving = None

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
        variances: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sample_weight: torch.Tensor | None = None,
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
                The points; cast to the model's dtype. Also a numpy array, a (nested) list or a pandas DataFrame
                (as for `centroids`, `attention_mask`, `variances` and `weights`; integers are read as numbers,
                except in an integer tensor, which is refused).
            centroids (`torch.FloatTensor` of shape `(batch_size, num_clusters, point_dim)` or `(num_clusters,
            point_dim)`, *optional*):
                Initial centroids (a 2-D tensor is shared by the batch). Defaults to the stored fitted centroids
                when `config.fitted_centroids`, else to the first `num_clusters` real points of each problem, in order.
            attention_mask (`torch.Tensor` of shape `(batch_size, num_points)`, *optional*):
                1 (or True) for real points, 0 for padding, so problems of different sizes share a batch (1-D for
                a single problem). Every problem needs at least `num_clusters` real points, or one when
                `num_iterations=0` and the centroids are given or fitted (the model then only assigns).
            num_iterations (`int`, *optional*):
                Number of iterations (a Python or numpy integer), overriding `config.num_iterations`; only for
                shared layers.
            variances (`torch.FloatTensor` of shape `(batch_size, num_clusters)` or `(num_clusters,)`, *optional*):
                `"gmm"` only: initial variances `σ_j^2 > 0`. Defaults to each problem's total variance per
                coordinate, `mean_i |x_i - x̄|^2 / d` (1 if the points are all equal), or the stored fitted ones.
            weights (`torch.FloatTensor` of shape `(batch_size, num_clusters)` or `(num_clusters,)`, *optional*):
                `"gmm"` only: initial mixing weights `π_j >= 0` summing to 1. Defaults to `1 / k`, or the stored
                fitted ones.
            generator (`torch.Generator`, *optional*):
                Gumbel `"kmedoids"` only: the random generator of the medoid draws (seed it for reproducible runs).
            sample_weight (`torch.FloatTensor` of shape `(batch_size, num_points)` or `(num_points,)`, *optional*):
                Non-negative finite weight of each point (None: all 1). Every block after the assign block counts
                point `i` as `w_i` copies of itself (its multiplicity as a key, see `attention.py`): weighted means
                (lloyd, trimmed, spherical), weighted responsibilities and memberships (soft, gmm, fuzzy; gmm's
                `π_j = Σ_i w_i r_ij / Σ_i w_i`), weighted medoid costs, weighted trimming quantiles
                (`KMeansTransformerTrimGate`), weighted sparsemax, and `inertia = Σ_i w_i |x_i - c_a(i)|^2`. Integer
                weights give the result of repeating the points. A point of weight 0 is labelled but counts nowhere;
                every problem needs a positive total weight.
            final_assignment (`bool`, *optional*, defaults to `True`):
                Run the assignment head, so that `labels`, `assignments`, `outliers` and `inertia` are those of the
                returned centroids. If `False` (needs `num_iterations >= 1`), skip it, one assign block less: they
                are then the assignment made by the last layer, from the centroids entering it, with `inertia`
                measured against the returned centroids (the objective after the last update). The looped fit of
                [`KMeans`] runs this way, one iteration per call.
            output_assignments (`bool`, *optional*, defaults to `True`):
                Return the `(batch_size, num_points, num_clusters)` `assignments` (and `responsibilities`); `False`
                leaves them out, so that the compact engine never holds a tensor of that size.
        """
        self._check_forward_kwargs(kwargs)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        num_iterations = self._check_num_iterations(num_iterations)
        if not final_assignment and num_iterations == 0:
            raise ValueError("`final_assignment=False` needs `num_iterations >= 1`: with no layer there is no assignment.")
        state = {"variances": variances, "weights": weights}
        inputs = self.prepare_inputs(
            points, centroids, attention_mask, state, num_iterations=num_iterations, sample_weight=sample_weight
        )
        self._check_generator(generator)
        outputs = self._run(
            inputs, num_iterations, generator, final_assignment, output_assignments, bool(output_attentions),
            bool(output_hidden_states),
        )
        if not output_assignments:
            outputs.assignments = outputs.responsibilities = None
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return outputs if return_dict else outputs.to_tuple()

    def _run(
        self, inputs, num_iterations, generator, final_assignment, output_assignments, output_attentions,
        output_hidden_states,
    ) -> KMeansTransformerOutput:
        """
        The engine `engine()` picks, on the prepared inputs; outputs of rescaled inputs are scaled back (the centroids
        by `2**exponent`, the inertia by `4**exponent`, each carried state by its power), hidden states and attentions
        stay those of the rescaled tokens.
        """
        if (problem := attention_backend_problem(self.config, self.config._attn_implementation)) is not None:
            raise ValueError(problem)  # an implementation written into the config by hand
        if self.engine(output_attentions, output_hidden_states) == "compact":
            outputs = self._run_compact(inputs, num_iterations, final_assignment, output_assignments)
        else:
            self.check_finite_weights()
            assigns = self._token_expanded_assigns(num_iterations, final_assignment)
            entering = {"centroids": self.config.variant_spec.seen_points(inputs.centroids), **inputs.state}
            warned = self._warn_of_expanded_scores(assigns, inputs, entering)
            outputs = self._run_layers(
                inputs,
                num_iterations,
                generator,
                final_assignment,
                need_weights=output_attentions,
                output_hidden_states=output_hidden_states,
                **{f"output_{name}_attentions": output_attentions for name in BLOCK_NAMES},
            )
            if not warned:  # gmm's variances shrink: the final parameters' bound may be the larger
                final = {"centroids": outputs.centroids}
                final.update({carried.name: outputs[carried.name] for carried in self.config.variant_spec.state})
                self._warn_of_expanded_scores(assigns, inputs, final)
            if output_attentions and outputs.assign_attentions:
                outputs.attentions = tuple(
                    zip(*(getattr(outputs, f"{name}_attentions") for name in BLOCK_NAMES), strict=True)
                )
        if inputs.exponents is not None:
            self._scale_back(outputs, inputs.exponents)
        return outputs

    def _token_expanded_assigns(self, num_iterations: int, final_assignment: bool) -> list:
        """
        The assign blocks that a token-engine run of `num_iterations` runs (the head's with `final_assignment`), one
        per block class, for `_warn_of_expanded_scores`, which bounds those whose scores are expanded products
        (`expanded_score_scales`: lloyd, trimmed, sparse, k-medoids, soft, gmm; not spherical's cosines nor fuzzy's
        differences). Empty for a float64 model (nothing wider to take the products in), a trainable variant, or
        while `torch.compile` or `torch.export` traces (no values to bound). A trainable variant's scores are dot
        products too, but of trained queries and keys: projections with biases that may translate and scale the
        points, so a bound at the points' coordinates says nothing about them, and no compact engine runs it.
        """
        spec = self.config.variant_spec
        dtype = self.embeddings.cluster_embeddings.dtype
        if dtype == torch.float64 or spec.trainable:
            return []
        if torch.compiler.is_compiling():
            return []
        blocks = [self._layer(iteration).assign for iteration in range(num_iterations)]
        blocks += [self.assignment_head.assign] if final_assignment else []
        return list({type(block): block for block in blocks}.values())

    def _warn_of_expanded_scores(self, assigns: list, inputs: PreparedInputs, parameters: dict) -> bool:
        """
        Warn (`RuntimeWarning`) and return True where the token engine's expanded scores of `assigns` under
        `parameters` round past `EXPANDED_SCORE_TOLERANCE`: the bound `expanded_score_rounding` at the coordinates'
        own origin, for the points' actual reach `max_i |x_i|` (real points, as the variant sees them), in the units
        in which each block's rule reads its scores (`expanded_score_scales`: softmax's own scores; for hardmax, the
        gap `s_j^2 / 4` at which labels are decided). The token engine computes at the points' own coordinates (a
        trained model need not be translation-equivariant, and the hidden states that probes read would change), so
        float32 data far from the origin makes labels, weights and centroids wrong there; the compact engine
        translates them, or takes k-medoids' labels from float64 products (`CompactFrame`).
        """
        if not assigns:
            return False
        with torch.no_grad():
            points = self.config.variant_spec.seen_points(inputs.points)
            norms = torch.linalg.vector_norm(points, dim=-1, dtype=torch.float64)
            reach = norms.masked_fill(~inputs.point_mask, 0.0).amax(dim=-1, keepdim=True)  # max_i |x_i| (batch, 1)
            dtype = points.dtype
            bounds = [expanded_score_rounding(assign, parameters, dtype, None, reach) for assign in assigns]
            rounding = max((float(bound.amax()) for bound in bounds if bound is not None), default=0.0)
        if not rounding > EXPANDED_SCORE_TOLERANCE:
            return False
        digits = -math.log10(torch.finfo(dtype).eps / 2)  # the dtype's significant decimal digits
        lost, name = min(digits, math.log10(rounding) + digits), str(dtype).removeprefix("torch.")
        warnings.warn(
            f"The token engine's {self.config.variant} scores are {name} expanded dot products |x|^2 - 2 x.c + |c|^2 "
            f"of points up to {float(reach.amax()):.3g} from the origin, which round by up to {rounding:.2g} of the "
            f"scale at which the assignment reads them (tolerance 2^{math.log2(EXPANDED_SCORE_TOLERANCE):.0f}): "
            f"{name} scores of points this far from the "
            f"origin lose about {lost:.0f} of their {digits:.0f} significant digits, and the results can be wrong. "
            "Run the model in float64 (model.double()), centre the data (subtract its mean), or run it on the compact "
            "engine, which translates the scores to the centroids' mean: without gradients (torch.no_grad()), hooks, "
            "attentions or hidden states (see model.engine()).",
            RuntimeWarning,
            stacklevel=6,  # the caller of `model(...)`
        )
        return True

    def _scale_back(self, outputs: KMeansTransformerOutput, exponents: torch.LongTensor) -> None:
        """
        The outputs of data divided by `2**exponents` in the data's units: the centroids times `2**exponents`, the
        inertia times `4**exponents`, each carried state by its `scale_power`, each rounded once. A square of the
        data's scale past the dtype's largest number comes back as inf, with a `RuntimeWarning`.
        """
        outputs.centroids = _times_power_of_two_rounded(outputs.centroids, exponents[:, None, None])
        squares = {"inertia": (outputs.inertia, 2 * exponents)}
        for carried in self.config.variant_spec.state:
            squares[carried.name] = (outputs[carried.name], carried.scale_power * exponents[:, None])
        for name, (values, powers) in squares.items():
            scaled = _times_power_of_two_rounded(values, powers)
            if bool((torch.isinf(scaled) & torch.isfinite(values)).any()):
                warnings.warn(
                    f"The {name} of data this large is past the largest {values.dtype} number and is returned as "
                    f"inf (the labels and centroids are exact); use float64 for a finite {name}.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            setattr(outputs, name, scaled)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs for a trial forward: `points` `(1, 4 * num_clusters, point_dim)`, fixed standard normal draws."""
        generator = torch.Generator().manual_seed(0)
        points = torch.randn(1, 4 * self.config.num_clusters, self.config.point_dim, generator=generator)
        return {"points": points.to(device=self._execution_device(), dtype=self.embeddings.cluster_embeddings.dtype)}

    def get_input_embeddings(self) -> nn.Module:
        """
        The embeddings module (`KMeansTransformerEmbeddings`): the model's inputs are coordinates, not token ids, so
        it is a linear map of the points (`position_embedding`) plus the clusters' identities, not an `nn.Embedding`.
        """
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings = value

    def _check_forward_kwargs(self, kwargs: dict) -> None:
        """A keyword `forward` does not know is a `TypeError` naming it (with the nearest known one), not swallowed."""
        for name in kwargs:
            if name in IGNORED_FORWARD_KWARGS:
                continue
            known = [parameter for parameter in inspect.signature(self.forward).parameters if parameter != "kwargs"]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise TypeError(f"{type(self).__name__}.forward() got an unexpected keyword argument `{name}`{hint}")

    def save_pretrained(self, save_directory, *args, overwrite: bool = False, **kwargs):
        """
        transformers' `save_pretrained`, with its semantics made safe (`kmeans_transformer.convert.saving_checkpoint`):
        writing into an existing directory is allowed; each file is written under a temporary name and renamed into
        place; the files of a previous checkpoint that this one does not write (stale shards, a fitted estimator's
        files, a card of this package that no longer describes the weights) are removed, other files are left as they
        are; an exception while writing leaves the previous checkpoint loadable. A `README.md` the package did not
        write is kept (with a warning) unless `overwrite`. `args` and `kwargs` go to transformers' `save_pretrained`.
        """
        saving = type(self).checkpoint_saving
        if saving is None or kwargs.get("push_to_hub") or not kwargs.get("is_main_process", True):
            return super().save_pretrained(save_directory, *args, **kwargs)
        with saving(save_directory, overwrite=overwrite) as temporary:
            super().save_pretrained(temporary, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *, exist_ok: bool = True, **push_options):
        """
        Push the model with its card: validated against its variant's reference now, the figures in the card's text
        and `model-index` (`kmeans_transformer.hub.push_model`; `push_options`: `private`, `revision`,
        `commit_message`, `commit_description`, `create_pr`, `token`). Without the `kmeans_transformer` package (a
        model loaded with `trust_remote_code`), transformers' own `push_to_hub` and card are used.
        """
        if type(self).carded_push is None:
            return super().push_to_hub(repo_id, **push_options)
        return type(self).carded_push(self, repo_id, exist_ok=exist_ok, **push_options)

    # -----------------------------------------------------------------------------------------------------------------
    # Engines
    # -----------------------------------------------------------------------------------------------------------------

    def engine(self, output_attentions: bool = False, output_hidden_states: bool = False) -> str:
        """
        Which engine `forward` runs: `"compact"` when all of these hold, else `"tokens"`:

        - the variant's spec allows it (`VariantSpec.compact`: `"lloyd"`, `"spherical"`, `"trimmed"`, `"soft"`,
          `"gmm"`, `"fuzzy"`, `"sparse"`, deterministic `"kmedoids"`) and `config.fast_hardmax`;
        - the attention implementation is the exact hardmax kernel (`"kmeans_hardmax"`, or its alias `"hardmax"`);
        - no attentions or hidden states are asked for (the compact state has no tokens);
        - no gradient is recorded for the weights (call the model under `torch.no_grad()` or with frozen weights);
        - no hook, wrapper or offload watches the blocks (`has_block_hooks`: forward hooks, nnsight, Accelerate);
        - every weight still holds the analytic construction (`has_analytic_weights`), so the compact state is exact.

        The two engines give the same labels; the compact engine sums in another order. For float32 data far from
        the origin the compact engine translates the expanded scores of lloyd, trimmed, sparse, soft and gmm
        (`CompactFrame`), and the token engine, which cannot, warns where they lose their digits
        (`_warn_of_expanded_scores`).
        """
        if not (self.config.variant_spec.compact and self.config.fast_hardmax):
            return "tokens"
        if not self._runs_hardmax() or output_attentions or output_hidden_states:
            return "tokens"
        if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in self.parameters()):
            return "tokens"
        if self.has_block_hooks():
            return "tokens"
        return "compact" if self.has_analytic_weights() else "tokens"

    def has_block_hooks(self) -> bool:
        """
        Whether anything watches or moves the blocks' work, which only the token engine runs: a forward (pre-)hook
        on a submodule or a global one (`register_forward_hook`), a submodule whose `forward` was replaced on the
        instance (nnsight's and Accelerate's wrappers: interventions, offload, device maps across devices), or a
        weight offloaded to the meta device.
        """
        if _watching(nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks):
            return True
        for module in self.modules():
            if module is not self and _watching(module._forward_hooks, module._forward_pre_hooks):
                return True
            if module is not self and ("forward" in module.__dict__ or hasattr(module, "_hf_hook")):
                return True
        return any(parameter.device.type == "meta" for parameter in self.parameters())

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """
        transformers' `from_pretrained`, then the checks of `check_loaded`: a checkpoint that declares fitted
        parameters must hold them, and every weight must be finite (`ValueError` naming the tensor otherwise). A
        name that looks like a local path and is missing is an `OSError` at once, never a Hub request
        (`check_local_path`).
        """
        if args:
            check_local_path(args[0])
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        model.check_loaded(loading_info.get("missing_keys", ()))
        return (model, loading_info) if output_loading_info else model

    def check_loaded(self, missing_keys=()) -> None:
        """
        Refuse a loaded checkpoint (`ValueError`) that declares `fitted_centroids` but lacks one of the fitted
        tensors (`missing_keys`: transformers would fill it with the initial zeros), or that holds a non-finite weight.
        """
        missing = sorted(key for key in missing_keys if key.rsplit(".", 1)[-1].startswith("fitted_"))
        if missing:
            raise ValueError(
                f"The checkpoint declares fitted_centroids=True but does not hold {missing}: it is incomplete (the "
                "model would assign points to zero centroids). Save it again from the fitted model."
            )
        self.check_finite_weights()

    def check_finite_weights(self) -> None:
        """`ValueError` naming the first weight that holds a NaN or an infinite value (a corrupt checkpoint or edit)."""
        self._held_check("finite_weights", self._check_finite_weights_now)

    def _check_finite_weights_now(self) -> None:
        for name, parameter in self.named_parameters():
            if parameter.device.type == "meta":  # offloaded: Accelerate loads it where it runs
                continue
            if torch.compiler.is_compiling():  # traced: an assert in the graph
                message = f"The weight `{name}` holds NaN or infinite values."
                torch._assert_async(torch.isfinite(parameter).all(), message)
            elif not bool(torch.isfinite(parameter).all()):
                raise ValueError(
                    f"The weight `{name}` holds NaN or infinite values: the checkpoint or an edit corrupted it, and "
                    "the model's outputs would be meaningless."
                )

    def has_analytic_weights(self) -> bool:
        """
        Whether every analytic weight (and the cluster embeddings) holds the construction's value, compared element by
        element on every call (once per context within `_weights_held`, which a loop that owns its calls opens), so
        that any edit (in place, through `.data`, by loading) is seen. The construction's values are built once per
        dtype and device and kept (`_analytic_values`). Always False for a trainable variant (`VariantSpec.trainable`, `"learned"`), even while its weights hold the construction they start from.
        `torch.export` traces with no values to compare, so an exported model runs the token engine (exact for any
        weights); under `torch.compile` the comparison runs outside the graph, on every call.
        """
        if self.config.variant_spec.trainable or torch.compiler.is_exporting():
            return False
        if torch.compiler.is_compiling():  # the graph's one break, here: compared outside it on every call
            return _compare_weights(self._analytic_values())
        return self._held_check("analytic_weights", lambda: _compare_weights(self._analytic_values()))

    @contextlib.contextmanager
    def _weights_held(self):
        """
        Within this context the weights are taken to stay as they are: `has_analytic_weights` and
        `check_finite_weights` look at them at their first call only and repeat its answer (or its error) at the
        later ones. For a caller that owns its loop and calls the model many times on the same weights (points mode:
        one context per iteration, so an edit between iterations is seen at the next). Outside it, and for a user's
        calls, every call looks at every element anew. Nested contexts share the outermost one's answers.
        """
        if "_held_checks" in self.__dict__:
            yield
            return
        self.__dict__["_held_checks"] = {}
        try:
            yield
        finally:
            del self.__dict__["_held_checks"]

    def _held_check(self, name: str, check):
        """`check()`, or within `_weights_held` the outcome of its first call there (its value, or its error again)."""
        held = self.__dict__.get("_held_checks")
        if held is None or torch.compiler.is_compiling():
            return check()
        if name not in held:
            try:
                held[name] = (check(), None)
            except ValueError as error:
                held[name] = (None, error)
        value, error = held[name]
        if error is not None:
            raise error
        return value

    def _analytic_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every analytic tensor of the model with the construction's value for it, in the tensor's dtype and device."""
        parameter = self.embeddings.cluster_embeddings
        key = (parameter.dtype, parameter.device)
        cache = self.__dict__.setdefault("_analytic_cache", {})
        if key not in cache:
            expected = []
            for module in self.modules():
                linears = [
                    child for child in module.children()
                    if isinstance(child, nn.Linear) and getattr(child, "analytic_key", (None,))[0] is type(module)
                ]
                projections = type(module).analytic_projections(self.config) if linears else {}
                for linear in linears:
                    weight, bias = projections[linear.analytic_key[1]]
                    expected.append((linear, "weight", weight.to(linear.weight)))
                    if linear.bias is not None:
                        expected.append((linear, "bias", bias.to(linear.bias)))
                if isinstance(module, KMeansTransformerEmbeddings):
                    values = module.analytic_cluster_embeddings(self.config).to(module.cluster_embeddings)
                    expected.append((module, "cluster_embeddings", values))
            cache.clear()
            cache[key] = expected
        return [(getattr(module, name), values) for module, name, values in cache[key]]

    def _run_compact(self, inputs: PreparedInputs, num_iterations, final_assignment, output_assignments):
        """
        The layers and the assignment head on the compact tokens: `[x_i ; 1]` for points and `[c_j ; 1]` for
        centroids, the position slice and a constant feature, one `(batch, n + k, d + 1)` tensor written once; the
        labels are carried in index form. In a float32 model whose scores are expanded products the tokens are
        those of the points and centroids translated to the entering centroids' mean `o` (`CompactFrame`): labels,
        outliers and inertia are those of the frame, and the returned centroids the last iteration's statistics
        translated back, each quotient rounded once (`CompactFrame.iteration_centroids`); k-medoids' tokens stay
        untranslated, its labels from float64 products where needed (`CompactFrame.labels`).
        """
        if not self._compact_by_labels():  # a weighted assignment: its own pass, in chunks of points
            return self._run_compact_weights(inputs, num_iterations, final_assignment, output_assignments)
        tokens, point_mask, origin = self._compact_tokens(inputs)  # in the `CompactFrame` of `origin`
        batch_size, num_points = inputs.points.shape[:2]
        points, centroids = tokens[:, :num_points, :-1], tokens[:, num_points:, :-1]
        weighted = {} if inputs.sample_weight is None else {"sample_weight": inputs.sample_weight}
        returned = self.config.variant_spec.seen_points(inputs.centroids)  # in the points' coordinates, in a frame
        for iteration in range(num_iterations):
            labels, statistics = self._layer(iteration).compact_step(tokens, point_mask, **weighted)
            if origin is not None:
                returned = CompactFrame.iteration_centroids(self._layer(iteration), statistics, returned, origin)
        head = None
        if final_assignment:  # labels and inertia in one pass where the head allows it
            head = self.assignment_head.compact_labels_and_inertia(tokens, point_mask, inputs.sample_weight)
        if head is not None:
            labels, inertia = head[0], head[1].to(points.dtype)
        elif final_assignment:
            labels = self.assignment_head.compact_labels(tokens[:, :num_points], centroids, point_mask, inputs.sample_weight)
        if head is None:  # in the frame: translation-invariant, and more precise there
            inertia = labelled_inertia(points, centroids, labels, inputs.sample_weight)
        centroids = centroids.clone() if origin is None else returned.clone()
        output = KMeansTransformerOutput(labels=labels, centroids=centroids, inertia=inertia)
        if self.config.variant_spec.reports_outliers:  # a real point without a label is trimmed
            output.outliers = (labels < 0) & inputs.point_mask
        if output_assignments:  # one write of the (batch, n, k) zeros and n ones (no int64 one-hot on the way)
            assignments = points.new_zeros(batch_size, num_points, self.config.num_clusters)
            ones = (labels >= 0).to(points.dtype)[..., None]
            output.assignments = assignments.scatter_(-1, labels.clamp(min=0)[..., None], ones)
        return output

    def _compact_by_labels(self) -> bool:
        """Whether the compact engine carries labels (a hardmax assignment) rather than chunks of weights."""
        return self.config.variant_spec.update.assignment_kind == "labels"  # also for a model with no layer

    def _run_compact_weights(self, inputs: PreparedInputs, num_iterations, final_assignment, output_assignments):
        """
        The compact engine of a weighted assignment (soft, gmm, fuzzy): each layer passes over the points in chunks
        (`_weights_pass`), the assign block's `compact_weights` giving a chunk's `(batch, m, k)` assignment and the
        update's `accumulate` its float64 sums; the layer's `finalize` turns the summed statistics into the next
        parameters. The whole `(batch, n, k)` assignment is held only when it is returned.
        """
        spec, dtype = self.config.variant_spec, inputs.points.dtype
        points = spec.seen_points(inputs.points)
        parameters = {"centroids": spec.seen_points(inputs.centroids), **inputs.state}
        weights, point_mask = inputs.sample_weight, None if bool(inputs.point_mask.all()) else inputs.point_mask
        if weights is None and point_mask is not None:
            weights = point_mask.to(dtype)  # padding counts nowhere (x 1.0 is exact)
        labels, assignments = points.new_full(points.shape[:2], -1, dtype=torch.long), None
        frames = {}  # the passes' `CompactFrame` (translated points, compiled queries), made once while it serves
        for iteration in range(num_iterations):
            layer = self._layer(iteration)
            last = not final_assignment and iteration == num_iterations - 1  # its labels are the output's
            passed = self._weights_pass(
                layer.assign, layer.update, points, point_mask, weights, parameters, output_assignments and last, last,
                frames,
            )
            labels, assignments, statistics = passed if last else (labels, assignments, passed[2])
            parameters = {name: value.to(dtype) for name, value in layer.finalize(statistics, parameters).items()}
        if final_assignment:
            head = self.assignment_head.assign
            labels, assignments, _ = self._weights_pass(
                head, None, points, point_mask, weights, parameters, output_assignments, True, frames
            )
        centroids = parameters["centroids"]
        inertia = labelled_inertia(points, centroids, labels, inputs.sample_weight)
        output = KMeansTransformerOutput(labels=labels, centroids=centroids, inertia=inertia)
        if output_assignments:
            if assignments is None:  # no pass made them: the zero slots of the input tokens
                assignments = points.new_zeros(*points.shape[:2], self.config.num_clusters)
            output.assignments = assignments
            if spec.soft_assignment:
                output.responsibilities = assignments
        for carried in spec.state:
            output[carried.name] = parameters[carried.name]
        return output

    def _weights_pass(self, assign, update, points, point_mask, weights, parameters, keep, label, frames):
        """
        One pass of a weighted assign over the seen `points` `(batch, n, d)` (`point_mask` `(batch, n)`:
        False for padding; None: every point is real), `assign.compact_rows` at a time (`score_chunk_size` numbers
        of the kernel's): when `label`, the labels (the first largest weight; -1 where a point has none; else None),
        the whole assignment when `keep` (in the model's dtype), and, with an `update`, its statistics, summed in
        float64. In a float32 model the pass runs in a `CompactFrame`: points and parameters translated near the data
        (and float64 products where that is not enough), the statistics translated back. `frames`: this forward
        call's frame so far, under `"frame"` (filled here).
        """
        dtype = points.dtype
        frame = frames["frame"] = CompactFrame.of(assign, points, parameters, frames.get("frame"))
        values, parameters = frame.values, frame.parameters(parameters)
        labels, kept, statistics = self._framed_weights_pass(
            assign, update, values, point_mask, weights, parameters, keep, label, frame
        )
        return labels, None if kept is None else kept.to(dtype), frame.statistics(update, statistics)

    def _framed_weights_pass(self, assign, update, values, point_mask, weights, parameters, keep, label, frame):
        """`_weights_pass` on points and parameters in its `frame`."""
        batch_size, num_points = values.shape[:2]
        kept = values.new_empty(batch_size, num_points, self.config.num_clusters) if keep else None
        compiled = self._compiled_weights_pass(
            assign, update, values, point_mask, weights, parameters, kept, label, frame
        )
        if compiled is not None:
            return compiled
        rows = assign.compact_rows(batch_size, values.device)
        labels = values.new_empty(batch_size, num_points, dtype=torch.long) if label else None
        statistics = None
        for start in range(0, num_points, rows):
            chunk = slice(start, start + rows)
            real = None if point_mask is None else point_mask[:, chunk]
            assignment = assign.compact_weights(values[:, chunk], parameters, real)
            if label:
                largest, first = assignment.max(dim=-1)  # the first largest weight
                labelled = largest > 0 if real is None else real & (largest > 0)
                labels[:, chunk] = first.masked_fill_(~labelled, -1)
            if keep:
                kept[:, chunk] = assignment
            if update is not None:
                # float64 within a chunk too: gmm's variance is a difference of second moments, which float32 sums
                # of points far from the origin would cancel, and a float32 product of a chunk's weights and points
                # has no bound like the compiled lanes' (its error grows with the chunk's rows, in the library's order).
                weighted = {} if weights is None else {"sample_weight": weights[:, chunk]}
                part = update.accumulate_float64(assignment, values[:, chunk], **weighted)
                statistics = part if statistics is None else statistics.add_(part)
        return labels, kept, statistics

    @staticmethod
    def _compiled_weights_pass(assign, update, values, point_mask, weights, parameters, kept, label, frame):
        """
        `_weights_pass` in one compiled loop over every point (`cpu_kernels.membership_sums`: the assign's
        `compact_membership_rule`, the update's `compiled_sums_form`, float32 lane sums where the `frame` allows them,
        `CompactFrame.lane_sums`), holding no chunk of weights; None where the loops do not run (then nothing is
        computed: the chunks hold no whole-`n` query).
        """
        if not membership_sums_run(values):
            return None
        queries = frame.queries
        if type(assign) not in queries:  # made once per forward call, for every layer and the head alike
            queries[type(assign)] = assign.compact_query_weights(values)
        query, key = assign.compact_query_key_weights(values, parameters, queries[type(assign)])
        form = {"sums": False} if update is None else update.compiled_sums_form()

        def summed(lanes):  # (statistics, labels) of the pass, its products in float32 lanes or float64
            found = membership_sums(
                query, key, values.shape[-1] - 1, weights, point_mask, **assign.compact_membership_rule(), **form,
                float64_products=not lanes, labels=label, kept=kept,
            )
            if found is None or update is None:
                return found
            return update.statistics_of_sums(found[0], values, weights), found[1]

        lanes = update is not None and frame.lane_sums(update, parameters)
        found = summed(lanes)
        if lanes and found is not None and not frame.lane_sums(update, parameters, found[0]):
            found = summed(False)
        return None if found is None else (found[1], kept, found[0])

    def _compact_tokens(self, inputs: PreparedInputs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        The compact tokens `(batch, n + k, d + 1)` of prepared inputs, written once, the point mask (None when every
        point is real; always given when traced, so that nothing branches on it), and the origin `o` `(batch, 1, d)`
        of their `CompactFrame` (`_labels_origin`; None: the identity), to which points and centroids are translated
        in the same pass: `[x_i - o ; 1]`, `[c_j - o ; 1]`.
        """
        spec = self.config.variant_spec
        points, centroids = spec.seen_points(inputs.points), spec.seen_points(inputs.centroids)
        origin = None if torch.compiler.is_compiling() else self._labels_origin(centroids)
        tokens = cpu_kernels.compact_tokens(points, centroids, origin)  # one pass, into memory advised for huge pages
        if tokens is None:
            batch_size, num_points, point_dim = points.shape
            tokens = points.new_empty(batch_size, num_points + centroids.shape[1], point_dim + 1)
            if origin is None:
                tokens[:, :num_points, :-1] = points
                tokens[:, num_points:, :-1] = centroids
            else:
                torch.sub(points, origin, out=tokens[:, :num_points, :-1])
                torch.sub(centroids, origin, out=tokens[:, num_points:, :-1])
            tokens[..., -1] = 1.0
        point_mask = inputs.point_mask
        if not torch.compiler.is_compiling() and bool(point_mask.all()):
            point_mask = None
        return tokens, point_mask, origin

    def _labels_origin(self, centroids: torch.Tensor) -> torch.Tensor | None:
        """The `CompactFrame.labels_origin` of this model's hard-assignment passes from the seen `centroids`."""
        return CompactFrame.labels_origin(self.assignment_head.assign, self.config.variant_spec.update, centroids)

    def compact_iterations(self, points, centroids, sample_weight=None) -> "CompactIterations | None":
        """
        The compact engine's iterations one at a time, for a caller that decides after each whether to go on (the
        looped fit of [`KMeans`]): the inputs checked and the compact tokens written once, instead of once per
        `forward(num_iterations=1)` call. None where `forward` would not run the compact engine on these inputs
        (`engine()`, separate layers, a weighted assignment, or data outside the dtype's safe range, which `forward`
        rescales).
        """
        if self.engine() != "compact" or not self.config.share_layers or not self._compact_by_labels():
            return None
        inputs = self.prepare_inputs(points, centroids, num_iterations=1, sample_weight=sample_weight)
        return None if inputs.exponents is not None else CompactIterations(self, inputs)

    @capture_outputs(tie_last_hidden_states=False)
    def _run_layers(self, inputs: PreparedInputs, num_iterations, generator, final_assignment, need_weights, **kwargs):
        """The token engine: the embeddings, the layers and the assignment head on the full tokens."""
        layer_kwargs = {"generator": generator} if generator is not None else {}
        if inputs.sample_weight is not None:
            layer_kwargs["sample_weight"] = inputs.sample_weight
        point_mask = inputs.point_mask
        hidden_states = self.embeddings(inputs.points, inputs.centroids, inputs.state)
        for iteration in range(num_iterations):
            hidden_states = self._layer(iteration)(hidden_states, point_mask, need_weights=need_weights, **layer_kwargs)
        return self._read_tokens(hidden_states, inputs, final_assignment)

    def _read_tokens(self, hidden_states, inputs: PreparedInputs, final_assignment) -> KMeansTransformerOutput:
        """
        The output read off the final tokens (after the assignment head when `final_assignment`). For a trainable
        variant the head runs on the input points and the returned centroids embedded afresh, and the inertia is
        measured on the input points: the trained layers may have written anything into the other slots.
        """
        spec, slices = self.config.variant_spec, self.config.token_slices
        point_mask = inputs.point_mask
        num_points = point_mask.shape[1]
        centroid_tokens = hidden_states[:, num_points:]
        final_centroids = centroid_tokens[..., slices["position"]]
        if spec.trainable:
            seen_points = spec.seen_points(inputs.points)
            # `forward` itself: the hooks that record hidden states must not see these tokens
            head_tokens = self.embeddings.forward(inputs.points, final_centroids, inputs.state) if final_assignment else None
        else:
            seen_points = hidden_states[:, :num_points, slices["position"]]  # the points as the model sees them
            head_tokens = hidden_states
        final_points = (
            self.assignment_head(head_tokens, point_mask, inputs.sample_weight)
            if final_assignment else hidden_states[:, :num_points]
        )
        assignments = final_points[..., slices["code"]]
        labelled = point_mask & (assignments.amax(dim=-1) > 0)
        labels = assignments.argmax(dim=-1).masked_fill(~labelled, -1)
        output = KMeansTransformerOutput(
            labels=labels,
            centroids=final_centroids,
            inertia=labelled_inertia(seen_points, final_centroids, labels, inputs.sample_weight),
            assignments=assignments,
        )
        if spec.reports_outliers:
            output.outliers = final_points[..., slices["outlier"]][..., 0] > 0
        for carried in spec.state:
            output[carried.name] = values = centroid_tokens[..., slices[carried.slot]][..., 0]
            if carried.positive and not bool((values > 0).all()):
                # The residual stream adds each update to the slot (old + (new - old)): in a narrow dtype a value
                # that falls by more than the dtype's precision from one iteration to the next is lost.
                raise ValueError(
                    f"The token engine lost the {carried.name} in its residual stream ({values.dtype}: a value fell "
                    f"by more than the dtype's precision in one iteration); run the model in float64, or on the "
                    f"compact engine (see `model.engine()`), or centre and scale the data."
                )
        if spec.soft_assignment:
            output.responsibilities = assignments
        return output

    def _layer(self, iteration: int) -> KMeansTransformerLayer:
        return self.layers[0] if self.config.share_layers else self.layers[iteration]

    # -----------------------------------------------------------------------------------------------------------------
    # The iteration as sufficient statistics (points mode, and any caller that splits the points)
    # -----------------------------------------------------------------------------------------------------------------

    def initial_parameters(self, points, centroids=None, attention_mask=None, **state) -> dict[str, torch.Tensor]:
        """
        The checked parameters an iteration starts from: `{"centroids": (batch, k, d), <state>: (batch, k)}`, with
        the same defaults as `forward` (seen unit-normalised for a `unit_norm` variant), in the data's own units.
        """
        inputs = self.prepare_inputs(points, centroids, attention_mask, state, rescale=False)
        return {"centroids": self.config.variant_spec.seen_points(inputs.centroids), **inputs.state}

    @torch.no_grad()
    def assign(
        self, points: torch.Tensor, parameters: dict[str, torch.Tensor], output_assignments: bool = True, *,
        points_seen: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The assignment of `points` `(batch, n, d)` to `parameters` by the assign block, as the update reads it: the
        labels `(batch, n)` (-1 for none) and the assignment `update.accumulate` takes (the labels for a hard mean
        update, the `(batch, n, k)` weights otherwise). Runs the compact engine when it applies, else the tokens.
        With `output_assignments=False` only the labels are made (the assignment is None): a weighted assignment's
        labels come from the compact engine's pass (`forward(..., output_assignments=False)`), which holds no
        `(batch, n, k)` weights. `points_seen`: the points are already as the model sees them (`seen_points`:
        unit-normalised for a `unit_norm` variant, once, by a caller that keeps them; the token engine sees them
        anew).
        """
        self._check_precision()
        if self.engine() == "compact" and self._compact_by_labels():
            spec = self.config.variant_spec
            seen = points if points_seen else spec.seen_points(points)
            tokens, centroids, _ = self._framed(seen, spec.seen_points(parameters["centroids"]))
            labels = self._compact_labels(tokens, centroids)
            return labels, labels if output_assignments else None
        state = {name: parameters[name] for name in self.config.variant_spec.state_names}
        output = self(points, parameters["centroids"], num_iterations=0, output_assignments=output_assignments, **state)
        if not output_assignments:
            return output.labels, None
        assignment = output.labels if self._layer(0).update.assignment_kind == "labels" else output.assignments
        return output.labels, assignment

    @torch.no_grad()
    def statistics(
        self, points: torch.Tensor, parameters: dict[str, torch.Tensor], sample_weight=None, *,
        points_seen: bool = False,
    ) -> torch.Tensor:
        """
        The update's sufficient statistics `(batch, k, width)` in float64 over `points` `(batch, n, d)` assigned to
        `parameters` (`sample_weight` `(batch, n)` weighing each point): `accumulate(assign(points, parameters)[1],
        points, sample_weight)`, the sums that add up over disjoint sets of points and that `finalize` turns into the
        next parameters. Points and parameters are cast to the model's dtype for the assignment.

        A weighted assignment (soft, gmm, fuzzy) on the compact engine is the layer's own pass (`_weights_pass`, as
        in `forward`): one compiled loop (`cpu_kernels.membership_sums`) that sums each point's weights into the
        statistics, with no `(batch, n, k)` weights, or, where the loops do not run, chunks of `score_chunk_size`
        weights summed in float64. Its sums are of the points in the model's dtype (float32 terms summed in float32
        within a lane of 16 rows, then in float64, as documented there, or in float64 where gmm's variances would
        cancel that error: `CompactFrame.lane_sums`), in float32 taken on the points translated near the centroids
        and translated back in float64 (`CompactFrame`). Lloyd's blocks without sample weights take the labels and
        the sums from one compiled loop (`_fused_lloyd_statistics`). Elsewhere (a hard assignment: labels and
        per-label sums of the points as given; the token engine; data outside the dtype's safe range, which
        `forward` rescales) the assignment is made and accumulated. `points_seen`: as for `assign`.
        """
        self._check_precision()
        dtype, spec, layer = self.dtype, self.config.variant_spec, self._layer(0)
        parameters = {name: value.to(dtype) for name, value in parameters.items()}
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
        if self.engine() == "compact":
            seen = points.to(dtype) if points_seen else spec.seen_points(points.to(dtype))
            centroids = spec.seen_points(parameters["centroids"])
            if self._compact_by_labels() and points.dtype == dtype:  # the sums are of the points as given
                fused = self._fused_lloyd_statistics(seen, centroids) if sample_weight is None else None
                if fused is not None:
                    return fused
                values, centroids, origin = self._framed(seen, centroids)  # made once, for the labels and the sums
                statistics = layer.update.accumulate(self._compact_labels(values, centroids), values, **weighted)
                return statistics if origin is None else layer.update.untranslated_statistics(statistics, origin)
            if not self._compact_by_labels() and self._rescaling_exponents(seen, centroids) is None:
                weights = None if sample_weight is None else sample_weight.to(dtype)
                parameters = {**parameters, "centroids": centroids}
                passed = self._weights_pass(
                    layer.assign, layer.update, seen, None, weights, parameters, False, False, {}
                )
                return passed[2]
        _, assignment = self.assign(points.to(dtype), parameters)
        if assignment.is_floating_point():  # float64 sums of float64 terms, whatever the model's dtype
            assignment, points = assignment.to(torch.float64), points.to(torch.float64)
        return self.accumulate(assignment, points, **weighted)

    def _fused_lloyd_statistics(self, seen: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor | None:
        """
        `statistics` of the unweighted seen points `(batch, n, d)` for Lloyd's blocks from one compiled loop:
        `lloyd_step` (as `KMeansTransformerLayer.compact_step` runs it in `forward`) on the compact tokens `[x_i ;
        1]` and `[c_j ; 1]` (`cpu_kernels.compact_tokens`, one write, in the `CompactFrame` of the labels, the sums
        translated back, `N_j + o |S_j|`). Its labels are those of the nearest-centroid kernel and its float64 sums
        `[Σ_{a(i)=j} x_i ; |S_j|]` those of `segment_sums` (row after row, block after block), each tile summed
        while in cache: the same numbers as the labels and `accumulate`. Its update of the centroid rows is
        dropped. None where the loop does not run (another variant, data the model would rescale).
        """
        layer = self._layer(0)
        if not layer.plain_lloyd or self._rescaling_exponents(seen, centroids) is not None:
            return None
        origin = self._labels_origin(centroids)
        tokens = cpu_kernels.compact_tokens(seen, centroids, origin)
        if tokens is None:
            return None
        num_points = seen.shape[1]
        keys = layer.assign.compact_query_key(tokens[:, :num_points], tokens[:, num_points:, :-1])[1]
        fused = lloyd_step(tokens, keys, None)
        if fused is None:
            return None
        return fused[1] if origin is None else layer.update.untranslated_statistics(fused[1], origin)

    def _framed(self, seen: torch.Tensor, centroids: torch.Tensor):
        """
        The compact point tokens `(batch, n, d + 1)` of the seen points `(batch, n, d)` and the seen `centroids`
        `(batch, k, d)` in the `CompactFrame` of this model's hard-assignment passes, with its origin `o` (None:
        the identity, `[x_i ; 1]` and the centroids as given): `[x_i - o ; 1]` and `c_j - o`, each difference
        rounded once; where the compiled loops run, written in one pass (`cpu_kernels.compact_tokens`).
        """
        origin = self._labels_origin(centroids)
        tokens = cpu_kernels.compact_tokens(seen, centroids, origin)
        if tokens is not None:
            return tokens[:, : seen.shape[1]], tokens[:, seen.shape[1] :, :-1], origin
        if origin is None:
            return _with_ones(seen), centroids, None
        return _with_ones(seen, origin), centroids - origin, origin

    def _compact_labels(self, tokens: torch.Tensor, centroids: torch.Tensor) -> torch.LongTensor:
        """
        The compact engine's labels `(batch, n)` (the assignment head's, -1 for none) of compact point tokens
        `[x_i ; 1]` `(batch, n, d + 1)` against the `centroids`, in one frame (`_framed`). Data outside the dtype's
        safe range is first divided by a power of two (`_rescaling_exponents`): exact, and the labels do not change.
        """
        seen = tokens[..., :-1]
        exponents = self._rescaling_exponents(seen, centroids)
        if exponents is not None:
            seen, centroids = _divided_by_power_of_two(exponents, seen, centroids)
            tokens = _with_ones(seen)
        return self.assignment_head.compact_labels(tokens, centroids, None)

    def accumulate(self, assignment: torch.Tensor, points: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """
        The update's sufficient statistics `(batch, k, width)` over `points` `(batch, n, d)` with their `assignment`
        (from `assign`): sums that add up over disjoint sets of points (chunks, processes); `sample_weight` `(batch,
        n)` weighs each point in them.
        """
        values = _with_ones(self.config.variant_spec.seen_points(points))
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self._layer(0).update.accumulate(assignment, values, **weighted)

    def finalize(self, statistics: torch.Tensor, parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameters after one iteration, from the summed `statistics` and the entering `parameters`."""
        return self._layer(0).finalize(statistics, parameters)

    @torch.no_grad()
    def set_fitted_parameters(self, centroids: torch.Tensor, **state: torch.Tensor) -> None:
        """Store fitted parameters (`config.fitted_centroids` models): the centroids `(k, d)` and each state `(k,)`."""
        fitted = self.embeddings.fitted_parameters()
        if not fitted:
            raise ValueError("This model stores no fitted parameters: build it with `fitted_centroids=True`.")
        if set(state) != set(fitted) - {"centroids"}:
            raise ValueError(f"Fitted parameters are {sorted(fitted)}; got {sorted(['centroids', *state])}.")
        for name, value in {"centroids": centroids, **state}.items():
            fitted[name].copy_(torch.as_tensor(value))

    # -----------------------------------------------------------------------------------------------------------------
    # Inputs
    # -----------------------------------------------------------------------------------------------------------------

    def prepare_inputs(
        self, points, centroids=None, attention_mask=None, state=None, num_iterations=None, rescale=True,
        sample_weight=None,
    ) -> PreparedInputs:
        """
        Check and complete one call's inputs: points, mask and centroids (`_check_points`, `_check_centroids`), the
        stored fitted parameters as defaults, the variant's carried state (given, fitted or its default), and the
        variant's own requirements (a `unit_norm` variant refuses vectors that are 0). Every problem needs
        `num_clusters` real points, or one when `num_iterations=0` and the centroids are given or fitted (the model
        then only assigns). With `rescale`, data outside the dtype's safe range is multiplied by a power of two
        (`_rescaling_exponents`), the given state with it, and the exponents are returned for scaling back.
        """
        self._check_precision()
        spec, state = self.config.variant_spec, self._given_state(state)
        fitted = self._fitted_defaults()
        assign_only = num_iterations == 0 and (centroids is not None or "centroids" in fitted)
        points, point_mask, magnitudes = self._check_points(
            points, attention_mask, 1 if assign_only else self.config.num_clusters
        )
        centroids = self._check_centroids(fitted.get("centroids") if centroids is None else centroids, points, point_mask)
        sample_weight = self._check_sample_weight(sample_weight, point_mask)
        for carried in spec.state:
            values = state.get(carried.name, fitted.get(carried.name))
            if values is not None:
                state[carried.name] = self._check_component_values(values, carried.name, points.shape[0])
        exponents = self._rescaling_exponents(points, centroids, magnitudes) if rescale else None
        if exponents is not None:
            points, centroids = _divided_by_power_of_two(exponents, points, centroids)
            state = self._divided_state(state, exponents)
        for carried in spec.state:
            if carried.name not in state:  # a default from the points, weighted by the sample weights
                mask = point_mask if sample_weight is None else sample_weight
                state[carried.name] = carried.default(points, mask, self.config.num_clusters)
            elif (message := carried.check(state[carried.name])) is not None:
                raise ValueError(message)
        if spec.unit_norm:
            if bool(((points == 0).all(dim=-1) & point_mask).any()):
                raise ValueError(f"{spec.title.capitalize()} needs non-zero points: a point has norm 0 and no direction.")
            if bool((centroids == 0).all(dim=-1).any()):
                raise ValueError(
                    f"{spec.title.capitalize()} needs non-zero centroids: a centroid has norm 0 and no direction."
                )
        return PreparedInputs(points, centroids, point_mask, state, exponents, sample_weight)

    def _check_sample_weight(self, sample_weight, point_mask) -> torch.Tensor | None:
        """
        The sample weights `(batch, n)` (a 1-D array for one problem), non-negative and finite, 0 on padding, with a
        positive total in every problem; None when not given.
        """
        if sample_weight is None:
            return None
        if self.config.variant_spec.trainable:  # its trained blocks have no notion of a point's weight
            raise ValueError(
                f"`sample_weight` is not supported by the trainable variant {self.config.variant!r}: its trained blocks "
                "weigh every point alike. Repeat the points instead."
            )
        dtype, device = self.embeddings.cluster_embeddings.dtype, self.embeddings.cluster_embeddings.device
        weights = _as_float_tensor(sample_weight, "sample_weight", dtype, device)
        batch_size, num_points = point_mask.shape
        weights = _per_point(weights, "sample_weight", batch_size, num_points)
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("`sample_weight` contain NaN or infinite values.")
        if bool((weights < 0).any()):
            raise ValueError("`sample_weight` must be >= 0 (a negative weight was given).")
        weights = weights.masked_fill(~point_mask, 0.0)
        if bool((weights.sum(dim=1) <= 0).any()):
            problem = int(torch.nonzero(weights.sum(dim=1) <= 0)[0])
            raise ValueError(f"The `sample_weight` of problem {problem} sum to 0: no point would count.")
        return weights

    def _execution_device(self) -> torch.device:
        """
        Where the inputs go: the weights' device, or, for weights offloaded to the meta device by Accelerate, the
        device its hook runs them on (the CPU when none says).
        """
        device = self.embeddings.cluster_embeddings.device
        if device.type == "meta":
            device = getattr(getattr(self, "_hf_hook", None), "execution_device", None) or "cpu"
        return torch.device(device)

    def _check_precision(self) -> None:
        """
        `ValueError` for half-precision weights (bfloat16, float16): the score `|c|^2 - 2 x.c` keeps 8 (bfloat16) or
        11 (float16) significant bits, so points at coordinates of a few hundred get wrong labels, and float16 sums
        overflow at 65,504. Half-precision points are accepted by a float32 or float64 model (widened exactly).
        """
        dtype = self.embeddings.cluster_embeddings.dtype
        if torch.finfo(dtype).bits < 32:
            raise ValueError(
                f"This model's weights are {dtype}, too coarse for squared distances (wrong labels away from the "
                "origin, overflowing sums): convert it with model.float() (exact) or load it with dtype=torch.float32; "
                "half-precision points are accepted by a float32 model."
            )

    def _given_state(self, state) -> dict:
        """The carried state given to `forward` (None values dropped); a name of another variant's state is refused."""
        spec, state = self.config.variant_spec, {k: v for k, v in (state or {}).items() if v is not None}
        for name in state:
            if name not in spec.state_names:
                owners = " or ".join(repr(other.name) for other in VARIANTS.values() if name in other.state_names)
                raise ValueError(f"`{name}` is one of the inputs of variant {owners}, not of {self.config.variant!r}.")
        return state

    def _fitted_defaults(self) -> dict[str, torch.Tensor]:
        """The stored fitted parameters (`fitted_parameters`), refused when one holds NaN or infinite values."""
        fitted = self.embeddings.fitted_parameters()
        for name, values in fitted.items():
            if not bool(torch.isfinite(values).all()):
                raise ValueError(
                    f"The stored `embeddings.fitted_{name}` hold NaN or infinite values: the checkpoint or an edit "
                    "corrupted them."
                )
        return fitted

    def _divided_state(self, state: dict[str, torch.Tensor], exponents: torch.LongTensor) -> dict[str, torch.Tensor]:
        """The carried `state` (by name, `(batch, k)`) of the data divided by `2**exponents` per problem: each value
        times `2**(-scale_power * e)` (exact)."""
        powers = {carried.name: carried.scale_power for carried in self.config.variant_spec.state}
        return {name: times_power_of_two(value, -powers[name] * exponents[:, None]) for name, value in state.items()}

    def _rescaling_exponents(self, points, centroids, point_magnitudes=None, num_points=None) -> torch.LongTensor | None:
        """
        Per problem, the exponent `e` by which the model divides the data (`2**-e`, exact) so that its largest
        `|coordinate|` lands in `[1/2, 1)`, or None when every problem lies inside the safe range of the dtype
        (`attention.safe_magnitude_exponents`: squared distances and sums of squares neither overflow nor
        underflow), which is then used as it is, bit for bit. Only for a variant whose result is equivariant under
        the rescaling (`VariantSpec.scaling`, `scale_dependence`); for the others such data is refused.
        `point_magnitudes`: the points' largest `|coordinate|` per problem where already known; `num_points`: the
        number of points of each problem where `points` holds only some of them (points mode).
        """
        spec = self.config.variant_spec
        if spec.scaling == "invariant":  # it normalises every vector itself
            return None
        if point_magnitudes is None:
            point_magnitudes = _largest_magnitudes(points)
        magnitudes = torch.maximum(point_magnitudes, _largest_magnitudes(centroids))  # of each problem
        if torch.compiler.is_compiling():  # traced: no branch on the data, so data outside the range is refused
            exponents = rescaling_exponents(magnitudes, points.shape[2] * 2**31)  # the range for any n < 2**31
            torch._assert_async(
                (exponents == 0).all(), "The data lies outside the dtype's safe range, which a compiled or exported "
                "model does not rescale; run the model eagerly, or use float64."
            )
            return None
        terms = points.shape[2] * max(points.shape[1] if num_points is None else num_points, centroids.shape[1])
        exponents = rescaling_exponents(magnitudes, terms)
        if not bool((exponents != 0).any()):
            return None
        reason = spec.scale_dependence(self.config, hardmax=self._runs_hardmax())
        if reason is not None:
            low, high = safe_magnitude_exponents(points.dtype, terms)
            problem = int(torch.nonzero(exponents)[0])
            raise ValueError(
                f"The largest |coordinate| of problem {problem} is {float(magnitudes[problem]):.3g}, outside "
                f"[{2.0**low:.3g}, {2.0**high:.3g}], where squared distances in {points.dtype} neither overflow nor "
                f"underflow; {spec.title} cannot rescale it exactly, as {reason}. Rescale the data (with that "
                "parameter) into the range, or use float64."
            )
        return exponents

    def _runs_hardmax(self) -> bool:
        """Whether the attention implementation is the exact hardmax kernel (`"kmeans_hardmax"` or its alias)."""
        return ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation) is hardmax_attention_forward

    def _check_generator(self, generator) -> None:
        if generator is None:
            return
        if not self.config.variant_spec.random:
            raise ValueError("`generator` is an input of variant 'kmedoids' with medoid_selection='gumbel' only.")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")

    def _check_component_values(self, values, name, batch_size) -> torch.Tensor:
        k = self.config.num_clusters
        dtype, device = self.embeddings.cluster_embeddings.dtype, self._execution_device()
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

    def _check_num_iterations(self, num_iterations) -> int:
        """The call's number of iterations: an integer >= 0 (a Python, numpy or 0-d torch integer), or the config's."""
        if num_iterations is None:
            return self.config.num_iterations
        if not isinstance(num_iterations, (bool, np.bool_)):
            try:
                num_iterations = operator.index(num_iterations)
            except TypeError:
                pass
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
            raise ValueError(f"`num_iterations` must be an integer >= 0, got {num_iterations!r}.")
        if not self.config.share_layers and num_iterations != self.config.num_iterations:
            raise ValueError(
                f"This model has {self.config.num_iterations} separate layers (share_layers=False), so "
                f"`num_iterations` cannot be {num_iterations}; build it with share_layers=True to loop one layer."
            )
        return num_iterations

    def _check_points(self, points, attention_mask, minimum: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Validate the points and the mask (shapes, dtypes, values, at least `minimum` real points per problem: `k`,
        or 1 for an assignment to given centroids); padding set to 0. Also the largest `|coordinate|` of each problem
        where the compiled loop found it on the way (`cpu_kernels.largest_magnitudes`, one pass), else None.
        """
        k, d = self.config.num_clusters, self.config.point_dim
        dtype, device = self.embeddings.cluster_embeddings.dtype, self._execution_device()
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

        point_mask = _check_mask(attention_mask, batch_size, num_points, device)
        real_counts = point_mask.sum(dim=1)
        traced = torch.compiler.is_compiling()  # torch.compile, torch.export: the checks are asserts in the graph
        if traced:
            torch._assert_async((real_counts >= minimum).all(), f"A problem has fewer than {minimum} real points.")
        elif (real_counts < minimum).any():
            problem = int(torch.nonzero(real_counts < minimum)[0])
            if minimum < k:
                raise ValueError(f"Problem {problem} has no real point (its `attention_mask` is all 0).")
            raise ValueError(
                f"num_clusters={k} is larger than the number of points ({int(real_counts[problem])}) of problem "
                f"{problem}: every problem needs at least k points to iterate (or to take its first k points as "
                "centroids); with num_iterations=0 and given or fitted centroids, one point is enough."
            )
        if attention_mask is not None and (traced or not bool(point_mask.all())):
            points = points.masked_fill(~point_mask[..., None], 0.0)  # padding's values do not count
        magnitudes = None if traced else cpu_kernels.largest_magnitudes(points.detach())
        if traced:
            torch._assert_async(torch.isfinite(points).all(), "`points` contain NaN or infinite values.")
        elif magnitudes is not None:  # NaN or inf where a coordinate is
            if not bool(torch.isfinite(magnitudes).all()):
                raise ValueError("`points` contain NaN or infinite values.")
        # a sum is finite when every term is (a finite sum that overflows is told apart by the full check)
        elif not bool(torch.isfinite(points.sum())) and not all(
            bool(torch.isfinite(block).all()) for block in points.reshape(-1, d).split(2**20)
        ):
            raise ValueError("`points` contain NaN or infinite values.")
        return points, point_mask, magnitudes

    def _check_centroids(self, centroids, points, point_mask) -> torch.Tensor:
        """The given centroids, checked, as `(batch, k, d)`; by default the first `k` real points of each problem."""
        batch_size, k, d = points.shape[0], self.config.num_clusters, self.config.point_dim
        dtype, device = self.embeddings.cluster_embeddings.dtype, self._execution_device()
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
        return centroids




def _watching(*hooks: dict) -> bool:
    """Whether any of these hook dicts holds a hook besides transformers' own output capture (idle unless asked)."""
    return any(
        getattr(hook, "__module__", None) != "transformers.utils.output_capturing"
        for registered in hooks for hook in registered.values()
    )


@torch.compiler.disable
def _compare_weights(pairs) -> bool:
    """Whether every `(tensor, expected)` pair is equal, element by element (eagerly, also under `torch.compile`)."""
    return all(torch.equal(tensor, expected) for tensor, expected in pairs)


def labelled_inertia(
    points: torch.Tensor, centroids: torch.Tensor, labels: torch.LongTensor, sample_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """
    `Σ_i w_i |x_i - c_label(i)|^2` over the labelled points (`labels >= 0`; `w_i = 1` without `sample_weight`), per
    problem, in blocks of points small enough (about 2**18 numbers) that the temporaries stay in cache. Each point's
    squared distance is taken in the points' dtype, and their sum is accumulated in float64 whatever the dtype
    (float64 points as they are), then rounded once to the points' dtype. On the CPU the compiled loop
    (`cpu_kernels.labelled_inertia`) adds each point's squares in coordinate order and the points in order; the
    PyTorch code below adds them in its reductions' order, which may round the last bit otherwise.
    """
    compiled = cpu_kernels.labelled_inertia(points, centroids, labels, sample_weight)
    if compiled is not None:
        return compiled.to(points.dtype)
    batch_size, num_points, point_dim = points.shape
    rows = max(1, 2**18 // (batch_size * point_dim))
    if torch.compiler.is_compiling():  # traced: one block, no loop over a symbolic number of points
        rows = num_points
    flat_centroids = centroids.reshape(-1, point_dim)
    offsets = torch.arange(batch_size, device=labels.device)[:, None] * centroids.shape[1]
    total = points.new_zeros(batch_size, dtype=torch.float64)
    for start in [0] if torch.compiler.is_compiling() else range(0, num_points, rows):
        block, block_labels = points[:, start : start + rows], labels[:, start : start + rows]
        nearest = flat_centroids.index_select(0, (block_labels.clamp(min=0) + offsets).reshape(-1))
        squares = (block - nearest.reshape(block.shape)).square_().sum(dim=-1).to(torch.float64)
        if sample_weight is not None:
            squares = squares * sample_weight[:, start : start + rows].to(torch.float64)
        total += (squares * (block_labels >= 0)).sum(dim=-1)
    return total.to(points.dtype)


def _largest_magnitudes(values: torch.Tensor) -> torch.Tensor:
    """The largest `|coordinate|` of each problem `(batch,)` of `(batch, m, d)` values (NaN where one is NaN)."""
    found = cpu_kernels.largest_magnitudes(values.detach())
    if found is None:
        values = values.detach()
        found = torch.maximum(values.amax(dim=(1, 2)), -values.amin(dim=(1, 2)))
    return found


def _per_point(values: torch.Tensor, name: str, batch_size: int, num_points: int) -> torch.Tensor:
    """`values` of one number per point as `(batch_size, num_points)` (1-D for a single problem), or a ValueError."""
    if values.dim() == 1 and batch_size == 1:
        values = values.unsqueeze(0)
    if tuple(values.shape) != (batch_size, num_points):
        raise ValueError(
            f"`{name}` must have shape (batch_size, num_points) = {(batch_size, num_points)}, got {tuple(values.shape)}."
        )
    return values


def _as_tensor(values, name: str) -> torch.Tensor:
    """
    A tensor from a tensor, a numpy array or scalar, a (nested) list, or a pandas DataFrame or Series (its values);
    `TypeError` for anything that is not numbers.
    """
    if isinstance(values, torch.Tensor):
        return values
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas tables and columns
        values = values.to_numpy()
    try:
        array = np.asarray(values)
        if array.dtype == object:
            array = array.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be a tensor or an array of numbers, got {type(values).__name__}.") from error
    if array.dtype.kind not in "biufc":
        raise TypeError(f"`{name}` must be a tensor or an array of numbers, got {type(values).__name__} ({array.dtype}).")
    return torch.as_tensor(array if array.flags.writeable else array.copy())


def _as_float_tensor(values, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """
    A real floating tensor, cast to the model's dtype and device: a floating tensor, or an array, list, DataFrame or
    Series of real numbers (integers are read as numbers; an integer tensor is refused, its dtype being a choice).
    """
    given_tensor = isinstance(values, torch.Tensor)
    values = _as_tensor(values, name)
    integers = not (values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool)
    if integers and not given_tensor:
        values = values.to(torch.float64)
    if not values.dtype.is_floating_point:
        raise TypeError(f"`{name}` must hold real floating-point numbers, got dtype {values.dtype}.")
    return values.to(device=device, dtype=dtype)


def _check_mask(attention_mask, batch_size: int, num_points: int, device: torch.device) -> torch.BoolTensor:
    """
    The point mask `(batch_size, num_points)` from `attention_mask` (None: every point is real): a tensor, array,
    list, DataFrame or Series of 0 and 1 (or bools), real; one problem's mask may be 1-D.
    """
    if attention_mask is None:
        return torch.ones(batch_size, num_points, dtype=torch.bool, device=device)
    mask = _as_tensor(attention_mask, "attention_mask").to(device)
    if mask.dtype.is_complex:
        raise ValueError(f"`attention_mask` must hold real 0 and 1 (or bools), got complex dtype {mask.dtype}.")
    mask = _per_point(mask, "attention_mask", batch_size, num_points)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("`attention_mask` must hold only 0 and 1.")
    return mask.bool()


def _divided_by_power_of_two(exponents: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each `(batch, ..., d)` tensor times `2**-exponents` per problem (exact where the result is a normal number)."""
    return tuple(times_power_of_two(values, -exponents.reshape(-1, *[1] * (values.dim() - 1))) for values in tensors)


def _times_power_of_two_rounded(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """`values * 2**exponents`, computed in float64 and rounded once to the dtype of `values`."""
    return times_power_of_two(values.to(torch.float64), exponents).to(values.dtype)




def _with_ones(points: torch.Tensor, origin: torch.Tensor | None = None) -> torch.Tensor:
    """
    The compact point tokens `[x_i ; 1]` `(..., d + 1)` of `points` `(..., d)`, or with `origin` `(..., 1, d)` those of
    the translated points, `[x_i - o ; 1]` in the origin's dtype, written in one pass.
    """
    if origin is None:
        return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    tokens = points.new_empty(*points.shape[:-1], points.shape[-1] + 1, dtype=origin.dtype)
    torch.sub(points, origin, out=tokens[..., :-1])
    tokens[..., -1] = 1.0
    return tokens


__all__ = ["DTYPES", "labelled_inertia", "KMeansTransformerModel", "KMeansTransformerPreTrainedModel", "KMeansTransformerOutput"]

# Within the installed package (not a checkpoint's copy of this file), the package attaches its saving, card and push
# hooks and the Auto class; the module is named by a string, so that a checkpoint carries only this file's relative
# imports.
if __package__ == "kmeans_transformer":
    importlib.import_module("kmeans_transformer.hooks").attach_kmeans_transformer(KMeansTransformerModel)
