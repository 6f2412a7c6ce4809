"""Feature Pyramid Network (Lin et al. 2017) with detectron2's module names.

Keys: ``fpn_lateral{k}`` (1x1) and ``fpn_output{k}`` (3x3) for each input with stride 2**k,
``top_block.p6`` / ``top_block.p7`` for the extra levels, and ``bottom_up.*`` for the backbone.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.layers import Conv2d, ShapeSpec, c2_xavier_fill, get_norm

from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet import build_resnet_backbone


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by 2 (a 1x1 max-pool with stride 2), as in Faster R-CNN FPN."""

    num_levels = 1

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [N, C, H, W] -> [p6: [N, C, ceil(H / 2), ceil(W / 2)]]."""
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 = 3x3 stride-2 conv of ``in_feature``; P7 = 3x3 stride-2 conv of ReLU(P6).

    ``in_feature`` is "res5" for RetinaNet (C5) and "p5" for FCOS (the FPN's P5 output).
    """

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [N, C_in, H, W] -> [p6: [N, C, H / 2, W / 2], p7: [N, C, H / 4, W / 4]]."""
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class LastLevelP6(nn.Module):
    """P6 = 3x3 stride-2 conv of ``in_feature`` (FCOS with a single extra level)."""

    num_levels = 1

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        c2_xavier_fill(self.p6)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [N, C_in, H, W] -> [p6: [N, C, H / 2, W / 2]]."""
        return [self.p6(x)]


class FPN(Backbone):
    """A top-down pyramid on a bottom-up backbone; outputs ``p{k}`` for stride 2**k.

    Args:
        bottom_up: the backbone giving the ``in_features``.
        in_features: its features, ordered from high to low resolution, with strides doubling.
        out_channels: channels of every pyramid level.
        norm: norm of the lateral and output convs ("" for none: the convs then have biases).
        top_block: an optional module adding ``num_levels`` coarser levels from its
            ``in_feature``, looked up among the bottom-up features first, then the FPN outputs.
        fuse_type: "sum" or "avg" of the lateral and the upsampled coarser level.
        square_pad: if > 0, inputs are padded to a square of this size (``padding_constraints``).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: list[str],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        if not in_features:
            raise ValueError(
                "FPN needs at least one input feature (MODEL.FPN.IN_FEATURES is empty)"
            )
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN input features {missing} are not produced by the backbone, whose outputs "
                f"are {list(input_shapes)} (check MODEL.FPN.IN_FEATURES / RESNETS.OUT_FEATURES)"
            )
        strides = [input_shapes[f].stride for f in in_features]
        for s_prev, s_next in zip(strides[:-1], strides[1:]):
            if s_next != 2 * s_prev:
                raise ValueError(f"FPN input strides must double level to level, got {strides}")

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for feature, stride in zip(in_features, strides):
            level = int(math.log2(stride))
            lateral = Conv2d(
                input_shapes[feature].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Kept coarse-to-fine, the order of the top-down pass; registered above by name only.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type
        if top_block is not None:
            known = [*input_shapes, *self._out_features]
            if top_block.in_feature not in known:
                raise ValueError(
                    f"top block input {top_block.in_feature!r} is neither a backbone output nor "
                    f"an FPN level; available: {known}"
                )

    @property
    def size_divisibility(self) -> int:
        """The largest input stride: inputs padded to a multiple of it align at every level."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: [N, C, H, W] -> {"p{k}": [N, out_channels, H / 2**k, W / 2**k]}, fine to coarse."""
        bottom_up_features = self.bottom_up(x)
        prev = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results = [self.output_convs[0](prev)]
        for i in range(1, len(self.lateral_convs)):
            lateral = self.lateral_convs[i](bottom_up_features[self.in_features[-1 - i]])
            # Nearest upsampling to the lateral's size: exactly 2x for padded inputs, and still
            # aligned when an input size is not a multiple of size_divisibility.
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, self.output_convs[i](prev))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                top_input = bottom_up_features[name]
            else:
                top_input = results[self._out_features.index(name)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _fpn_in_features(cfg) -> list[str]:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    if not in_features:
        raise ValueError(
            "MODEL.FPN.IN_FEATURES is empty; set the backbone stages fed to the FPN, "
            'e.g. ["res2", "res3", "res4", "res5"] or ["res3", "res4", "res5"]'
        )
    return in_features


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with a max-pooled P6 (Faster R-CNN FPN: p2..p6 from res2..res5)."""
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=_fpn_in_features(cfg),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with P6/P7 convolved from C5 (RetinaNet: p3..p7 from res3..res5)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    bottom_up_shapes = bottom_up.output_shape()
    if "res5" not in bottom_up_shapes:
        raise ValueError(
            "build_retinanet_resnet_fpn_backbone builds P6 from res5: add 'res5' to "
            "MODEL.RESNETS.OUT_FEATURES"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=_fpn_in_features(cfg),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up_shapes["res5"].channels, out_channels, "res5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with P6/P7 convolved from the FPN's P5 (FCOS/ATSS: p3..p7 from res3..res5).

    MODEL.FCOS.TOP_LEVELS (2 by default) sets how many of P6, P7 are added on top of P5.
    """
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_levels = cfg.MODEL.FCOS.TOP_LEVELS if "FCOS" in cfg.MODEL else 2
    if top_levels == 2:
        top_block = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    elif top_levels == 1:
        top_block = LastLevelP6(out_channels, out_channels, in_feature="p5")
    elif top_levels == 0:
        top_block = None
    else:
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {top_levels}")
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=_fpn_in_features(cfg),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
