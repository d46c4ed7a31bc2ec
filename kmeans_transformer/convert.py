"""Write analytic checkpoints: build the model of a variant, check it against the reference, save safetensors and a card.

A checkpoint directory holds `config.json`, `model.safetensors` (no pickle), the configuration and modeling code for
`trust_remote_code=True`, and a `README.md` model card that records the validation the weights passed.
"""

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .variants import PARAMETER_NAMES as VARIANT_PARAMETER_NAMES
from .modeling_kmeans_transformer import KMeansTransformerModel
from . import reference


DTYPES = {"float32": torch.float32, "float64": torch.float64}

# What "agrees with the reference" means per dtype: float64 must be exact up to summation order; float32 rounds
# distances, so a near-tie may flip and the trajectories then differ slightly.
TOLERANCES = {
    torch.float64: {"min_label_agreement": 1.0, "max_relative_centroid_error": 1e-10},
    torch.float32: {"min_label_agreement": 0.999, "max_relative_centroid_error": 1e-4},
}


class ValidationError(RuntimeError):
    """The built model does not agree with the reference algorithm; no checkpoint is written."""


@dataclass
class ValidationReport:
    """Figures from checking a model against the reference on generated Gaussian mixtures."""

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


def run_reference(config: KMeansTransformerConfig, points, centroids, variances=None, weights=None):
    """
    The independent NumPy reference of `config.variant` (see `kmeans_transformer.reference`) run for
    `config.num_iterations` iterations from `centroids` (and, for `"gmm"`, `variances` and `weights`). Gumbel
    k-medoids is random and has no trajectory reference; its selection law is `reference.medoid_probabilities`.
    """
    T, variant = config.num_iterations, config.variant
    if variant == "lloyd":
        return reference.lloyd(points, centroids, T)
    if variant == "soft":
        return reference.soft_kmeans(points, centroids, T, config.inverse_temperature)
    if variant == "spherical":
        return reference.spherical_kmeans(points, centroids, T)
    if variant == "trimmed":
        return reference.trimmed_kmeans(points, centroids, T, config.trim_quantile, config.trim_fraction)
    if variant == "sparse":
        return reference.sparse_kmeans(points, centroids, T, config.inverse_temperature)
    if variant == "kmedoids" and config.medoid_selection == "deterministic":
        return reference.kmedoids(points, centroids, T)
    if variant == "gmm":
        return reference.gaussian_mixture_em(points, centroids, variances, weights, T, config.reg_covar)
    raise ValueError(f"Variant {variant!r} ({config.medoid_selection}) has no deterministic reference.")


# `layer_trajectory` lives in `probe`; imported here for the callers that know it from this module.
from .probe import layer_trajectory  # noqa: E402


def gaussian_mixture(
    generator: np.random.Generator, num_points: int, point_dim: int, num_components: int, spread: float = 4.0
) -> np.ndarray:
    """`num_points` points from an isotropic mixture of `num_components` unit Gaussians with centres of scale `spread`."""
    centres = generator.normal(scale=spread, size=(num_components, point_dim))
    components = generator.integers(num_components, size=num_points)
    return centres[components] + generator.normal(size=(num_points, point_dim))


def build_model(
    num_clusters: int,
    point_dim: int,
    num_iterations: int,
    variant: str = "lloyd",
    dtype: str = "float32",
    share_layers: bool = True,
    **variant_parameters,
) -> KMeansTransformerModel:
    """
    The analytic model of `variant`, in `dtype` (`"float32"` or `"float64"`). `variant_parameters` are the variant's
    own config fields (`inverse_temperature`, `trim_quantile`, `trim_fraction`, `medoid_selection`, `reg_covar`);
    those given as None take the variant's defaults.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {list(DTYPES)}.")
    config = KMeansTransformerConfig(
        num_clusters=num_clusters,
        point_dim=point_dim,
        num_iterations=num_iterations,
        variant=variant,
        share_layers=share_layers,
        **{name: value for name, value in variant_parameters.items() if value is not None},
    )
    return KMeansTransformerModel(config).to(DTYPES[dtype]).eval()


@torch.no_grad()
def validate_against_reference(
    model: KMeansTransformerModel, num_problems: int = 8, num_points: int = 512, seed: int = 0
) -> ValidationReport:
    """
    Run `model` and its variant's reference (`run_reference`) on `num_problems` generated mixtures (initial centroids
    drawn from the points) and compare every iteration: the labels, the outlier flags (`"trimmed"`), the centroids
    relative to the data's scale, and the variances and weights (`"gmm"`). Gumbel k-medoids draws at random, so each
    iteration is checked against what the draw must satisfy: the labels are the nearest medoids, and every new medoid
    is a member of its cluster (or the old one, for an empty cluster).
    """
    config, dtype = model.config, model.dtype
    generator = np.random.default_rng(seed)
    gumbel = config.variant == "kmedoids" and config.medoid_selection == "gumbel"
    matches, compared, outlier_matches, errors, parameter_errors = 0, 0, 0, [], []
    for problem in range(num_problems):
        points = gaussian_mixture(generator, num_points, config.point_dim, config.num_clusters)
        points = torch.tensor(points, dtype=dtype).numpy().astype(np.float64)  # the values the model sees
        initial = points[generator.choice(num_points, size=config.num_clusters, replace=False)]
        inputs = {"centroids": torch.tensor(initial, dtype=dtype)}
        variances = weights = None
        if config.variant == "gmm":
            variances = np.full(config.num_clusters, ((points - points.mean(axis=0)) ** 2).sum(axis=1).mean() / config.point_dim)
            weights = np.full(config.num_clusters, 1 / config.num_clusters)
            inputs.update(variances=torch.tensor(variances, dtype=dtype), weights=torch.tensor(weights, dtype=dtype))
        if gumbel:
            inputs["generator"] = torch.Generator().manual_seed(seed + problem)
        output = model(torch.tensor(points, dtype=dtype), output_hidden_states=True, **inputs)
        found = {name: value.double().numpy() for name, value in layer_trajectory(config, output.hidden_states, num_points).items()}
        found["centroids"] = np.concatenate([found["centroids"], output.centroids.double().numpy()])
        found["labels"] = np.concatenate([found["labels"], output.labels.numpy()]).astype(np.int64)
        if gumbel:
            expected = _gumbel_medoid_expectations(points, initial, found["centroids"])
        else:
            expected = run_reference(config, points, initial, variances, weights)
            expected = {
                "labels": np.concatenate([expected.label_history, expected.labels[None]]),
                "centroids": np.concatenate([expected.centroid_history[1:], expected.centroids[None]]),
                **({"outliers": np.concatenate([expected.outlier_history, expected.outliers[None]])} if expected.outliers is not None else {}),
                **({"variances": expected.variance_history[1:], "weights": expected.weight_history[1:]} if expected.variances is not None else {}),
            }
        scale = max(np.abs(points).max(), 1.0)
        matches += int((found["labels"] == expected["labels"]).sum())
        compared += found["labels"].size
        errors.append(np.abs(found["centroids"] - expected["centroids"]).max() / scale)
        if "outliers" in expected:
            found_outliers = np.concatenate([found["outliers"], output.outliers.numpy()])
            outlier_matches += int((found_outliers == expected["outliers"]).sum())
        if "variances" in expected and config.num_iterations:
            variance_scale = max(np.abs(expected["variances"]).max(), 1e-300)
            parameter_errors.append(np.abs(found["variances"] - expected["variances"]).max() / variance_scale)
            parameter_errors.append(np.abs(found["weights"] - expected["weights"]).max())
    tolerance = TOLERANCES[dtype]
    return ValidationReport(
        num_problems=num_problems,
        num_points=num_points,
        num_iterations=config.num_iterations,
        seed=seed,
        dtype=str(dtype).removeprefix("torch."),
        reference="medoid_probabilities (support of the draw)" if gumbel else _reference_name(config),
        label_agreement=matches / compared,
        max_relative_centroid_error=float(max(errors)),
        min_label_agreement=tolerance["min_label_agreement"],
        max_relative_centroid_error_allowed=tolerance["max_relative_centroid_error"],
        outlier_agreement=outlier_matches / compared if config.variant == "trimmed" else None,
        max_relative_parameter_error=float(max(parameter_errors, default=0.0)) if config.variant == "gmm" else None,
    )


def _reference_name(config: KMeansTransformerConfig) -> str:
    names = {"soft": "soft_kmeans", "spherical": "spherical_kmeans", "trimmed": "trimmed_kmeans", "sparse": "sparse_kmeans", "gmm": "gaussian_mixture_em"}
    return names.get(config.variant, config.variant)


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


def validation_results(config: KMeansTransformerConfig, report: ValidationReport) -> list[EvalResult]:
    """The figures of `report` as model-index entries (task `clustering`, dataset: the generated mixtures)."""
    dataset = {
        "task_type": "clustering",
        "task_name": f"{VARIANT_TITLES[config.variant]}, agreement with the reference",
        "dataset_type": "synthetic-gaussian-mixtures",
        "dataset_name": "Generated Gaussian mixtures",
        "dataset_config": (
            f"{report.num_problems} problems of {report.num_points} points, d={config.point_dim}, "
            f"k={config.num_clusters}, seed {report.seed}, {report.dtype}"
        ),
    }
    metrics = [
        ("label_agreement", "Labels identical to the reference, every iteration", report.label_agreement),
        ("max_relative_centroid_error", "Max centroid error relative to the data scale", report.max_relative_centroid_error),
    ]
    if report.outlier_agreement is not None:
        metrics.append(("outlier_agreement", "Outlier flags identical to the reference", report.outlier_agreement))
    if report.max_relative_parameter_error is not None:
        metrics.append(("max_relative_parameter_error", "Max variance and weight error", report.max_relative_parameter_error))
    return [
        EvalResult(**dataset, metric_type=kind, metric_name=name, metric_value=float(value)) for kind, name, value in metrics
    ]


def render_model_card(model: KMeansTransformerModel, report: ValidationReport, repo_id: str | None = None) -> ModelCard:
    """
    The model card of a checkpoint, from `hub_cards/<variant>.md`, with the validation figures of `report` in the text
    and in the `model-index` metadata. A model whose weights are no longer the analytic construction (trained or
    edited) gets a notice under the title saying so, and its figures show how far it now is from the reference.
    """
    config = model.config
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["clustering", "k-means", "kmeans-transformer", config.variant],
        model_name=repo_id or f"kmeans-transformer-{config.variant}",
        eval_results=validation_results(config, report),
    )
    template = resources.files("kmeans_transformer.hub_cards").joinpath(f"{config.variant}.md").read_text()
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        config=config,
        report=asdict(report),
        hidden_size=config.hidden_size,
        token_slices={name: [part.start, part.stop] for name, part in config.token_slices.items()},
        repo_id=repo_id or "path/to/checkpoint",
        model_name=card_data.model_name,
    )
    notices = []
    if not model.has_analytic_weights() or not report.passed:
        notices.append(MODIFIED_WEIGHTS_NOTICE.format(passed="passed" if report.passed else "did not pass"))
    if config.fitted_centroids:
        notices.append(FITTED_CENTROIDS_NOTICE)
    if notices:
        title, _, body = card.text.lstrip("\n").partition("\n")
        card.text = "\n\n".join([title, *notices]) + "\n" + body
    return card


MODIFIED_WEIGHTS_NOTICE = (
    "> **These weights are not the analytic construction**: they were trained or edited after it was written. The "
    "sections below describe the construction they started from; the validation below was run on these weights and "
    "{passed} its requirements."
)
FITTED_CENTROIDS_NOTICE = (
    "> This model also stores fitted centroids (`embeddings.fitted_centroids`), which are its default `centroids` "
    "input. Push the fitted `kmeans_transformer.KMeans` estimator for a card that describes the fit."
)


VARIANT_TITLES = {
    "lloyd": "k-means",
    "soft": "soft k-means",
    "spherical": "spherical k-means",
    "trimmed": "trimmed k-means",
    "sparse": "sparse-update k-means",
    "kmedoids": "k-medoids",
    "gmm": "Gaussian-mixture",
}


def render_fitted_card(estimator, repo_id: str | None = None, max_table_cells: int = 256) -> ModelCard:
    """The model card of a fitted [`KMeans`], from `hub_cards/fitted.md`: the fit's settings and results."""
    config = estimator.model_.config
    labels = estimator.labels_
    names = getattr(estimator, "feature_names_in_", None)
    column_names = [str(name) for name in names] if names is not None else [f"x{i}" for i in range(config.point_dim)]
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["clustering", "k-means", "kmeans-transformer", config.variant, "fitted"],
        model_name=repo_id or f"kmeans-transformer-{config.variant}-fitted",
        eval_results=[
            EvalResult(
                task_type="clustering",
                task_name=f"{VARIANT_TITLES[config.variant]} fit",
                dataset_type="training-data",
                dataset_name="Training points",
                dataset_config=f"{len(labels)} points, d={config.point_dim}",
                metric_type="inertia",
                metric_name="Inertia (sum of squared distances to the assigned centroid)",
                metric_value=float(estimator.inertia_),
            )
        ],
    )
    template = resources.files("kmeans_transformer.hub_cards").joinpath("fitted.md").read_text()
    centers = estimator.cluster_centers_
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=card_data.model_name,
        repo_id=repo_id or "path/to/checkpoint",
        variant=config.variant,
        variant_title=VARIANT_TITLES[config.variant],
        variant_parameters={
            name: getattr(config, name)
            for name in VARIANT_PARAMETER_NAMES
            if getattr(config, name) is not None
        },
        n_samples=len(labels),
        n_features=config.point_dim,
        n_clusters=config.num_clusters,
        feature_names=column_names if names is not None else None,
        init=(
            "explicit centroids"
            if hasattr(estimator.init, "__array__")
            else f"callable {getattr(estimator.init, '__qualname__', 'init')}" if callable(estimator.init) else estimator.init
        ),
        n_restarts=getattr(estimator, "_n_restarts", "an unrecorded number of"),
        random_state=estimator.random_state if isinstance(estimator.random_state, int) else "not recorded",
        n_iter=estimator.n_iter_,
        max_iter=estimator.max_iter,
        tol=estimator.tol,
        inertia=estimator.inertia_,
        cluster_sizes=np.bincount(labels[labels >= 0], minlength=config.num_clusters).tolist(),
        outliers=int((labels < 0).sum()),
        dtype=str(estimator.model_.dtype).removeprefix("torch."),
        column_names=column_names,
        centroid_rows=[[f"{value:.6g}" for value in row] for row in centers] if centers.size <= max_table_cells else None,
    )


def check_checkpoint_directory(directory, overwrite: bool, how: str = "pass --overwrite") -> Path:
    """
    Refuse, before any work, an output `directory` (a checkpoint, or results) that is a file or is not empty (unless
    `overwrite`).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory.")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; {how} to write into it anyway.")
    return directory


def convert_checkpoint(
    model: KMeansTransformerModel, output_dir: str | Path, overwrite: bool = False, repo_id: str | None = None
) -> ValidationReport:
    """
    Validate `model` against the reference, and only then write its checkpoint to `output_dir`, with a card naming
    the Hub repository `repo_id` if given. Refuses a non-empty `output_dir` unless `overwrite` (which replaces only
    the checkpoint's files).
    """
    output_dir = check_checkpoint_directory(output_dir, overwrite)
    report = validate_against_reference(model)
    if not report.passed:
        raise ValidationError(f"The built model disagrees with the reference, not writing a checkpoint: {report}")
    card = render_model_card(model, report, repo_id=repo_id)
    model.save_pretrained(output_dir)
    card.save(output_dir / "README.md")
    return report


__all__ = [
    "ValidationError",
    "ValidationReport",
    "build_model",
    "check_checkpoint_directory",
    "convert_checkpoint",
    "gaussian_mixture",
    "layer_trajectory",
    "render_fitted_card",
    "render_model_card",
    "run_reference",
    "validate_against_reference",
    "validation_results",
]
