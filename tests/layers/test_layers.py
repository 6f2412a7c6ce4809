"""Conv2d, FrozenBatchNorm2d, get_norm, deformable convs and the Caffe2 initialisations."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assigndet.layers import (
    Conv2d,
    DeformConv,
    FrozenBatchNorm2d,
    ModulatedDeformConv,
    ShapeSpec,
    c2_msra_fill,
    c2_xavier_fill,
    cat,
    get_norm,
)


def test_shape_spec_defaults_and_fields():
    spec = ShapeSpec(channels=256, stride=8)
    assert (spec.channels, spec.height, spec.width, spec.stride) == (256, None, None, 8)
    assert ShapeSpec() == ShapeSpec(None, None, None, None)


def test_cat_single_tensor_is_returned_as_is():
    x = torch.randn(2, 3)
    assert cat([x]) is x
    assert torch.equal(cat([x, x], dim=1), torch.cat([x, x], dim=1))


def test_conv2d_norm_child_names_and_forward():
    conv = Conv2d(3, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=F.relu)
    assert list(conv.state_dict()) == [
        "weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    conv.eval()
    x = torch.randn(2, 3, 5, 5)
    expected = F.relu(conv.norm(F.conv2d(x, conv.weight, None, padding=1)))
    assert torch.allclose(conv(x), expected)


def test_frozen_bn_buffers_and_formula():
    bn = FrozenBatchNorm2d(4)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert not list(bn.parameters())
    assert torch.allclose(bn.running_var, torch.full((4,), 1 - 1e-5))
    bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    bn.running_mean.copy_(torch.tensor([0.5, -0.5, 2.0, 0.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 9.0]))
    x = torch.randn(2, 4, 3, 3)
    s = bn.weight / torch.sqrt(bn.running_var + 1e-5)
    expected = x * s.view(1, -1, 1, 1) + (bn.bias - bn.running_mean * s).view(1, -1, 1, 1)
    assert torch.allclose(bn(x), expected, atol=1e-6)
    # The explicit-affine path taken when gradients flow gives the same values.
    assert torch.allclose(bn(x.requires_grad_()), expected, atol=1e-6)


def test_frozen_bn_matches_eval_batchnorm_and_converts():
    block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    block[1].weight.data.uniform_(0.5, 2)
    block[1].bias.data.normal_()
    block[1].running_mean.normal_()
    block[1].running_var.uniform_(0.5, 2)
    block.eval()
    x = torch.randn(2, 3, 4, 4)
    expected = block(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(block)
    assert converted is block and isinstance(block[1], FrozenBatchNorm2d)
    assert torch.allclose(block(x), expected, atol=1e-6)
    single = FrozenBatchNorm2d.convert_frozen_batchnorm(nn.BatchNorm2d(4))
    assert isinstance(single, FrozenBatchNorm2d)


def test_frozen_bn_loads_old_and_batchnorm_state_dicts():
    bn = FrozenBatchNorm2d(2)
    # A checkpoint without running statistics (no version metadata): identity statistics.
    bn.load_state_dict({"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, 0.0])})
    assert torch.equal(bn.running_mean, torch.zeros(2))
    assert torch.equal(bn.running_var, torch.ones(2))
    # A version-2 checkpoint stored running_var used without eps: eps is subtracted.
    old = OrderedDict(
        weight=torch.ones(2),
        bias=torch.zeros(2),
        running_mean=torch.zeros(2),
        running_var=torch.ones(2),
    )
    old._metadata = OrderedDict({"": {"version": 2}})
    bn.load_state_dict(old)
    assert torch.allclose(bn.running_var, torch.full((2,), 1 - 1e-5))
    # A BatchNorm2d state dict loads (num_batches_tracked is ignored).
    result = bn.load_state_dict(nn.BatchNorm2d(2).state_dict())
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize(
    "name, cls",
    [("BN", nn.BatchNorm2d), ("SyncBN", nn.SyncBatchNorm), ("FrozenBN", FrozenBatchNorm2d)],
)
def test_get_norm_types(name, cls):
    norm = get_norm(name, 64)
    assert isinstance(norm, cls) and norm.num_features == 64


def test_get_norm_gn_none_callable_and_errors():
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32 and gn.num_channels == 64
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert isinstance(get_norm(lambda c: nn.LayerNorm(c), 8), nn.LayerNorm)
    with pytest.raises(ValueError, match="unknown norm 'LN'.*FrozenBN"):
        get_norm("LN", 8)
    with pytest.raises(ValueError, match="multiple of 32, got 48"):
        get_norm("GN", 48)


def test_deform_conv_with_zero_offset_equals_conv():
    conv = DeformConv(8, 8, 3, padding=1, groups=2, deformable_groups=2, norm=nn.GroupNorm(2, 8))
    x = torch.randn(2, 8, 6, 7)
    offset = torch.zeros(2, 2 * 2 * 9, 6, 7)
    expected = conv.norm(F.conv2d(x, conv.weight, padding=1, groups=2))
    assert torch.allclose(conv(x, offset), expected, atol=1e-5)
    assert list(conv.state_dict()) == ["weight", "norm.weight", "norm.bias"]


def test_deform_conv_shifts_by_offset():
    conv = DeformConv(1, 1, 1, bias=False)
    conv.weight.data.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    offset = torch.zeros(1, 2, 4, 4)
    offset[:, 1] = 1.0  # dx = +1: every output reads its right neighbour (0 past the border)
    out = conv(x, offset)
    assert torch.equal(out[0, 0, :, :3], x[0, 0, :, 1:])
    assert torch.equal(out[0, 0, :, 3], torch.zeros(4))


def test_modulated_deform_conv_mask_scales_output():
    conv = ModulatedDeformConv(4, 6, 3, stride=2, padding=1)
    assert torch.equal(conv.bias, torch.zeros(6))
    x = torch.randn(1, 4, 8, 8)
    offset = torch.zeros(1, 18, 4, 4)
    plain = F.conv2d(x, conv.weight, stride=2, padding=1)
    assert torch.allclose(conv(x, offset, torch.ones(1, 9, 4, 4)), plain, atol=1e-5)
    assert torch.allclose(conv(x, offset, torch.full((1, 9, 4, 4), 0.5)), plain / 2, atol=1e-5)
    empty = conv(x[:0], offset[:0], torch.ones(0, 9, 4, 4))
    assert empty.shape == (0, 6, 4, 4)


def test_c2_fills():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    c2_xavier_fill(conv)
    bound = math.sqrt(3 / (64 * 9))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.equal(conv.bias, torch.zeros(128))
    c2_msra_fill(conv)
    assert abs(conv.weight.std().item() - math.sqrt(2 / (128 * 9))) < 0.002
    assert torch.equal(conv.bias, torch.zeros(128))
