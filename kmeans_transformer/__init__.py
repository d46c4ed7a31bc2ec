"""
kmeans-transformer: clustering algorithms as exact, inspectable Hugging Face transformer models.

Importing the package registers its configurations with `AutoConfig` and its models with `AutoModel`. The model
classes, the scikit-learn estimator and its functions are imported on first access (`kmeans_transformer.KMeans`,
`from kmeans_transformer import KMeansTransformerModel`, or the first `AutoModel.from_pretrained` of one of ours):
the modeling code needs `transformers.modeling_utils` (about 2 s to import) and the estimator scikit-learn and pandas,
and neither a configuration, the Auto registration nor the command line's parser needs them.
"""

import importlib

from transformers.models.auto.configuration_auto import AutoConfig
from transformers.models.auto.modeling_auto import AutoModel

from .configuration_attention_clustering import AttentionClusteringConfig, IdentityAttentionConfig
from .configuration_in_context import InContextClusteringConfig
from .configuration_kmeans_transformer import KMeansTransformerConfig
from .reference import lloyd


__version__ = "0.1.0"

# Each lazily imported name and its module.
_LAZY = {
    "KMeansTransformerModel": "modeling_kmeans_transformer",
    "KMeansTransformerOutput": "modeling_kmeans_transformer",
    "KMeansTransformerPreTrainedModel": "modeling_kmeans_transformer",
    "AttentionClusteringModel": "attention_clustering",
    "IdentityAttentionModel": "attention_clustering",
    "CardedModelMixin": "attention_clustering",
    "InContextClusteringModel": "in_context",
    "KMeans": "estimator",
    "k_means": "estimator",
    "kmeans_plusplus": "estimator",
}

# Each configuration and the name of its model class (in `_LAZY`).
_MODELS = {
    KMeansTransformerConfig: "KMeansTransformerModel",
    AttentionClusteringConfig: "AttentionClusteringModel",
    IdentityAttentionConfig: "IdentityAttentionModel",
    InContextClusteringConfig: "InContextClusteringModel",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})


class _ModelClassOnFirstUse:
    """
    Stands for one of the package's model classes in `AutoModel`'s mapping until it is first used: any attribute
    (`from_pretrained`, `from_config`, ...) imports the modeling module, puts the class itself in the mapping, and is
    read from the class.
    """

    def __init__(self, config_class, name: str):
        self._config_class, self._name = config_class, name

    def __getattr__(self, attribute):
        model_class = __getattr__(self._name)
        AutoModel.register(self._config_class, model_class, exist_ok=True)
        return getattr(model_class, attribute)

    def __repr__(self):
        return f"<{__name__}.{self._name}, imported on first use>"


for _config_class, _model_name in _MODELS.items():
    AutoConfig.register(_config_class.model_type, _config_class)
    # Checkpoints carry the modeling files and an `auto_map`, so they also load with `trust_remote_code=True`.
    _config_class.register_for_auto_class()
    # `AutoModel.register` would read the class's `config_class`; the mapping takes the stand-in as it is.
    AutoModel._model_mapping.register(_config_class, _ModelClassOnFirstUse(_config_class, _model_name))

__all__ = [
    "AttentionClusteringConfig",
    "AttentionClusteringModel",
    "IdentityAttentionConfig",
    "IdentityAttentionModel",
    "InContextClusteringConfig",
    "InContextClusteringModel",
    "KMeans",
    "KMeansTransformerConfig",
    "KMeansTransformerModel",
    "KMeansTransformerOutput",
    "KMeansTransformerPreTrainedModel",
    "k_means",
    "kmeans_plusplus",
    "lloyd",
]
