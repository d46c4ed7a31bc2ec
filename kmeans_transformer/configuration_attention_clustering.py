# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""
Configurations of the models that learn about clusters (`attention_clustering.py`): the attention clustering layer and
identity attention. This file imports only transformers, so the configurations load without the models' weights code.
"""

from transformers.configuration_utils import PreTrainedConfig


def _check_positive(name: str, value, integer: bool = False) -> None:
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")


class AttentionClusteringConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AttentionClusteringModel`].

    Args:
        num_heads (`int`, *optional*, defaults to 2): heads `k`, one per mixture component.
        point_dim (`int`, *optional*, defaults to 2): dimension `d`.
        inverse_temperature (`float`, *optional*, defaults to 1.0): `λ`; `1/σ²` matches components of variance `σ²`.
        initializer_range (`float`, *optional*, defaults to 0.1): initialisation scale `s`: `θ_h ~ N(0, s² I / d)`,
            so `|θ_h| ≈ s`.
    """

    model_type = "attention_clustering"

    num_heads: int = 2
    point_dim: int = 2
    inverse_temperature: float = 1.0
    initializer_range: float = 0.1

    def __post_init__(self, **kwargs):
        _check_positive("num_heads", self.num_heads, integer=True)
        _check_positive("point_dim", self.point_dim, integer=True)
        _check_positive("inverse_temperature", self.inverse_temperature)
        _check_positive("initializer_range", self.initializer_range)
        super().__post_init__(**kwargs)


class IdentityAttentionConfig(PreTrainedConfig):
    r"""
    Configuration of an [`IdentityAttentionModel`].

    Args:
        point_dim (`int`, *optional*, defaults to 2): dimension `d`.
        inverse_temperature (`float`, *optional*, defaults to 1.0): `λ` (mean-shift bandwidth `1/√λ`).
        num_layers (`int`, *optional*, defaults to 1): identity-attention steps `L`.
    """

    model_type = "identity_attention"

    point_dim: int = 2
    inverse_temperature: float = 1.0
    num_layers: int = 1

    def __post_init__(self, **kwargs):
        _check_positive("point_dim", self.point_dim, integer=True)
        _check_positive("inverse_temperature", self.inverse_temperature)
        _check_positive("num_layers", self.num_layers, integer=True)
        super().__post_init__(**kwargs)


__all__ = ["AttentionClusteringConfig", "IdentityAttentionConfig"]
