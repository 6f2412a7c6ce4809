import math

import pytest
import torch

from assigndet.modeling.heads.fcos_head import FCOSHead


def _features(channels=32):
    return [torch.randn(2, channels, 8 // 2**i, 10 // 2**i) for i in range(3)]


def test_shapes_init_and_module_names():
    head = FCOSHead(in_channels=32, num_classes=4, num_levels=3, num_cls_convs=2, num_box_convs=2)
    cls_logits, box_reg, ctr_logits, box_features = head(_features())
    for level, (h, w) in enumerate([(8, 10), (4, 5), (2, 2)]):
        assert cls_logits[level].shape == (2, 4, h, w)
        assert box_reg[level].shape == (2, 4, h, w)
        assert ctr_logits[level].shape == (2, 1, h, w)
        assert box_features[level].shape == (2, 32, h, w)
        assert (box_reg[level] >= 0).all()  # ReLU(scale * x) with normalised targets
    assert torch.allclose(head.cls_logits.bias, torch.full((4,), -math.log(99.0)))
    assert head.bbox_pred.bias.abs().sum() == 0
    assert head.cls_tower[0].weight.std().item() == pytest.approx(0.01, rel=0.1)
    names = set(head.state_dict())
    expected = {"cls_tower.0.weight", "cls_tower.1.weight", "bbox_tower.3.weight", "scales.2.scale"}
    assert expected | {"cls_logits.weight", "bbox_pred.weight", "ctrness.weight"} <= names


def test_scales_multiply_the_box_output():
    torch.manual_seed(0)
    head = FCOSHead(in_channels=32, num_classes=2, num_levels=3, num_cls_convs=1, num_box_convs=1)
    features = _features()
    before = head(features)[1]
    with torch.no_grad():
        head.scales[1].scale.fill_(3.0)
    after = head(features)[1]
    assert torch.allclose(after[0], before[0])
    assert torch.allclose(after[1], 3 * before[1])


def test_unnormalised_targets_use_exp_and_no_scale():
    head = FCOSHead(
        in_channels=32, num_classes=2, num_levels=3, use_scale=False, norm_reg_targets=False
    )
    assert head.scales is None
    box_reg = head(_features())[1]
    assert all((r > 0).all() for r in box_reg)


def test_centerness_branch_placement():
    torch.manual_seed(0)
    on_reg = FCOSHead(in_channels=32, num_classes=2, num_levels=3, centerness_on_reg=True)
    torch.manual_seed(0)
    on_cls = FCOSHead(in_channels=32, num_classes=2, num_levels=3, centerness_on_reg=False)
    features = _features()
    on_reg(features)[2][0].sum().backward()
    on_cls(features)[2][0].sum().backward()
    assert on_reg.cls_tower[0].weight.grad is None and on_reg.bbox_tower[0].weight.grad is not None
    assert on_cls.bbox_tower[0].weight.grad is None and on_cls.cls_tower[0].weight.grad is not None


def test_share_tower_and_no_norm():
    head = FCOSHead(in_channels=32, num_classes=2, num_levels=3, num_share_convs=1, norm="")
    assert len(head.share_tower) == 2  # conv + ReLU
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())


def test_errors():
    with pytest.raises(ValueError, match="PRIOR_PROB"):
        FCOSHead(in_channels=32, num_classes=2, num_levels=3, prior_prob=1.0)
    head = FCOSHead(in_channels=32, num_classes=2, num_levels=2)
    with pytest.raises(ValueError, match="built for 2 levels; got 3"):
        head(_features())
