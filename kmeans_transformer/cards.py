"""Model cards: the card of an analytic checkpoint (with its validation figures) and the card of a fitted estimator.

A checkpoint's card is rendered from its variant's template, `hub_cards/<VariantSpec.card_template>`, a fitted
estimator's from `hub_cards/fitted.md`; titles, parameters and capabilities come from the variant's declaration
(`config.variant_spec`, see `kmeans_transformer.variants`). The figures are those of a
`validation.ValidationReport`, in the text and in the card's `model-index` metadata.
"""

import numbers
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .variants import PARAMETER_NAMES, VariantSpec


PACKAGE_TAG = "kmeans-transformer"


if TYPE_CHECKING:
    from .configuration_kmeans_transformer import KMeansTransformerConfig
    from .modeling_kmeans_transformer import KMeansTransformerModel
    from .validation import ValidationReport


MODIFIED_WEIGHTS_NOTICE = (
    "> **These weights are not the analytic construction**: they were trained or edited after it was written. The "
    "sections below describe the construction they started from; the validation below was run on these weights and "
    "{passed} its requirements."
)
FITTED_CENTROIDS_NOTICE = (
    "> This model also stores fitted centroids (`embeddings.fitted_centroids`), which are its default `centroids` "
    "input. Push the fitted `kmeans_transformer.KMeans` estimator for a card that describes the fit."
)


def _template(name: str) -> str:
    """The card template `name`: from the installed `kmeans_transformer.hub_cards`, else from a source checkout's `hub_cards/`."""
    installed = resources.files("kmeans_transformer.hub_cards").joinpath(name)
    source = Path(__file__).resolve().parent.parent / "hub_cards" / name
    return (installed if installed.is_file() or not source.is_file() else source).read_text(encoding="utf-8")


def validation_results(config: "KMeansTransformerConfig", report: "ValidationReport") -> list[EvalResult]:
    """The figures of `report` as model-index entries (task `clustering`, dataset: the generated mixtures)."""
    spec = config.variant_spec
    dataset = {
        "task_type": "clustering",
        "task_name": f"{spec.title}, agreement with the reference",
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
        state = " and ".join(spec.state_names)
        name = f"Max error of the {state}, each relative to its largest value"
        metrics.append(("max_relative_parameter_error", name, report.max_relative_parameter_error))
    return [
        EvalResult(**dataset, metric_type=kind, metric_name=name, metric_value=float(value)) for kind, name, value in metrics
    ]


def _card_data(name: str, repo_id: str | None, eval_results, tags=("k-means",), extra_tags=None) -> ModelCardData:
    """The YAML metadata every card of the package shares: library, license, tags (`tags`, `kmeans-transformer`, then
    `extra_tags`, default `name`), name (`repo_id`, else `kmeans-transformer-<name>`) and the `model-index` figures. `library_name: transformers` with the `kmeans-transformer` tag is the
    mark of a card this package wrote (`is_package_card`)."""
    return ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        tags=["clustering", *tags, PACKAGE_TAG, *(extra_tags or (name,))],
        model_name=repo_id or f"{PACKAGE_TAG}-{name}",
        eval_results=eval_results,
    )


def is_package_card(path) -> bool:
    """Whether the card at `path` was written by this package (its metadata carries the `kmeans-transformer` tag)."""
    try:
        data = ModelCard.load(path, ignore_metadata_errors=True).data
    except Exception:  # unreadable, or not a card at all: not ours
        return False
    return PACKAGE_TAG in (data.tags or []) and data.library_name == "transformers"


def render_model_card(
    model: "KMeansTransformerModel", report: "ValidationReport", repo_id: str | None = None
) -> ModelCard:
    """
    The model card of a checkpoint, from its variant's template (`hub_cards/<VariantSpec.card_template>`), with the
    validation figures of `report` in the text and in the `model-index` metadata. A model whose weights are no longer
    the analytic construction (trained or edited) gets a notice under the title saying so, and its figures show how
    far it now is from the reference.
    """
    config = model.config
    spec = config.variant_spec
    card_data = _card_data(spec.name, repo_id, validation_results(config, report))
    card = ModelCard.from_template(
        card_data,
        template_str=_template(spec.card_template),
        config=config,
        spec=spec,
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


def learned_results(evaluation) -> list[EvalResult]:
    """The figures of a learned layer's `learned.Evaluation` as model-index entries, one dataset per setting."""
    results = []
    for n, family, start in evaluation.settings():
        summary = evaluation.summary(n, family, start)
        dataset = {
            "task_type": "clustering",
            "task_name": f"Learned k-means layer looped {evaluation.num_steps} steps vs Lloyd",
            "dataset_type": "synthetic-clustering-tasks",
            "dataset_name": f"Unseen {family} tasks",
            "dataset_config": (
                f"{evaluation.num_tasks} tasks of {n} points, d={evaluation.point_dim}, k={evaluation.num_clusters}, "
                f"scale {evaluation.scale}, seed {evaluation.seed}, start {start}"
            ),
        }
        metrics = [
            ("mean_log_objective", "Mean log k-means objective, learned loop", summary["learned"]["median"]),
            ("mean_log_objective_lloyd", "Mean log k-means objective, Lloyd", summary["lloyd"]["median"]),
            ("fraction_below_lloyd", "Fraction of tasks where the learned loop ends below Lloyd",
             summary["fraction_below"]["median"]),
        ]
        results += [EvalResult(**dataset, metric_type=kind, metric_name=name, metric_value=float(value))
                    for kind, name, value in metrics]
    return results


def render_learned_card(model: "KMeansTransformerModel", settings: dict, evaluation=None) -> ModelCard:
    """
    The card of a learned layer (`hub_cards/learned.md`): how it was trained (`settings`: the task distribution,
    the loss and the training arguments) and, in the text and the `model-index`, the `learned.Evaluation` figures.
    """
    config = model.config
    spec = config.variant_spec
    card_data = _card_data(spec.name, None, learned_results(evaluation) if evaluation is not None else None)
    from .learned import START_TITLES, evaluation_table

    return ModelCard.from_template(
        card_data,
        template_str=_template(spec.card_template),
        config=config,
        settings=settings,
        hidden_size=config.hidden_size,
        table=evaluation_table(evaluation) if evaluation is not None else None,
        start_titles=START_TITLES,
        model_name=card_data.model_name,
    )


# The models that learn to cluster (`attention_clustering`, `in_context`): model type -> (template, tags).
LEARNING_CARDS = {
    "attention_clustering": ("attention_clustering.md", ("attention", "gaussian-mixture")),
    "identity_attention": ("identity_attention.md", ("attention", "mean-shift")),
    "in_context_clustering": ("in_context_clustering.md", ("in-context-learning", "gaussian-mixture")),
}


def learning_results(evaluation: dict) -> list[EvalResult]:
    """
    An evaluation of a model that learns to cluster as model-index entries: `evaluation` is
    `{"task": ..., "dataset": ..., "dataset_config": ..., "metrics": {name: value}}`, `metrics` what the evaluation
    function returned (`attention_clustering.head_alignment`, `attention_clustering.quantisation`,
    `in_context.misclustering_rate` averaged), one entry per figure.
    """
    dataset = {
        "task_type": "clustering",
        "task_name": evaluation["task"],
        "dataset_type": "synthetic-gaussian-mixtures",
        "dataset_name": evaluation["dataset"],
        "dataset_config": evaluation.get("dataset_config"),
    }
    return [
        EvalResult(**dataset, metric_type=name, metric_name=name.replace("_", " "), metric_value=float(value))
        for name, value in evaluation["metrics"].items()
    ]


def render_learning_card(model, repo_id: str | None = None) -> ModelCard:
    """
    The card of a model that learns to cluster (`AttentionClusteringModel`, `IdentityAttentionModel`,
    `InContextClusteringModel`), from `hub_cards/<model_type>.md`: what it computes, how to load it, and the training
    settings (`model.card_training`) and evaluation figures (`model.card_evaluation`, in the `model-index` too) that
    its training recorded on it, when it was trained.
    """
    config = model.config
    if config.model_type not in LEARNING_CARDS:
        raise ValueError(f"no card template for model type {config.model_type!r}; expected one of {sorted(LEARNING_CARDS)}")
    template, tags = LEARNING_CARDS[config.model_type]
    training, evaluation = getattr(model, "card_training", None), getattr(model, "card_evaluation", None)
    card_data = _card_data(
        config.model_type.replace("_", "-"), repo_id, learning_results(evaluation) if evaluation else None, tags=tags
    )
    import jinja2

    results = jinja2.Template(_template("learning_results.md")).render(training=training, evaluation=evaluation)
    return ModelCard.from_template(
        card_data,
        template_str=_template(template),
        config=config,
        results=results.strip(),
        repo_id=repo_id or "path/to/checkpoint",
        model_name=card_data.model_name,
    )


def write_learning_card(model, directory, repo_id: str | None = None) -> None:
    """`directory/README.md`: the card of `render_learning_card`, written atomically (what `save_pretrained` of the
    models that learn to cluster adds to the checkpoint, and `push_to_hub` pushes with the repository's id)."""
    from .files import replacing_file

    with replacing_file(Path(directory) / "README.md", overwrite=True) as temporary:
        render_learning_card(model, repo_id).save(temporary)


def _assignment_rule(spec: VariantSpec) -> str:
    """Which fitted cluster the assignment head gives a point, in words."""
    if spec.unit_norm:
        return "most similar (cosine)"
    if spec.soft_assignment:
        return "most responsible (largest responsibility or membership)"
    return "nearest"


def _describe_init(init) -> str:
    if hasattr(init, "__array__"):
        return "explicit centroids"
    if callable(init):
        return f"callable {getattr(init, '__qualname__', 'init')}"
    return init


def _recorded_seed(random_state):
    """An integer seed (a NumPy integer from a parameter grid included) as a Python int; else "not recorded"."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)):
        return int(random_state)
    return "not recorded"


def render_fitted_card(estimator, repo_id: str | None = None, max_table_cells: int = 256) -> ModelCard:
    """The model card of a fitted [`KMeans`], from `hub_cards/fitted.md`: the fit's settings and results."""
    config = estimator.model_.config
    spec = config.variant_spec
    labels = estimator.labels_
    names = getattr(estimator, "feature_names_in_", None)
    column_names = [str(name) for name in names] if names is not None else [f"x{i}" for i in range(config.point_dim)]
    card_data = _card_data(
        f"{spec.name}-fitted",
        repo_id,
        extra_tags=(spec.name, "fitted"),
        eval_results=[
            EvalResult(
                task_type="clustering",
                task_name=f"{spec.title} fit",
                dataset_type="training-data",
                dataset_name="Training points",
                dataset_config=f"{len(labels)} points, d={config.point_dim}",
                metric_type="inertia",
                metric_name="Inertia (sum of squared distances to the assigned centroid)",
                metric_value=float(estimator.inertia_),
            )
        ],
    )
    centers = estimator.cluster_centers_
    return ModelCard.from_template(
        card_data,
        template_str=_template("fitted.md"),
        model_name=card_data.model_name,
        repo_id=repo_id or "path/to/checkpoint",
        variant=spec.name,
        variant_title=spec.title,
        variant_parameters={name: getattr(config, name) for name in PARAMETER_NAMES if getattr(config, name) is not None},
        fitted_state=[f"embeddings.fitted_{name}" for name in spec.state_names],
        assignment_rule=_assignment_rule(spec),
        reports_outliers=spec.reports_outliers,
        n_samples=len(labels),
        n_features=config.point_dim,
        n_clusters=config.num_clusters,
        feature_names=column_names if names is not None else None,
        init=_describe_init(estimator.init),
        n_restarts=getattr(estimator, "n_restarts_", "an unrecorded number of"),
        random_state=_recorded_seed(estimator.random_state),
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


__all__ = [
    "FITTED_CENTROIDS_NOTICE",
    "MODIFIED_WEIGHTS_NOTICE",
    "LEARNING_CARDS",
    "is_package_card",
    "learned_results",
    "learning_results",
    "render_learning_card",
    "render_fitted_card",
    "render_learned_card",
    "render_model_card",
    "validation_results",
    "write_learning_card",
]
