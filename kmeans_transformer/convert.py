"""Write analytic checkpoints: build the model of a variant, check it against the reference, save safetensors and a card.

A checkpoint directory holds `config.json`, `model.safetensors` (no pickle), the configuration and modeling code for
`trust_remote_code=True` (with the package modules they import), and a `README.md` model card that records the
validation the weights passed. The validation is `validation.validate_against_reference`, the card
`cards.render_model_card`.
"""

from pathlib import Path

from .cards import render_model_card
from .configuration_kmeans_transformer import KMeansTransformerConfig
from .modeling_kmeans_transformer import DTYPES, KMeansTransformerModel
from .validation import ValidationError, ValidationReport, validate_against_reference


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
    own config fields (`variants.PARAMETER_NAMES`: `inverse_temperature`, `fuzzifier`, ...); those given as None take
    the variant's defaults.
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
    the checkpoint's files). Raises `validation.ValidationError` when the model disagrees with the reference.
    """
    output_dir = check_checkpoint_directory(output_dir, overwrite)
    report = validate_against_reference(model)
    if not report.passed:
        raise ValidationError(f"The built model disagrees with the reference, not writing a checkpoint: {report}")
    card = render_model_card(model, report, repo_id=repo_id)
    model.save_pretrained(output_dir)
    card.save(output_dir / "README.md")
    return report


__all__ = ["build_model", "check_checkpoint_directory", "convert_checkpoint"]
