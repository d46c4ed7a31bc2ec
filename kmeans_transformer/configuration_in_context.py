# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the in-context clustering transformer (`in_context.py`, whose module docstring has the model)."""

from transformers.configuration_utils import PreTrainedConfig

from .configuration_attention_clustering import _check_positive
from .configuration_kmeans_transformer import KMeansTransformerConfig


INITIALIZATIONS = ("gmm", "random")


class InContextClusteringConfig(PreTrainedConfig):
    r"""
    Configuration of an [`InContextClusteringModel`] (module docstring).

    Args:
        num_clusters (`int`, *optional*, defaults to 2): components `k`.
        point_dim (`int`, *optional*, defaults to 2): dimension `d`.
        num_em_iterations (`int`, *optional*, defaults to 10): exact EM iterations of the prefix (0: none).
        em_reg_covar (`float`, *optional*, defaults to 1e-6): added to every variance of the prefix's M-step (the
            gmm construction's `reg_covar`), so that a component on a single point keeps a positive variance.
        num_layers (`int`, *optional*, defaults to 2): trainable transformer layers.
        hidden_size (`int`, *optional*, defaults to 64): token width.
        num_attention_heads (`int`, *optional*, defaults to 4): heads per layer (divides `hidden_size`).
        intermediate_size (`int`, *optional*, defaults to 128): MLP width.
        initialization (`str`, *optional*, defaults to `"gmm"`): `"gmm"` (the untrained model is EM) or `"random"`.
        initializer_range (`float`, *optional*, defaults to 0.02): standard deviation of the random weights.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5).
    """

    model_type = "in_context_clustering"

    num_clusters: int = 2
    point_dim: int = 2
    num_em_iterations: int = 10
    em_reg_covar: float = 1e-6
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    intermediate_size: int = 128
    initialization: str = "gmm"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        for name in ("num_clusters", "point_dim", "hidden_size", "num_attention_heads", "intermediate_size"):
            _check_positive(name, getattr(self, name), integer=True)
        for name in ("num_em_iterations", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` ({self.num_attention_heads})."
            )
        if self.initialization not in INITIALIZATIONS:
            raise ValueError(f"`initialization` must be one of {INITIALIZATIONS}, got {self.initialization!r}.")
        if self.initialization == "gmm" and self.num_em_iterations < 1:
            raise ValueError("`initialization='gmm'` needs `num_em_iterations >= 1` (the EM prefix it starts from).")
        _check_positive("initializer_range", self.initializer_range)
        _check_positive("layer_norm_eps", self.layer_norm_eps)
        reg_covar = self.em_reg_covar
        if isinstance(reg_covar, bool) or not isinstance(reg_covar, (int, float)) or not 0 <= reg_covar < float("inf"):
            raise ValueError(f"`em_reg_covar` must be a finite number >= 0, got {self.em_reg_covar!r}.")
        super().__post_init__(**kwargs)

    def em_config(self) -> KMeansTransformerConfig:
        """The gmm construction of the prefix: `num_em_iterations` EM iterations, one layer looped."""
        return KMeansTransformerConfig(
            num_clusters=self.num_clusters, point_dim=self.point_dim, variant="gmm", num_iterations=self.num_em_iterations,
            reg_covar=float(self.em_reg_covar),
        )


__all__ = ["InContextClusteringConfig"]
