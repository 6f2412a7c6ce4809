"""The interface every backbone implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from torch import Tensor, nn

from assigndet.layers import ShapeSpec


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network mapping an image batch [N, C, H, W] to named feature maps.

    Subclasses set ``_out_features`` (names in output order), ``_out_feature_channels`` and
    ``_out_feature_strides`` (dicts keyed by name), which ``output_shape`` reports.
    """

    _out_features: list[str]
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: [N, C, H, W] -> {name: [N, C_name, H / stride_name, W / stride_name]}."""

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> dict[str, int]:
        """Extra padding rules, e.g. ``{"size_divisibility": 32, "square_size": 1024}``."""
        return {}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every output feature, by name."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
