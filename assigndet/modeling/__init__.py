"""Models: backbones and the meta-architecture registry."""

from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    ResNet,
    build_backbone,
    build_resnet_backbone,
)
from .meta_arch import FCOS, META_ARCH_REGISTRY, GeneralizedRCNN, build_model

__all__ = [
    "BACKBONE_REGISTRY",
    "FCOS",
    "FPN",
    "GeneralizedRCNN",
    "META_ARCH_REGISTRY",
    "Backbone",
    "ResNet",
    "build_backbone",
    "build_model",
    "build_resnet_backbone",
]
