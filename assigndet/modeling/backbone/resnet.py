"""ResNet and ResNeXt (He et al. 2016; Xie et al. 2017) with detectron2's module names.

State-dict keys: ``stem.conv1.{weight, norm.*}``, ``res{2..5}.{i}.{conv1, conv2, conv3,
shortcut}.{weight, norm.*}`` (``conv3`` only in bottleneck blocks, ``shortcut`` only where the
channel count changes, ``conv2_offset.{weight, bias}`` in deformable blocks). Only the stages up to
the deepest one in ``out_features`` are built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.layers import (
    Conv2d,
    DeformConv,
    FrozenBatchNorm2d,
    ModulatedDeformConv,
    ShapeSpec,
    c2_msra_fill,
    get_norm,
)

from .backbone import Backbone
from .build import BACKBONE_REGISTRY

# Blocks per stage res2..res5 for each supported depth.
RESNET_DEPTHS: dict[int, list[int]] = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class CNNBlockBase(nn.Module):
    """A block with known ``in_channels``, ``out_channels`` and ``stride`` that can be frozen."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> CNNBlockBase:
        """Stop gradients to every parameter and turn batch norms into FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=1,
        stride=stride,
        bias=False,
        norm=get_norm(norm, out_channels),
    )


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs (``conv1`` with the stride, ``conv2``) plus a residual (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H / stride, W / stride]."""
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class BottleneckBlock(CNNBlockBase):
    """1x1 ``conv1`` -> 3x3 ``conv2`` (grouped, dilated) -> 1x1 ``conv3``, plus a residual.

    ``stride_in_1x1`` puts the stride on ``conv1`` (MSRA / Caffe2 weights) instead of ``conv2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if layer is not None:
                c2_msra_fill(layer)

    def _conv2_forward(self, x: Tensor) -> Tensor:
        return self.conv2(x)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H / stride, W / stride]."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self._conv2_forward(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class DeformBottleneckBlock(BottleneckBlock):
    """A bottleneck block whose ``conv2`` is a (modulated) deformable convolution.

    ``conv2_offset`` predicts the offsets (and the mask logits when modulated) and starts at zero,
    so the block initially behaves as a regular bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            stride=stride,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
            dilation=dilation,
        )
        self.deform_modulated = deform_modulated
        stride_3x3 = 1 if stride_in_1x1 else stride
        # Two offsets (dy, dx) per kernel tap and deformable group; modulated convs also predict
        # one mask logit per tap and group, stored after all the offsets.
        values_per_tap = 3 if deform_modulated else 2
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            values_per_tap * 9 * deform_num_groups,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        conv_class = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_class(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            deformable_groups=deform_num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
        c2_msra_fill(self.conv2)
        nn.init.constant_(self.conv2_offset.weight, 0)
        nn.init.constant_(self.conv2_offset.bias, 0)

    def _conv2_forward(self, x: Tensor) -> Tensor:
        offset = self.conv2_offset(x)
        if not self.deform_modulated:
            return self.conv2(x, offset)
        num_masks = offset.shape[1] // 3
        return self.conv2(x, offset[:, : 2 * num_masks], offset[:, 2 * num_masks :].sigmoid())


class BasicStem(CNNBlockBase):
    """``conv1`` (7x7, stride 2, no bias) + norm + ReLU, then a 3x3 stride-2 max-pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H / 4, W / 4]."""
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(Backbone):
    """A stem followed by stages ``res2``, ``res3``, ... (each an ``nn.Sequential`` of blocks).

    Args:
        stem: the stem, with ``out_channels`` and ``stride``.
        stages: the blocks of each stage, from res2 on.
        num_classes: if set, adds global pooling and a ``linear`` classifier (output "linear").
        out_features: names returned by ``forward`` (any of "stem", "res2", ..., "linear");
            defaults to the last stage (or "linear").
        freeze_at: 0 trains everything, 1 freezes the stem, k >= 2 also freezes res2..resk.
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: list[list[CNNBlockBase]],
        num_classes: int | None = None,
        out_features: list[str] | None = None,
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes
        current_stride = stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        self.stage_names: list[str] = []
        self.stages: list[nn.Sequential] = []
        name = "stem"
        for i, blocks in enumerate(stages):
            if not blocks:
                raise ValueError(f"stage res{i + 2} has no blocks")
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for block in blocks:
                current_stride *= block.stride
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = blocks[-1].out_channels

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(self._out_feature_channels[self.stage_names[-1]], num_classes)
            # Same initialisation as the Caffe2 classification models ("Goyal et al.").
            nn.init.normal_(self.linear.weight, std=0.01)
            name = "linear"
        if out_features is None:
            out_features = [name]
        self._out_features = list(out_features)
        available = ["stem", *self.stage_names] + (["linear"] if num_classes is not None else [])
        for f in self._out_features:
            if f not in available:
                raise ValueError(f"output feature {f!r} is not built; available: {available}")
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: [N, C, H, W] -> {name: [N, C_name, H / stride_name, W / stride_name]}."""
        if x.dim() != 4:
            raise ValueError(f"ResNet takes a [N, C, H, W] tensor, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
            if name != "linear"
        }

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (freeze_at >= 1) and stages res2..res{freeze_at}.

        Frozen blocks get ``requires_grad=False`` and their batch norms become FrozenBatchNorm2d.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: type[CNNBlockBase],
        num_blocks: int,
        *,
        in_channels: int,
        out_channels: int,
        **kwargs,
    ) -> list[CNNBlockBase]:
        """``num_blocks`` blocks of ``block_class``; the first maps in_channels to out_channels.

        A keyword ending in ``_per_block`` is a list giving that argument for each block (e.g.
        ``stride_per_block=[2, 1, 1]``); other keywords are passed to every block.
        """
        blocks = []
        for i in range(num_blocks):
            block_kwargs = {}
            for key, value in kwargs.items():
                if key.endswith("_per_block"):
                    if len(value) != num_blocks:
                        raise ValueError(
                            f"{key} has {len(value)} entries, expected {num_blocks} (one per block)"
                        )
                    block_kwargs[key[: -len("_per_block")]] = value[i]
                else:
                    block_kwargs[key] = value
            blocks.append(
                block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs)
            )
            in_channels = out_channels
        return blocks


_STAGE_INDEX = {"stem": 1, "res2": 2, "res3": 3, "res4": 4, "res5": 5}


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """A ResNet / ResNeXt from MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT."""
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    depth = r.DEPTH
    out_features = list(r.OUT_FEATURES)
    num_groups = r.NUM_GROUPS
    bottleneck_channels = num_groups * r.WIDTH_PER_GROUP
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    res5_dilation = r.RES5_DILATION
    deform_on_per_stage = list(r.DEFORM_ON_PER_STAGE)

    if depth not in RESNET_DEPTHS:
        raise ValueError(f"MODEL.RESNETS.DEPTH = {depth} is not one of {sorted(RESNET_DEPTHS)}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
    if len(deform_on_per_stage) != 4:
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 entries (res2..res5), got "
            f"{deform_on_per_stage}"
        )
    unknown = [f for f in out_features if f not in _STAGE_INDEX]
    if not out_features or unknown:
        raise ValueError(
            f"MODEL.RESNETS.OUT_FEATURES = {out_features}: expected a non-empty subset of "
            f"{list(_STAGE_INDEX)}"
        )
    if depth in (18, 34):
        # detectron2 requires 64 (the width of every released checkpoint); narrower basic-block
        # ResNets are allowed for small models trained from scratch, as long as res2 keeps the
        # stem's width like the standard ones.
        for key, value, expected in (
            ("RES2_OUT_CHANNELS", out_channels, in_channels),
            ("RES5_DILATION", res5_dilation, 1),
            ("NUM_GROUPS", num_groups, 1),
        ):
            if value != expected:
                raise ValueError(
                    f"ResNet-{depth} uses basic blocks: set MODEL.RESNETS.{key} = {expected} "
                    f"(got {value})"
                )
        if any(deform_on_per_stage):
            raise ValueError(
                f"MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported for ResNet-{depth} "
                "(deformable convs replace the 3x3 of bottleneck blocks)"
            )

    stem = BasicStem(in_channels=input_shape.channels, out_channels=in_channels, norm=norm)
    max_stage = max(_STAGE_INDEX[f] for f in out_features)
    stages = []
    for idx, stage_idx in enumerate(range(2, max_stage + 1)):
        dilation = res5_dilation if stage_idx == 5 else 1
        # res2 follows the stem's max-pool; a dilated res5 keeps the res4 resolution.
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        num_blocks = RESNET_DEPTHS[depth][idx]
        stage_kwargs = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs["bottleneck_channels"] = bottleneck_channels
            stage_kwargs["stride_in_1x1"] = r.STRIDE_IN_1X1
            stage_kwargs["dilation"] = dilation
            stage_kwargs["num_groups"] = num_groups
            if deform_on_per_stage[idx]:
                stage_kwargs["block_class"] = DeformBottleneckBlock
                stage_kwargs["deform_modulated"] = r.DEFORM_MODULATED
                stage_kwargs["deform_num_groups"] = r.DEFORM_NUM_GROUPS
            else:
                stage_kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
