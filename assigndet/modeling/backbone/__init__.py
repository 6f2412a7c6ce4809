"""Backbones: the ``Backbone`` interface, its registry, ResNet/ResNeXt and FPN."""

from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import (
    FPN,
    LastLevelMaxPool,
    LastLevelP6,
    LastLevelP6P7,
    build_fcos_resnet_fpn_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    DeformBottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

__all__ = [
    "BACKBONE_REGISTRY",
    "FPN",
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CNNBlockBase",
    "DeformBottleneckBlock",
    "LastLevelMaxPool",
    "LastLevelP6",
    "LastLevelP6P7",
    "ResNet",
    "build_backbone",
    "build_fcos_resnet_fpn_backbone",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]
