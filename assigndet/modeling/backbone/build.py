"""The backbone registry and ``build_backbone``."""

from __future__ import annotations

from fvcore.common.registry import Registry

from assigndet.layers import ShapeSpec

from .backbone import Backbone

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbone builders, named by MODEL.BACKBONE.NAME. A builder is called as ``builder(cfg,
input_shape)`` with ``input_shape`` a ShapeSpec, and returns a ``Backbone``.
"""


def build_backbone(cfg, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``.

    ``input_shape`` defaults to ``ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))``.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    registered = sorted(n for n, _ in BACKBONE_REGISTRY)
    if name not in registered:
        raise KeyError(
            f"MODEL.BACKBONE.NAME = {name!r} is not a registered backbone; registered: {registered}"
        )
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"backbone builder {name!r} returned {type(backbone).__name__}, not a Backbone"
        )
    return backbone
