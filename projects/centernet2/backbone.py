"""The CenterNet2 backbone: ResNet + FPN on res3-res5 with P6/P7 convolved from the FPN's P5."""

from __future__ import annotations

from assigndet.layers import ShapeSpec
from assigndet.modeling.backbone import (
    BACKBONE_REGISTRY,
    FPN,
    LastLevelP6P7,
    build_resnet_backbone,
)


@BACKBONE_REGISTRY.register()
def build_p67_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN giving p3..p7 (strides 8..128) from ``MODEL.FPN.IN_FEATURES`` res3..res5.

    P6 is a 3x3 stride-2 conv of P5 and P7 the same on ReLU(P6) (module ``top_block.p6/p7``, as
    the official ``LastLevelP6P7_P5``). Inputs are padded to multiples of 32 (the stride of the
    last FPN input), not 128: the official model pads the same way.
    """
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    if not in_features:
        raise ValueError(
            'build_p67_resnet_fpn_backbone needs MODEL.FPN.IN_FEATURES, e.g. ["res3", "res4", '
            '"res5"]; it is empty'
        )
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
