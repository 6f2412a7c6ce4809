"""ResNet / ResNeXt / FPN builders: shapes, strides, widths, freezing, deformable stages."""

import pytest
import torch
from torch import nn

from assigndet.config import get_cfg
from assigndet.layers import DeformConv, FrozenBatchNorm2d, ModulatedDeformConv, ShapeSpec
from assigndet.modeling import BACKBONE_REGISTRY, Backbone, build_backbone
from assigndet.modeling.backbone import FPN, BottleneckBlock, DeformBottleneckBlock, ResNet

ALL_STAGES = ["res2", "res3", "res4", "res5"]


def _cfg(depth=18, out_features=ALL_STAGES, freeze_at=0, **resnets):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return cfg


def _tiny(out_features=ALL_STAGES, freeze_at=0, **resnets):
    """A narrow ResNet-50 (bottleneck widths 8..64, outputs 32..256) that builds and runs fast."""
    narrow = {"STEM_OUT_CHANNELS": 16, "RES2_OUT_CHANNELS": 32, "WIDTH_PER_GROUP": 8}
    return _cfg(50, out_features, freeze_at, **{**narrow, **resnets})


def test_r18_builds_and_runs():
    backbone = build_backbone(_cfg(18))
    assert isinstance(backbone, ResNet) and isinstance(backbone, Backbone)
    assert backbone.size_divisibility == 0 and backbone.padding_constraints == {}
    assert backbone.output_shape() == {
        "res2": ShapeSpec(channels=64, stride=4),
        "res3": ShapeSpec(channels=128, stride=8),
        "res4": ShapeSpec(channels=256, stride=16),
        "res5": ShapeSpec(channels=512, stride=32),
    }
    out = backbone(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 64, 16, 24),
        "res3": (2, 128, 8, 12),
        "res4": (2, 256, 4, 6),
        "res5": (2, 512, 2, 3),
    }
    keys = backbone.state_dict()
    # Basic blocks: conv1, conv2 and a shortcut only where the channel count changes.
    assert "res2.0.shortcut.weight" not in keys and "res3.0.shortcut.weight" in keys
    assert "res2.0.conv3.weight" not in keys and keys["res2.1.conv2.weight"].shape == (64, 64, 3, 3)
    assert len([k for k in keys if k.endswith("conv1.weight")]) == 1 + 8


def test_r34_block_counts():
    backbone = build_backbone(_cfg(34))
    assert [len(s) for s in backbone.stages] == [3, 4, 6, 3]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("RES2_OUT_CHANNELS", 256, "RES2_OUT_CHANNELS = 64"),
        ("NUM_GROUPS", 32, "NUM_GROUPS = 1"),
        ("RES5_DILATION", 2, "RES5_DILATION = 1"),
        ("DEFORM_ON_PER_STAGE", [False, True, False, False], "DEFORM_ON_PER_STAGE"),
    ],
)
def test_r18_rejects_bottleneck_options(key, value, message):
    cfg = _cfg(18)
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)


def test_bad_depth_and_out_features_errors():
    with pytest.raises(ValueError, match="DEPTH = 42"):
        build_backbone(_cfg(42))
    with pytest.raises(ValueError, match="OUT_FEATURES = \\['res6'\\]"):
        build_backbone(_cfg(18, out_features=["res6"]))


def test_resnext_widths():
    backbone = build_backbone(_tiny(NUM_GROUPS=4, WIDTH_PER_GROUP=4))
    sd = backbone.state_dict()
    # Bottleneck width 4 groups * 4 = 16 at res2, doubling per stage; grouped 3x3 convs.
    for stage, width in zip(ALL_STAGES, [16, 32, 64, 128]):
        assert sd[f"{stage}.0.conv1.weight"].shape[0] == width
        assert sd[f"{stage}.0.conv2.weight"].shape == (width, width // 4, 3, 3)
        assert sd[f"{stage}.1.conv1.weight"].shape[0] == width
    assert backbone.res2[0].conv2.groups == 4
    assert backbone.output_shape()["res5"].channels == 256
    out = backbone(torch.randn(1, 3, 32, 32))
    assert out["res5"].shape == (1, 256, 1, 1)


def test_stride_in_1x1_and_res5_dilation():
    backbone = build_backbone(_tiny(STRIDE_IN_1X1=True))
    assert backbone.res3[0].conv1.stride == (2, 2) and backbone.res3[0].conv2.stride == (1, 1)
    backbone = build_backbone(_tiny(STRIDE_IN_1X1=False, RES5_DILATION=2))
    assert backbone.res3[0].conv1.stride == (1, 1) and backbone.res3[0].conv2.stride == (2, 2)
    assert backbone.res5[0].conv2.dilation == (2, 2) and backbone.res5[0].conv2.stride == (1, 1)
    assert backbone.output_shape()["res5"].stride == 16
    assert backbone(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 256, 4, 4)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 4])
def test_freeze_at(freeze_at):
    backbone = build_backbone(_tiny(freeze_at=freeze_at, NORM="BN"))
    modules = [backbone.stem, backbone.res2, backbone.res3, backbone.res4, backbone.res5]
    for idx, module in enumerate(modules, start=1):
        frozen = idx <= freeze_at
        assert all(p.requires_grad != frozen for p in module.parameters())
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms)


def test_norm_choices_run():
    # GN needs multiples of 32 channels: bottleneck widths 32, 64, outputs 64, 128.
    wide = {"STEM_OUT_CHANNELS": 32, "RES2_OUT_CHANNELS": 64, "WIDTH_PER_GROUP": 32}
    for norm in ["FrozenBN", "BN", "GN", ""]:
        backbone = build_backbone(_tiny(out_features=["res3"], NORM=norm, **wide))
        assert backbone(torch.randn(2, 3, 32, 32))["res3"].shape == (2, 128, 4, 4)
        norm_layer = backbone.res3[0].conv1.norm
        expected = {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "GN": nn.GroupNorm}
        if norm:
            assert isinstance(norm_layer, expected[norm])
        else:
            assert norm_layer is None and backbone.res3[0].conv1.bias is None


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_stage(modulated):
    cfg = _tiny(
        out_features=["res3"],
        DEFORM_ON_PER_STAGE=[False, True, False, False],
        DEFORM_MODULATED=modulated,
        DEFORM_NUM_GROUPS=2,
    )
    backbone = build_backbone(cfg)
    assert all(isinstance(b, DeformBottleneckBlock) for b in backbone.res3)
    assert not any(isinstance(b, DeformBottleneckBlock) for b in backbone.res2)
    block = backbone.res3[0]
    conv_class = ModulatedDeformConv if modulated else DeformConv
    assert isinstance(block.conv2, conv_class)
    assert block.conv2_offset.weight.shape[0] == (27 if modulated else 18) * 2
    assert torch.all(block.conv2_offset.weight == 0) and torch.all(block.conv2_offset.bias == 0)
    sd = backbone.state_dict()
    assert "res3.0.conv2_offset.weight" in sd and "res3.0.conv2.norm.weight" in sd

    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = backbone(x)["res3"]
    assert out.shape == (1, 64, 4, 4)
    out.sum().backward()
    assert block.conv2_offset.weight.grad is not None

    # Zero offsets (and a 0.5 mask when modulated) make it a regular bottleneck.
    plain = BottleneckBlock(
        32, 64, bottleneck_channels=16, stride=2, norm="FrozenBN", stride_in_1x1=True
    )
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if "offset" not in k})
    if modulated:
        with torch.no_grad():
            plain.conv2.weight.mul_(0.5)
    h = torch.randn(1, 32, 8, 8)
    assert torch.allclose(block(h), plain(h), atol=1e-5)


def _fpn_cfg(name, in_features, **fpn):
    cfg = _tiny(out_features=in_features or ALL_STAGES)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.FPN.IN_FEATURES = list(in_features)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    for key, value in fpn.items():
        cfg.MODEL.FPN[key] = value
    return cfg


@pytest.mark.parametrize(
    "name, in_features, levels, top_keys",
    [
        ("build_resnet_fpn_backbone", ALL_STAGES, [2, 3, 4, 5, 6], []),
        ("build_retinanet_resnet_fpn_backbone", ALL_STAGES[1:], [3, 4, 5, 6, 7], ["p6", "p7"]),
        ("build_fcos_resnet_fpn_backbone", ALL_STAGES[1:], [3, 4, 5, 6, 7], ["p6", "p7"]),
    ],
)
def test_fpn_builders(name, in_features, levels, top_keys):
    backbone = build_backbone(_fpn_cfg(name, in_features))
    assert isinstance(backbone, FPN)
    assert backbone.size_divisibility == 32
    assert backbone.output_shape() == {f"p{k}": ShapeSpec(channels=32, stride=2**k) for k in levels}
    out = backbone(torch.randn(1, 3, 128, 128))
    assert list(out) == [f"p{k}" for k in levels]
    for k in levels:
        assert out[f"p{k}"].shape == (1, 32, 128 // 2**k, 128 // 2**k)
    keys = [k for k in backbone.state_dict() if not k.startswith("bottom_up.")]
    expected = []
    for feature in in_features:
        level = feature[-1]
        expected += [f"fpn_lateral{level}.weight", f"fpn_lateral{level}.bias"]
        expected += [f"fpn_output{level}.weight", f"fpn_output{level}.bias"]
    for top in top_keys:
        expected += [f"top_block.{top}.weight", f"top_block.{top}.bias"]
    assert keys == expected
    assert any(k.startswith("bottom_up.res3.0.") for k in backbone.state_dict())


def test_retinanet_p6_from_c5_and_fcos_p6_from_p5():
    retina = build_backbone(_fpn_cfg("build_retinanet_resnet_fpn_backbone", ALL_STAGES[1:]))
    fcos = build_backbone(_fpn_cfg("build_fcos_resnet_fpn_backbone", ALL_STAGES[1:]))
    assert retina.top_block.p6.in_channels == 256 and retina.top_block.in_feature == "res5"
    assert fcos.top_block.p6.in_channels == 32 and fcos.top_block.in_feature == "p5"
    x = torch.randn(1, 3, 64, 64)
    out = fcos(x)
    assert torch.allclose(out["p6"], fcos.top_block.p6(out["p5"]))
    assert torch.allclose(out["p7"], fcos.top_block.p7(torch.relu(out["p6"])))
    c5 = retina.bottom_up(x)["res5"]
    assert torch.allclose(retina(x)["p6"], retina.top_block.p6(c5))


def test_fcos_top_levels():
    cfg = _fpn_cfg("build_fcos_resnet_fpn_backbone", ALL_STAGES[1:])
    cfg.MODEL.FCOS.TOP_LEVELS = 1
    assert list(build_backbone(cfg).output_shape()) == ["p3", "p4", "p5", "p6"]
    cfg.MODEL.FCOS.TOP_LEVELS = 0
    assert list(build_backbone(cfg).output_shape()) == ["p3", "p4", "p5"]
    cfg.MODEL.FCOS.TOP_LEVELS = 3
    with pytest.raises(ValueError, match="TOP_LEVELS must be 0, 1 or 2, got 3"):
        build_backbone(cfg)


def test_fpn_top_down_sum_and_avg():
    for fuse in ["sum", "avg"]:
        backbone = build_backbone(_fpn_cfg("build_resnet_fpn_backbone", ALL_STAGES, FUSE_TYPE=fuse))
        x = torch.randn(1, 3, 64, 64)
        feats = backbone.bottom_up(x)
        p5_inner = backbone.fpn_lateral5(feats["res5"])
        p4_inner = backbone.fpn_lateral4(feats["res4"]) + torch.repeat_interleave(
            torch.repeat_interleave(p5_inner, 2, dim=2), 2, dim=3
        )
        if fuse == "avg":
            p4_inner = p4_inner / 2
        out = backbone(x)
        assert torch.allclose(out["p4"], backbone.fpn_output4(p4_inner), atol=1e-5)
        assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])


def test_fpn_norm_and_errors():
    backbone = build_backbone(_fpn_cfg("build_resnet_fpn_backbone", ALL_STAGES, NORM="GN"))
    keys = backbone.state_dict()
    assert "fpn_lateral3.norm.weight" in keys and "fpn_lateral3.bias" not in keys
    cfg = _fpn_cfg("build_resnet_fpn_backbone", ALL_STAGES)
    cfg.MODEL.FPN.IN_FEATURES = []
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES is empty"):
        build_backbone(cfg)
    cfg = _fpn_cfg("build_resnet_fpn_backbone", ["res3", "res5"])
    with pytest.raises(ValueError, match="strides must double"):
        build_backbone(cfg)
    cfg = _fpn_cfg("build_resnet_fpn_backbone", ALL_STAGES, FUSE_TYPE="max")
    with pytest.raises(ValueError, match="'sum' or 'avg', got 'max'"):
        build_backbone(cfg)


def test_fpn_handles_sizes_not_divisible_by_32():
    backbone = build_backbone(_fpn_cfg("build_resnet_fpn_backbone", ALL_STAGES))
    out = backbone(torch.randn(1, 3, 70, 90))
    assert out["p2"].shape[-2:] == (18, 23) and out["p5"].shape[-2:] == (3, 3)


def test_registry_and_unknown_backbone():
    for name in [
        "build_resnet_backbone",
        "build_resnet_fpn_backbone",
        "build_retinanet_resnet_fpn_backbone",
        "build_fcos_resnet_fpn_backbone",
    ]:
        assert BACKBONE_REGISTRY.get(name) is not None
    cfg = _cfg(18)
    cfg.MODEL.BACKBONE.NAME = "build_vgg_backbone"
    with pytest.raises(
        KeyError, match="'build_vgg_backbone' is not a registered.*build_resnet_backbone"
    ):
        build_backbone(cfg)


def test_input_channels_follow_pixel_mean():
    cfg = _tiny()
    cfg.MODEL.PIXEL_MEAN = [0.0]
    cfg.MODEL.PIXEL_STD = [1.0]
    assert build_backbone(cfg).stem.conv1.in_channels == 1
    assert build_backbone(_tiny(), ShapeSpec(channels=4)).stem.conv1.in_channels == 4
