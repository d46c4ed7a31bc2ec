# Copyright 2026 The kmeans-transformer Authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the exact k-means transformer."""

from typing import ClassVar

from transformers.configuration_utils import PreTrainedConfig


VARIANTS = ("lloyd",)


class KMeansTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of a [`KMeansTransformerModel`]: a transformer whose every layer is one iteration of a clustering
    algorithm, with analytic weights.

    Points and centroids are tokens of width `hidden_size = 2 * point_dim + num_clusters + 1`, laid out as four
    slices (see [`KMeansTransformerConfig.token_slices`]):

    - `position` (`point_dim`): the point `x_i`, or the centroid `c_j`;
    - `code` (`num_clusters`): the point's assignment `y_i`, or the centroid's one-hot identity `e_j`;
    - `previous` (`point_dim`): for centroid tokens, the centroid of the previous iteration (0 for points);
    - `is_centroid` (1): 1 on centroid tokens, 0 on point tokens.

    Args:
        num_clusters (`int`, *optional*, defaults to 8):
            Number of clusters `k`.
        point_dim (`int`, *optional*, defaults to 2):
            Dimension `d` of the points.
        num_iterations (`int`, *optional*, defaults to 10):
            Number of layers `T`, one clustering iteration each (alias `num_hidden_layers`). May be 0: the model then
            only assigns points to the given centroids.
        share_layers (`bool`, *optional*, defaults to `True`):
            If `True`, one layer's weights are looped `num_iterations` times, and `forward` accepts another
            `num_iterations`; if `False`, the model holds `num_iterations` separate layers.
        variant (`str`, *optional*, defaults to `"lloyd"`):
            The clustering algorithm the analytic weights realise. One of `"lloyd"`.
        inverse_temperature (`float`, *optional*, defaults to 1.0):
            Softmax stiffness `γ` used by the softmax attention paths (`attn_implementation="eager"` or `"sdpa"`):
            the assign scores are `-γ ||x_i - c_j||²`. The exact `"hardmax"` path (the default) ignores it.

    Example:

    ```python
    >>> from kmeans_transformer import KMeansTransformerConfig, KMeansTransformerModel
    >>> config = KMeansTransformerConfig(num_clusters=3, point_dim=2, num_iterations=5)
    >>> model = KMeansTransformerModel(config)  # exactly Lloyd's algorithm, 5 iterations

    ```
    """

    model_type = "kmeans_transformer"
    attribute_map: ClassVar[dict[str, str]] = {"num_hidden_layers": "num_iterations"}

    num_clusters: int = 8
    point_dim: int = 2
    num_iterations: int = 10
    share_layers: bool = True
    variant: str = "lloyd"
    inverse_temperature: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_kmeans()

    def validate_kmeans(self):
        """Check every field and their combinations; raise `ValueError` naming the field and what it accepts."""
        for name, minimum in (("num_clusters", 1), ("point_dim", 1), ("num_iterations", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
        if not isinstance(self.share_layers, bool):
            raise ValueError(f"`share_layers` must be a bool, got {self.share_layers!r}.")
        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown `variant` {self.variant!r}; expected one of {list(VARIANTS)}.")
        gamma = self.inverse_temperature
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < float("inf"):
            raise ValueError(f"`inverse_temperature` must be a finite number > 0, got {gamma!r}.")

    @property
    def hidden_size(self) -> int:
        """Width of every token: `2 * point_dim + num_clusters + 1`."""
        return 2 * self.point_dim + self.num_clusters + 1

    @property
    def token_slices(self) -> dict[str, slice]:
        """The named slices of a token (see the class docstring)."""
        d, k = self.point_dim, self.num_clusters
        return {
            "position": slice(0, d),
            "code": slice(d, d + k),
            "previous": slice(d + k, 2 * d + k),
            "is_centroid": slice(2 * d + k, 2 * d + k + 1),
        }


__all__ = ["KMeansTransformerConfig"]
