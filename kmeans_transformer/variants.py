# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
The clustering algorithms of the k-means transformer, one declared `VariantSpec` each.

A variant is everything the package needs to know about one algorithm, in one place: its parameters and their
defaults, the token slots its blocks read and write, the block classes of one iteration, the per-component state it
carries from one call to the next, its capabilities, its independent reference, and its card. The config, the model,
validation, the estimator, points mode, the command line, the zoo and the cards all read `VARIANTS`; no other module
compares a variant's name.

Adding a variant: write its blocks (`blocks.py`), its reference (`reference.py`) and its card (`hub_cards/`), and
declare it here (see docs/architecture.md).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .attention import unit_normalize
from .blocks import (
    KMeansTransformerAssign,
    KMeansTransformerCentroidErase,
    KMeansTransformerCentroidNorm,
    KMeansTransformerCosineAssign,
    KMeansTransformerFuzzyAssign,
    KMeansTransformerFuzzyUpdate,
    KMeansTransformerGaussianAssign,
    KMeansTransformerGumbelMedoidUpdate,
    KMeansTransformerLearnedAssign,
    KMeansTransformerLearnedCentroidErase,
    KMeansTransformerLearnedPointErase,
    KMeansTransformerLearnedUpdate,
    KMeansTransformerMedoidCost,
    KMeansTransformerMedoidUpdate,
    KMeansTransformerMixtureMStep,
    KMeansTransformerMixtureUpdate,
    KMeansTransformerPointErase,
    KMeansTransformerSoftAssign,
    KMeansTransformerSoftUpdate,
    KMeansTransformerSparseUpdate,
    KMeansTransformerTrimGate,
    KMeansTransformerTrimmedAssign,
    KMeansTransformerUpdate,
)
from .reference import (
    fuzzy_cmeans,
    gaussian_mixture_em,
    kmedoids,
    lloyd,
    soft_kmeans,
    sparse_kmeans,
    spherical_kmeans,
    trimmed_kmeans,
)


# ---------------------------------------------------------------------------------------------------------------------
# Parameters: every variant parameter of the config, with the values it accepts.
# ---------------------------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Parameter:
    """
    A config field that some variants read: what it means (`description`), and the values it accepts
    (`accepts(value)` says whether `value` is one of `requirement`; `choices`, when it is one of a few strings).
    `algorithm`: a clustering algorithm reads it (False for a parameter of a trainable variant only, which the
    estimator, the `cluster` and `convert` commands do not build; `ALGORITHM_PARAMETER_NAMES` lists the others).
    """

    name: str
    description: str
    requirement: str
    accepts: Callable[[Any], bool]
    choices: tuple[str, ...] | None = None
    algorithm: bool = True

    def check(self, value) -> None:
        if value is not None and not self.accepts(value):
            raise ValueError(f"`{self.name}` must be {self.requirement}, got {value!r}.")


MEDOID_SELECTIONS = ("deterministic", "gumbel")
INITIALIZATIONS = ("lloyd", "random")

PARAMETERS = {
    parameter.name: parameter
    for parameter in (
        Parameter(
            "inverse_temperature", "stiffness γ of the softmax blocks (soft assignment, sparsemax update, Gumbel draw)",
            "a finite number > 0", lambda v: _is_number(v) and v > 0,
        ),
        Parameter(
            "trim_quantile", "trim the points above this quantile of their cluster's squared distances",
            "a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1,
        ),
        Parameter(
            "trim_fraction", "trim this fraction of the points, those farthest from their centroids",
            "a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1,
        ),
        Parameter(
            "medoid_selection", "how the new medoid is chosen", f"one of {list(MEDOID_SELECTIONS)}",
            lambda v: v in MEDOID_SELECTIONS,
        ),
        Parameter(
            "reg_covar", "added to every re-estimated variance", "a finite number >= 0",
            lambda v: _is_number(v) and v >= 0,
        ),
        Parameter(
            "fuzzifier", "the exponent m of fuzzy c-means", "a finite number > 1", lambda v: _is_number(v) and v > 1,
        ),
        Parameter(
            "init_from", "initial weights of a trainable layer: the analytic soft Lloyd construction, or random",
            f"one of {list(INITIALIZATIONS)}", lambda v: v in INITIALIZATIONS, choices=INITIALIZATIONS,
            algorithm=False,
        ),
    )
}
PARAMETER_NAMES = tuple(PARAMETERS)
ALGORITHM_PARAMETER_NAMES = tuple(name for name, parameter in PARAMETERS.items() if parameter.algorithm)


# ---------------------------------------------------------------------------------------------------------------------
# Token slots and carried state.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSlot:
    """
    A slice of the token beyond `position`, `code`, `previous` and `is_centroid`. `width` is a number or
    `"point_dim"`; `erased_by` names the erase block that clears it at the start of every iteration (`"point_erase"`
    or `"centroid_erase"`), None when it carries over; `point_value` computes its value on the point tokens from the
    points (the centroid tokens get 0), None when the blocks write it.
    """

    name: str
    width: int | str = 1
    erased_by: str | None = None
    point_value: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class CarriedState:
    """
    A per-component parameter beyond the centroids (gmm's variances and mixing weights): a `forward` input and an
    output of shape `(batch, k)`, written into the centroid tokens' `slot`, carried from one call to the next by
    whoever loops the model. `default(points, point_mask, k)` gives the initial values; `check(values)` returns an
    error message or None; `fitted_value(k)` initialises the stored fitted value. `scale_power`: the values scale as
    `s**scale_power` when the data is multiplied by `s` (variances 2, weights 0). `positive`: every value is > 0
    (a variance), which the token engine checks on what it returns.
    """

    name: str
    slot: str
    default: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    check: Callable[[torch.Tensor], str | None]
    fitted_value: Callable[[int], float]
    scale_power: int = 0
    positive: bool = False


def _square_norms(points: torch.Tensor) -> torch.Tensor:
    return (points * points).sum(dim=-1, keepdim=True)


def _total_variance(points: torch.Tensor, point_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Each problem's variance per coordinate, `mean_i |x_i - x̄|^2 / d` (1 if the points are all equal)."""
    batch_size, _, d = points.shape
    counts = point_mask.sum(dim=1, keepdim=True).to(points.dtype)
    centre = points.sum(dim=1, keepdim=True) / counts[..., None]
    spread = (((points - centre) ** 2).sum(dim=-1) * point_mask).sum(dim=1, keepdim=True) / (counts * d)
    return torch.where(spread > 0, spread, torch.ones_like(spread)).expand(batch_size, k)


def _uniform_weights(points: torch.Tensor, point_mask: torch.Tensor, k: int) -> torch.Tensor:
    return torch.full((points.shape[0], k), 1.0 / k, dtype=points.dtype, device=points.device)


def _positive(values: torch.Tensor) -> str | None:
    return None if bool((values > 0).all()) else "`variances` must be > 0."


def _on_simplex(values: torch.Tensor) -> str | None:
    ones = torch.ones((), dtype=values.dtype, device=values.device)
    if bool((values >= 0).all()) and torch.allclose(values.sum(dim=-1), ones, atol=1e-6):
        return None
    return "`weights` must be >= 0 and sum to 1 in every problem."


MIXTURE_STATE = (
    CarriedState("variances", "variance", _total_variance, _positive, lambda k: 1.0, scale_power=2, positive=True),
    CarriedState("weights", "mixing_weight", _uniform_weights, _on_simplex, lambda k: 1.0 / k),
)


# ---------------------------------------------------------------------------------------------------------------------
# The spec.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    """
    One clustering algorithm of the model family.

    Attributes:
        name: the `variant` value of the config.
        title: what the algorithm is called in cards and tables.
        parameters: the config fields it reads, with their defaults (None: unset unless given).
        exclusive: pairs of parameters of which at most one may be given (the other's default is then dropped).
        assign, update: the block classes of steps 2 and 4.
        point_erase, centroid_erase: the block classes of steps 1 and 3.
        head_assign: the assign block of the assignment head (None: `assign`).
        point_blocks, centroid_blocks: feed-forward blocks after the assign block (point stream) and after the update
            block (centroid stream), by module name.
        slots: the token slots beyond the four common ones.
        state: the per-component parameters carried from call to call besides the centroids.
        unit_norm: points and centroids are seen unit-normalised (the model, the estimator, points mode).
        soft_assignment: the assignment slot holds responsibilities or memberships, returned as `responsibilities`.
        label_determined: the update depends on the labels alone, so repeated labels mean convergence.
        sums_over_points: the update is `finalize(Σ over points of accumulate(...))`, so points mode can run it on
            data in chunks and processes.
        trims_by_quantile: a point block (the trim gate) drops the points beyond a quantile of all points' distances
            to their centroids; the update is then sums over the kept points, and points mode finds the quantile
            exactly across chunks and processes (`points._sharded_trim`).
        thresholds_by_sparsemax: the update weighs each cluster's members by the sparsemax of their scores, `p_i =
            w_i max(s_i - τ_j, 0)`; given the thresholds `τ_j` (one per cluster, a function of all its members'
            scores) it is sums over the points, and points mode finds them exactly across chunks and processes
            (`points._sharded_sparsemax`).
        compact: the compact engine applies: a hardmax assignment by labels, each point block's `compact_labels`, a
            mean update or a member-based one (`compact_statistics`: sparsemax, medoids); or a weighted assignment
            (`compact_weights`, in chunks of points) and the update's sums.
        scaling: how the result changes when the data (points and centroids) is multiplied by `s`, which decides how
            the model treats data outside the dtype's safe range (`attention.safe_magnitude_exponents`, where squared
            distances would overflow or underflow). `"equivariant"`: the labels stay, the centroids scale by `s`,
            the inertia by `s^2`, each carried state by `s**scale_power`; the model multiplies such data by a power of
            two (exact) into the range and scales the outputs back (lloyd, trimmed, deterministic kmedoids, gmm,
            fuzzy, whose memberships depend on ratios of distances). `"invariant"`: the variant normalises what it
            sees (spherical: every vector is brought into range before its norm is taken), so any finite scale
            works as it is.
        scale_parameters: parameters measured in units of the data (`inverse_temperature`: inverse squared
            distance; `reg_covar`: a variance): while one of them is set (non-zero) the result depends on the
            data's scale, the model cannot rescale, and data outside the range is refused (soft, sparse, gumbel
            kmedoids; gmm with `reg_covar > 0`).
        random: the update draws at random (a `generator` input); there is no deterministic reference.
        reference, reference_parameters: the independent reference, called as `reference(points, centroids,
            num_iterations, *[config.<p> for p in reference_parameters], **state)`; `reference_label` names it where
            `reference` is a wrapper.
        forms: for a parameter that switches blocks (`form_parameter`), its values and the fields they replace.
        zoo_parameters: one zoo checkpoint per entry, each with these parameters.
        trainable: the layer's weights are meant to be trained (`"learned"`): they start from `init_from` and are never
            taken for the analytic construction (`has_analytic_weights` is False, so the token engine runs); the
            assignment head assigns the input points to the returned centroids afresh (the trained layers may write
            anything into the tokens' other slots); the estimator, the zoo and points mode do not run it.
    """

    name: str
    title: str
    parameters: dict[str, Any]
    assign: type
    update: type
    point_blocks: dict[str, type] = field(default_factory=dict)
    centroid_blocks: dict[str, type] = field(default_factory=dict)
    slots: tuple[TokenSlot, ...] = ()
    state: tuple[CarriedState, ...] = ()
    exclusive: tuple[tuple[str, str], ...] = ()
    unit_norm: bool = False
    soft_assignment: bool = False
    label_determined: bool = True
    sums_over_points: bool = False
    trims_by_quantile: bool = False
    thresholds_by_sparsemax: bool = False
    compact: bool = False
    scaling: str = "equivariant"
    scale_parameters: tuple[str, ...] = ()
    random: bool = False
    reference: Callable | None = None
    reference_parameters: tuple[str, ...] = ()
    reference_label: str | None = None
    form_parameter: str | None = None
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)
    zoo_parameters: tuple[dict[str, Any], ...] = ({},)
    point_erase: type = KMeansTransformerPointErase
    centroid_erase: type = KMeansTransformerCentroidErase
    head_assign: type | None = None
    trainable: bool = False

    @property
    def head_blocks(self) -> tuple[type, type]:
        """The assignment head's point erase and assign blocks."""
        return KMeansTransformerPointErase, self.head_assign or self.assign

    @property
    def card_template(self) -> str:
        """The card template's file name in `hub_cards/`."""
        return f"{self.name}.md"

    @property
    def reference_name(self) -> str:
        """The reference's name in `kmeans_transformer.reference`, as cards and tables show it."""
        if self.reference is None:
            return "none (random draws)"
        return self.reference_label or self.reference.__name__

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(state.name for state in self.state)

    @property
    def points_mode(self) -> bool:
        """
        Points mode runs it: its update is sums over the points, possibly after a trim by a global quantile or with
        a sparsemax threshold per cluster.
        """
        return self.sums_over_points or self.trims_by_quantile or self.thresholds_by_sparsemax

    @property
    def reports_outliers(self) -> bool:
        return any(slot.name == "outlier" for slot in self.slots)

    def resolve(self, parameters: dict[str, Any]) -> "VariantSpec":
        """The form this variant takes for the given parameter values (itself when it has one form)."""
        if self.form_parameter is None:
            return self
        return replace(self, **self.forms[parameters[self.form_parameter]])

    def resolve_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """
        Check `given` (every name of `PARAMETER_NAMES`, None when unset) and return the values with the variant's
        defaults filled in; `ValueError` names a parameter the variant does not read or a value it does not accept.
        """
        for name, value in given.items():
            if name not in self.parameters and value is not None:
                readers = [spec.name for spec in VARIANTS.values() if name in spec.parameters]
                raise ValueError(f"`{name}` is not a parameter of variant {self.name!r} (it is read by {readers}).")
        defaults = dict(self.parameters)
        for first, second in self.exclusive:
            if given.get(first) is not None and given.get(second) is not None:
                raise ValueError(f"Give one of `{first}` and `{second}` for variant {self.name!r}, not both.")
            for name, other in ((first, second), (second, first)):
                if given.get(name) is not None:
                    defaults[other] = None
        values = {name: given.get(name) for name in PARAMETER_NAMES}
        for name, default in defaults.items():
            if values[name] is None:
                values[name] = default
        for name, value in values.items():
            PARAMETERS[name].check(value)
        return values

    def slot_widths(self, point_dim: int) -> list[tuple[str, int]]:
        return [(slot.name, point_dim if slot.width == "point_dim" else slot.width) for slot in self.slots]

    def erased_slots(self, block: str) -> tuple[str, ...]:
        """The slots the erase block `block` (`"point_erase"` or `"centroid_erase"`) clears."""
        return tuple(slot.name for slot in self.slots if slot.erased_by == block)

    def scale_dependence(self, config, hardmax: bool) -> str | None:
        """
        Why the result of this variant, as `config` sets it, is not equivariant (`scaling`) under a rescaling of the
        data, or None when the model may rescale it. `hardmax`: the model runs the exact hardmax kernel (otherwise
        an argmax assign block is a softmax at `inverse_temperature`, in units of the data).
        """
        if self.scaling == "invariant":
            return None
        for name in self.scale_parameters:
            if getattr(config, name):
                return f"`{name}`={getattr(config, name)!r} is measured in units of the data"
        if not hardmax and self.assign.attention_function is None:
            return (
                f"under attn_implementation={config._attn_implementation!r} the assignment is a softmax at "
                f"`inverse_temperature`={config.inverse_temperature!r}, measured in units of the data"
            )
        return None

    def parameter_count(self, config) -> int:
        """
        The number of weights of a model of this (resolved) variant built from `config`, from the blocks' shapes
        alone: the embeddings (and fitted parameters), the layers (one when shared) and the assignment head.
        """
        h, k, d = config.hidden_size, config.num_clusters, config.point_dim
        embeddings = (d + k) * h + ((d + len(self.state)) * k if config.fitted_centroids else 0)
        layer = (self.point_erase, self.assign, *self.point_blocks.values(), self.centroid_erase,
                 self.update, *self.centroid_blocks.values())
        head = (*self.head_blocks, *(block for block in self.point_blocks.values() if block.reports_assignment))
        layers = 1 if config.share_layers else config.num_iterations
        per_layer = sum(block.parameter_count(config) for block in layer)
        return embeddings + layers * per_layer + sum(block.parameter_count(config) for block in head)

    def seen_points(self, points: torch.Tensor) -> torch.Tensor:
        """The points as the model sees them: unit-normalised for a `unit_norm` variant."""
        return unit_normalize(points) if self.unit_norm else points

    def run_reference(self, config, points, centroids, **state):
        """
        The reference run for `config.num_iterations` iterations from `centroids` and the carried `state` (by name;
        a value left out or None is the variant's default).
        """
        if self.reference is None:
            raise ValueError(f"Variant {self.name!r} ({config.medoid_selection}) has no deterministic reference.")
        unknown = sorted(name for name, value in state.items() if value is not None and name not in self.state_names)
        if unknown:
            raise TypeError(f"Variant {self.name!r} carries the state {list(self.state_names)}, not {unknown}.")
        arguments = [getattr(config, name) for name in self.reference_parameters]
        given = {name: value for name, value in state.items() if value is not None}
        return self.reference(points, centroids, config.num_iterations, *arguments, **given)


def _mixture_reference(points, centroids, num_iterations, reg_covar, variances=None, weights=None):
    """`reference.gaussian_mixture_em` from the model's default variances and weights when none are given."""
    import numpy as np

    k, d = centroids.shape
    if variances is None:
        spread = ((points - points.mean(axis=0)) ** 2).sum(axis=1).mean() / d
        variances = np.full(k, spread if spread > 0 else 1.0)
    if weights is None:
        weights = np.full(k, 1.0 / k)
    return gaussian_mixture_em(points, centroids, variances, weights, num_iterations, reg_covar)


_POINT_SCRATCH = "point_erase"

# name, title, parameters (defaults), assign block, update block, then what differs from the defaults.
_SPECS = (
    VariantSpec(
        "lloyd", "k-means", {"inverse_temperature": None}, KMeansTransformerAssign, KMeansTransformerUpdate,
        sums_over_points=True, compact=True, reference=lloyd,
    ),
    VariantSpec(
        "soft", "soft k-means", {"inverse_temperature": 1.0}, KMeansTransformerSoftAssign, KMeansTransformerSoftUpdate,
        soft_assignment=True, label_determined=False, sums_over_points=True, compact=True, scale_parameters=("inverse_temperature",),
        reference=soft_kmeans, reference_parameters=("inverse_temperature",),
    ),
    VariantSpec(
        "spherical", "spherical k-means", {"inverse_temperature": None}, KMeansTransformerCosineAssign,
        KMeansTransformerUpdate, centroid_blocks={"centroid_norm": KMeansTransformerCentroidNorm}, unit_norm=True,
        sums_over_points=True, compact=True, scaling="invariant", reference=spherical_kmeans,
    ),
    VariantSpec(
        "trimmed", "trimmed k-means", {"inverse_temperature": None, "trim_quantile": 0.95, "trim_fraction": None},
        KMeansTransformerTrimmedAssign, KMeansTransformerUpdate, point_blocks={"trim_gate": KMeansTransformerTrimGate},
        slots=(
            TokenSlot("assigned", "point_dim", _POINT_SCRATCH), TokenSlot("distance", 1, _POINT_SCRATCH),
            TokenSlot("outlier", 1, _POINT_SCRATCH),
        ),
        exclusive=(("trim_quantile", "trim_fraction"),), compact=True, trims_by_quantile=True,
        reference=trimmed_kmeans, reference_parameters=("trim_quantile", "trim_fraction"),
    ),
    VariantSpec(
        "sparse", "sparse-update k-means", {"inverse_temperature": 0.01}, KMeansTransformerAssign,
        KMeansTransformerSparseUpdate, label_determined=False, thresholds_by_sparsemax=True, compact=True,
        scale_parameters=("inverse_temperature",), reference=sparse_kmeans,
        reference_parameters=("inverse_temperature",),
    ),
    VariantSpec(
        "kmedoids", "k-medoids", {"inverse_temperature": 1.0, "medoid_selection": "deterministic"},
        KMeansTransformerAssign, KMeansTransformerMedoidUpdate, point_blocks={"medoid_cost": KMeansTransformerMedoidCost},
        slots=(TokenSlot("medoid_cost", 1, _POINT_SCRATCH),), compact=True, reference=kmedoids,
        form_parameter="medoid_selection",
        forms={
            "deterministic": {},
            # keeps the (unused) `medoid_cost` slot: one token layout
            "gumbel": {"update": KMeansTransformerGumbelMedoidUpdate, "point_blocks": {}, "label_determined": False,
                       "random": True, "reference": None, "scale_parameters": ("inverse_temperature",),
                       "compact": False},
        },
        zoo_parameters=({}, {"medoid_selection": "gumbel"}),
    ),
    VariantSpec(
        "gmm", "Gaussian-mixture", {"reg_covar": 0.0}, KMeansTransformerGaussianAssign, KMeansTransformerMixtureUpdate,
        centroid_blocks={"m_step": KMeansTransformerMixtureMStep},
        slots=(
            TokenSlot("square_norm", 1, point_value=_square_norms), TokenSlot("variance", 1),
            TokenSlot("mixing_weight", 1, "centroid_erase"),
        ),
        state=MIXTURE_STATE, soft_assignment=True, label_determined=False, sums_over_points=True, compact=True,
        scale_parameters=("reg_covar",),
        reference=_mixture_reference, reference_parameters=("reg_covar",), reference_label="gaussian_mixture_em",
        zoo_parameters=({"reg_covar": 1e-6},),
    ),
    VariantSpec(
        "fuzzy", "fuzzy c-means", {"fuzzifier": 2.0}, KMeansTransformerFuzzyAssign, KMeansTransformerFuzzyUpdate,
        soft_assignment=True, label_determined=False, sums_over_points=True, compact=True,
        reference=fuzzy_cmeans, reference_parameters=("fuzzifier",),
    ),
    # the reference is what the untrained layer computes with init_from="lloyd"
    VariantSpec(
        "learned", "learned k-means layer", {"inverse_temperature": 1.0, "init_from": "lloyd"},
        KMeansTransformerLearnedAssign, KMeansTransformerLearnedUpdate, point_erase=KMeansTransformerLearnedPointErase,
        centroid_erase=KMeansTransformerLearnedCentroidErase, head_assign=KMeansTransformerAssign, trainable=True,
        label_determined=False, scale_parameters=("inverse_temperature",), reference=soft_kmeans,
        reference_parameters=("inverse_temperature",), zoo_parameters=(),
    ),
)
VARIANTS: dict[str, VariantSpec] = {spec.name: spec for spec in _SPECS}
VARIANT_NAMES = tuple(VARIANTS)


def get_variant(name) -> VariantSpec:
    """The spec of variant `name`; `ValueError` listing the variants for an unknown one."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown `variant` {name!r}; expected one of {list(VARIANT_NAMES)}.")
    return VARIANTS[name]


def variants_with(capability: str) -> tuple[str, ...]:
    """The names of the variants whose spec has `capability` (a boolean attribute) set, in order."""
    return tuple(name for name, spec in VARIANTS.items() if getattr(spec, capability))


__all__ = [
    "CarriedState",
    "ALGORITHM_PARAMETER_NAMES",
    "INITIALIZATIONS",
    "MEDOID_SELECTIONS",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "Parameter",
    "TokenSlot",
    "VARIANTS",
    "VARIANT_NAMES",
    "VariantSpec",
    "get_variant",
    "variants_with",
]
