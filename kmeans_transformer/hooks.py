# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
What the package adds to its models, attached by each modeling module at the end of its import (a checkpoint's copy
of a modeling file, loaded with `trust_remote_code`, runs without it: transformers' own behaviour):

- `save_pretrained` writes safely into an existing directory (`convert.saving_checkpoint`);
- the k-means transformer's `push_to_hub` pushes its card (`hub.push_model`); the models that learn to cluster write
  and push theirs (`cards.write_learning_card`);
- each model class is registered for `AutoModel`, so that a checkpoint carries an `auto_map` and its code.

The functions are imported on first call: the Hub and card code are not needed to build or run a model.
"""


def attach_kmeans_transformer(model_class) -> None:
    """The k-means transformer's hooks: its carded push, the safe save, `AutoModel`."""
    model_class.carded_push = staticmethod(_push_model)
    model_class.checkpoint_saving = staticmethod(_saving_checkpoint)
    model_class.register_for_auto_class("AutoModel")


def attach_learning_models(carded_mixin, *model_classes) -> None:
    """The hooks of the models that learn to cluster (read from their `CardedModelMixin`), and `AutoModel`."""
    carded_mixin.card_writer = staticmethod(_write_learning_card)
    carded_mixin.checkpoint_saving = staticmethod(_saving_checkpoint)
    for model_class in model_classes:
        model_class.register_for_auto_class("AutoModel")


def _saving_checkpoint(*args, **kwargs):
    from .convert import saving_checkpoint

    return saving_checkpoint(*args, **kwargs)


def _write_learning_card(*args, **kwargs):
    from .cards import write_learning_card

    return write_learning_card(*args, **kwargs)


def _push_model(*args, **kwargs):
    from .hub import push_model

    return push_model(*args, **kwargs)
