"""kmeans-transformer: clustering algorithms as exact, inspectable Hugging Face transformer models."""

from transformers import AutoConfig, AutoModel

from .configuration_kmeans_transformer import KMeansTransformerConfig
from .modeling_kmeans_transformer import (
    KMeansTransformerModel,
    KMeansTransformerOutput,
    KMeansTransformerPreTrainedModel,
)
from .attention_clustering import (
    AttentionClusteringConfig,
    AttentionClusteringModel,
    CardedModelMixin,
    IdentityAttentionConfig,
    IdentityAttentionModel,
)
from .in_context import InContextClusteringConfig, InContextClusteringModel
from .reference import lloyd


__version__ = "0.1.0"

# The scikit-learn estimator and its functions are imported on first access (`kmeans_transformer.KMeans`, or
# `from kmeans_transformer import KMeans`): scikit-learn and pandas take seconds to import, and neither the models,
# their Auto registration nor most commands need them.
_LAZY = {"KMeans": "estimator", "k_means": "estimator", "kmeans_plusplus": "estimator"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})

# `model.push_to_hub` writes this package's card; the modeling file itself never imports the Hub code.
KMeansTransformerModel.carded_push = staticmethod(lambda *args, **kwargs: _push_model(*args, **kwargs))


# The models that learn to cluster write their card on `save_pretrained` (`cards.write_learning_card`).
CardedModelMixin.card_writer = staticmethod(lambda *args, **kwargs: _write_learning_card(*args, **kwargs))


# Every `save_pretrained` of the package writes into an existing directory as transformers does, safely.
KMeansTransformerModel.checkpoint_saving = CardedModelMixin.checkpoint_saving = staticmethod(
    lambda *args, **kwargs: _saving_checkpoint(*args, **kwargs)
)


def _saving_checkpoint(*args, **kwargs):
    from .convert import saving_checkpoint

    return saving_checkpoint(*args, **kwargs)


def _write_learning_card(*args, **kwargs):
    from .cards import write_learning_card

    return write_learning_card(*args, **kwargs)


def _push_model(*args, **kwargs):
    from .hub import push_model

    return push_model(*args, **kwargs)


AutoConfig.register(KMeansTransformerConfig.model_type, KMeansTransformerConfig)
AutoModel.register(KMeansTransformerConfig, KMeansTransformerModel)
# Checkpoints carry the two modeling files and an `auto_map`, so they also load with `trust_remote_code=True`.
KMeansTransformerConfig.register_for_auto_class()
KMeansTransformerModel.register_for_auto_class("AutoModel")
# The models that learn to cluster: each its own model type, loadable the same two ways.
for _config_class, _model_class in (
    (AttentionClusteringConfig, AttentionClusteringModel),
    (IdentityAttentionConfig, IdentityAttentionModel),
    (InContextClusteringConfig, InContextClusteringModel),
):
    AutoConfig.register(_config_class.model_type, _config_class)
    AutoModel.register(_config_class, _model_class)
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")

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
