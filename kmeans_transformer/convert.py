"""Write analytic checkpoints: build the model of a variant, check it against the reference, save safetensors and a card.

A checkpoint directory holds `config.json`, `model.safetensors` (no pickle), the configuration and modeling code for
`trust_remote_code=True`, and a `README.md` model card that records the validation the weights passed.
"""

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .modeling_kmeans_transformer import KMeansTransformerModel
from .reference import lloyd


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
    label_agreement: float
    max_relative_centroid_error: float
    min_label_agreement: float
    max_relative_centroid_error_allowed: float

    @property
    def passed(self) -> bool:
        return (
            self.label_agreement >= self.min_label_agreement
            and self.max_relative_centroid_error <= self.max_relative_centroid_error_allowed
        )


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
) -> KMeansTransformerModel:
    """The analytic model of `variant`, in `dtype` (`"float32"` or `"float64"`)."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {list(DTYPES)}.")
    config = KMeansTransformerConfig(
        num_clusters=num_clusters,
        point_dim=point_dim,
        num_iterations=num_iterations,
        variant=variant,
        share_layers=share_layers,
    )
    return KMeansTransformerModel(config).to(DTYPES[dtype]).eval()


@torch.no_grad()
def validate_against_reference(
    model: KMeansTransformerModel, num_problems: int = 8, num_points: int = 512, seed: int = 0
) -> ValidationReport:
    """
    Run `model` and the reference Lloyd loop on `num_problems` generated mixtures (initial centroids drawn from the
    points) and compare every iteration: the assignments, and the centroids relative to the data's scale.
    """
    config = model.config
    dtype = model.dtype
    generator = np.random.default_rng(seed)
    matches, compared, errors = 0, 0, []
    for _ in range(num_problems):
        points = gaussian_mixture(generator, num_points, config.point_dim, config.num_clusters)
        points = torch.tensor(points, dtype=dtype).numpy().astype(np.float64)  # the values the model sees
        initial = points[generator.choice(num_points, size=config.num_clusters, replace=False)]
        expected = lloyd(points, initial, config.num_iterations)
        output = model(torch.tensor(points, dtype=dtype), torch.tensor(initial, dtype=dtype), output_hidden_states=True)
        position, code = config.token_slices["position"], config.token_slices["code"]
        trajectory = torch.stack([h[0, num_points:, position] for h in output.hidden_states[1:]])
        labels = torch.stack([h[0, :num_points, code].argmax(-1) for h in output.hidden_states[1:]])
        scale = max(np.abs(points).max(), 1.0)
        if config.num_iterations:
            matches += int((labels.numpy() == expected.label_history).sum())
            compared += labels.numel()
            errors.append(np.abs(trajectory.double().numpy() - expected.centroid_history[1:]).max() / scale)
        matches += int((output.labels[0].numpy() == expected.labels).sum())
        compared += num_points
        errors.append(np.abs(output.centroids[0].double().numpy() - expected.centroids).max() / scale)
    tolerance = TOLERANCES[dtype]
    return ValidationReport(
        num_problems=num_problems,
        num_points=num_points,
        num_iterations=config.num_iterations,
        seed=seed,
        dtype=str(dtype).removeprefix("torch."),
        label_agreement=matches / compared,
        max_relative_centroid_error=float(max(errors)),
        min_label_agreement=tolerance["min_label_agreement"],
        max_relative_centroid_error_allowed=tolerance["max_relative_centroid_error"],
    )


def render_model_card(model: KMeansTransformerModel, report: ValidationReport, repo_id: str | None = None) -> ModelCard:
    """The model card of a checkpoint, from `hub_cards/<variant>.md`, with the validation figures of `report`."""
    config = model.config
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["clustering", "k-means", "kmeans-transformer", config.variant],
        model_name=repo_id or f"kmeans-transformer-{config.variant}",
    )
    template = resources.files("kmeans_transformer.hub_cards").joinpath(f"{config.variant}.md").read_text()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        config=config,
        report=asdict(report),
        hidden_size=config.hidden_size,
        repo_id=repo_id or "path/to/checkpoint",
        model_name=card_data.model_name,
    )


def convert_checkpoint(model: KMeansTransformerModel, output_dir: str | Path, overwrite: bool = False) -> ValidationReport:
    """
    Validate `model` against the reference, and only then write its checkpoint to `output_dir`. Refuses a
    non-empty `output_dir` unless `overwrite` (which replaces only the checkpoint's files).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; pass --overwrite to write the checkpoint into it anyway.")
    report = validate_against_reference(model)
    if not report.passed:
        raise ValidationError(f"The built model disagrees with the reference, not writing a checkpoint: {report}")
    model.save_pretrained(output_dir)
    render_model_card(model, report).save(output_dir / "README.md")
    return report


__all__ = [
    "ValidationError",
    "ValidationReport",
    "build_model",
    "convert_checkpoint",
    "gaussian_mixture",
    "render_model_card",
    "validate_against_reference",
]
