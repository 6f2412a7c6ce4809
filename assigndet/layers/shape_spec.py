"""The shape of a feature map, passed between backbones, necks and heads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channels, spatial size and stride of a feature map; any field may be unknown (None)."""

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None
