"""Check a model against its variant's independent reference, iteration by iteration, on generated Gaussian mixtures.

Everything here reads the variant's declaration (`config.variant_spec`, see `kmeans_transformer.variants`): its
reference (`VariantSpec.run_reference`), the state it carries besides the centroids (`VariantSpec.state`), whether it
flags outliers (`reports_outliers`) and whether it draws at random (`random`, checked against what the draw must
satisfy instead of a trajectory). `convert` writes a checkpoint only when this validation passes, and the cards
(`cards`) report its figures.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .modeling_kmeans_transformer import KMeansTransformerModel
from . import reference


# What "agrees with the reference" means per dtype: float64 must be exact up to summation order; float32 rounds
# distances, so a near-tie may flip and the trajectories then differ slightly.
TOLERANCES = {
    torch.float64: {"min_label_agreement": 1.0, "max_relative_centroid_error": 1e-10},
    torch.float32: {"min_label_agreement": 0.999, "max_relative_centroid_error": 1e-4},
}

RANDOM_REFERENCE = "medoid_probabilities (support of the draw)"


class ValidationError(RuntimeError):
    """The built model does not agree with the reference algorithm; no checkpoint is written."""


@dataclass
class ValidationReport:
    """
    Figures from checking a model against the reference on generated Gaussian mixtures. `outlier_agreement` is set
    for a variant that flags outliers, `max_relative_parameter_error` (the largest error of the carried state, each
    parameter relative to its largest value) for one that carries state besides the centroids.
    """

    num_problems: int
    num_points: int
    num_iterations: int
    seed: int
    dtype: str
    reference: str
    label_agreement: float
    max_relative_centroid_error: float
    min_label_agreement: float
    max_relative_centroid_error_allowed: float
    outlier_agreement: float | None = None
    max_relative_parameter_error: float | None = None

    @property
    def passed(self) -> bool:
        return (
            self.label_agreement >= self.min_label_agreement
            and self.max_relative_centroid_error <= self.max_relative_centroid_error_allowed
            and (self.outlier_agreement is None or self.outlier_agreement >= self.min_label_agreement)
            and (
                self.max_relative_parameter_error is None
                or self.max_relative_parameter_error <= self.max_relative_centroid_error_allowed
            )
        )


def gaussian_mixture(
    generator: np.random.Generator, num_points: int, point_dim: int, num_components: int, spread: float = 4.0
) -> np.ndarray:
    """`num_points` points from an isotropic mixture of `num_components` unit Gaussians with centres of scale `spread`."""
    centres = generator.normal(scale=spread, size=(num_components, point_dim))
    components = generator.integers(num_components, size=num_points)
    return centres[components] + generator.normal(size=(num_points, point_dim))


def layer_trajectory(config: KMeansTransformerConfig, hidden_states, num_points: int) -> dict[str, torch.Tensor]:
    """
    What each layer left in the tokens of problem 0, read off `hidden_states[1:]` through `config.token_slices`:
    `assignments` `(T, n, k)` (the code slot), `labels` `(T, n)` (its argmax; -1 for a point with no assignment,
    such as a trimmed one), `centroids` `(T, k, d)`, `outliers` `(T, n)` for a variant that flags outliers (its
    `outlier` slot), and one `(T, k)` entry per carried state (`VariantSpec.state`: gmm's `variances` and `weights`),
    read off the state's slot of the centroid tokens.
    """
    spec, slices = config.variant_spec, config.token_slices
    states = torch.stack([h[0] for h in hidden_states])[1:]  # (T, n + k, hidden); T = 0 gives an empty stack
    points, centroids = states[:, :num_points], states[:, num_points:]
    codes = points[..., slices["code"]]
    trajectory = {
        "assignments": codes,
        "labels": codes.argmax(dim=-1).masked_fill(codes.amax(dim=-1) <= 0, -1),
        "centroids": centroids[..., slices["position"]],
    }
    if spec.reports_outliers:
        trajectory["outliers"] = points[..., slices["outlier"]][..., 0] > 0
    for state in spec.state:
        trajectory[state.name] = centroids[..., slices[state.slot]][..., 0]
    return trajectory


@dataclass
class _Tally:
    """The comparisons of `validate_against_reference`, summed over the problems."""

    compared: int = 0
    label_matches: int = 0
    outlier_matches: int = 0
    centroid_errors: list[float] = field(default_factory=list)
    parameter_errors: list[float] = field(default_factory=list)


@torch.no_grad()
def validate_against_reference(
    model: KMeansTransformerModel, num_problems: int = 8, num_points: int = 512, seed: int = 0
) -> ValidationReport:
    """
    Run `model` and its variant's reference (`run_reference`) on `num_problems` generated mixtures (initial centroids
    drawn from the points, the carried state at the variant's defaults) and compare every iteration: the labels, the
    outlier flags (a variant that reports outliers), the centroids relative to the data's scale, and each carried
    state relative to its largest value. A variant that draws at random (gumbel k-medoids) has no trajectory to
    compare, so each iteration is checked against what the draw must satisfy: the labels are the nearest medoids, and
    every new medoid is a member of its cluster (or the old one, for an empty cluster).
    """
    config, dtype, spec = model.config, model.dtype, model.config.variant_spec
    generator = np.random.default_rng(seed)
    tally = _Tally()
    for problem in range(num_problems):
        points = gaussian_mixture(generator, num_points, config.point_dim, config.num_clusters)
        points = torch.tensor(points, dtype=dtype).numpy().astype(np.float64)  # the values the model sees
        initial = points[generator.choice(num_points, size=config.num_clusters, replace=False)]
        state = _initial_state(config, points, dtype)
        inputs = {name: torch.tensor(value, dtype=dtype) for name, value in {"centroids": initial, **state}.items()}
        if spec.random:
            inputs["generator"] = torch.Generator().manual_seed(seed + problem)
        found = _model_trajectory(model, points, inputs)
        if spec.random:
            expected = _gumbel_medoid_expectations(points, initial, found["centroids"])
        else:
            expected = _reference_trajectory(config, points, initial, state)
        _compare(found, expected, max(np.abs(points).max(), 1.0), tally)
    tolerance = TOLERANCES[dtype]
    return ValidationReport(
        num_problems=num_problems,
        num_points=num_points,
        num_iterations=config.num_iterations,
        seed=seed,
        dtype=str(dtype).removeprefix("torch."),
        reference=RANDOM_REFERENCE if spec.random else spec.reference_name,
        label_agreement=tally.label_matches / tally.compared,
        max_relative_centroid_error=float(max(tally.centroid_errors)),
        min_label_agreement=tolerance["min_label_agreement"],
        max_relative_centroid_error_allowed=tolerance["max_relative_centroid_error"],
        outlier_agreement=tally.outlier_matches / tally.compared if spec.reports_outliers else None,
        max_relative_parameter_error=float(max(tally.parameter_errors, default=0.0)) if spec.state else None,
    )


def _initial_state(config: KMeansTransformerConfig, points: np.ndarray, dtype: torch.dtype) -> dict[str, np.ndarray]:
    """
    Each carried state at its default (`CarriedState.default`) for one problem, rounded to `dtype` (the values the
    model is given) and returned in float64 for the reference.
    """
    values = torch.from_numpy(points)[None]
    mask = torch.ones(values.shape[:2], dtype=torch.bool)
    return {
        state.name: state.default(values, mask, config.num_clusters)[0].to(dtype).double().numpy()
        for state in config.variant_spec.state
    }


def _model_trajectory(model: KMeansTransformerModel, points: np.ndarray, inputs: dict) -> dict[str, np.ndarray]:
    """The model's `layer_trajectory` on one problem, with its returned labels, centroids and outliers appended."""
    output = model(torch.tensor(points, dtype=model.dtype), output_hidden_states=True, **inputs)
    trajectory = layer_trajectory(model.config, output.hidden_states, len(points))
    found = {name: value.double().cpu().numpy() for name, value in trajectory.items()}
    found["centroids"] = np.concatenate([found["centroids"], output.centroids.double().cpu().numpy()])
    found["labels"] = np.concatenate([found["labels"], output.labels.cpu().numpy()]).astype(np.int64)
    if "outliers" in found:
        found["outliers"] = np.concatenate([found["outliers"], output.outliers.cpu().numpy()]).astype(bool)
    return found


def _reference_trajectory(config: KMeansTransformerConfig, points, initial, state) -> dict[str, np.ndarray]:
    """
    The reference's labels, centroids (and outliers) of every iteration and against the returned centroids, and the
    carried state after every iteration: `ClusteringResult` keeps the history of a state `<name>s` as
    `<name>_history` (`variances` -> `variance_history`), the initial values first.
    """
    spec = config.variant_spec
    result = config.variant_spec.run_reference(config, points, initial, **state)
    expected = {
        "labels": np.concatenate([result.label_history, result.labels[None]]),
        "centroids": np.concatenate([result.centroid_history[1:], result.centroids[None]]),
    }
    if spec.reports_outliers:
        expected["outliers"] = np.concatenate([result.outlier_history, result.outliers[None]])
    for name in spec.state_names:
        expected[name] = np.asarray(getattr(result, f"{name.removesuffix('s')}_history"))[1:]
    return expected


def _compare(found: dict, expected: dict, scale: float, tally: _Tally) -> None:
    """
    Add one problem's comparisons to `tally`: labels, centroids, outliers, and the carried state (the other keys of
    `expected`).
    """
    tally.label_matches += int((found["labels"] == expected["labels"]).sum())
    tally.compared += found["labels"].size
    tally.centroid_errors.append(np.abs(found["centroids"] - expected["centroids"]).max() / scale)
    if "outliers" in expected:
        tally.outlier_matches += int((found["outliers"] == expected["outliers"]).sum())
    for name in set(expected) - {"labels", "centroids", "outliers"}:
        if expected[name].size:  # nothing to compare after 0 iterations
            state_scale = max(np.abs(expected[name]).max(), 1e-300)
            tally.parameter_errors.append(np.abs(found[name] - expected[name]).max() / state_scale)


def _gumbel_medoid_expectations(points, initial, centroid_trajectory) -> dict[str, np.ndarray]:
    """
    For gumbel k-medoids, from the model's medoids after each iteration and at the end (`(T + 1, k, d)`): the labels
    each iteration must make (the nearest medoid entering it, then the nearest returned one), and the centroids it may
    produce: the model's own medoid when it is a member of its cluster (or the old medoid of an empty cluster), else
    NaN, so that a medoid outside its cluster shows as a failure.
    """
    num_iterations = len(centroid_trajectory) - 1
    entering = np.concatenate([initial[None], centroid_trajectory[:num_iterations]])
    labels = np.stack([reference.assign_labels(points, centres) for centres in entering])
    allowed = centroid_trajectory.copy()
    for t in range(num_iterations):
        for j, medoid in enumerate(centroid_trajectory[t]):
            members = points[labels[t] == j]
            if len(members) == 0 and not (medoid == entering[t][j]).all():
                allowed[t, j] = np.nan
            if len(members) and not (members == medoid).all(axis=1).any():
                allowed[t, j] = np.nan
    return {"labels": labels, "centroids": allowed}


__all__ = [
    "TOLERANCES",
    "ValidationError",
    "ValidationReport",
    "gaussian_mixture",
    "layer_trajectory",
    "validate_against_reference",
]
