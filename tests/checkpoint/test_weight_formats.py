"""Loading Caffe2-named .pkl, detectron2 model-zoo .pkl and torchvision ResNet weights."""

import logging
import pickle

import numpy as np
import pytest
import torch
import torchvision

from assigndet.checkpoint import (
    DetectionCheckpointer,
    align_and_update_state_dicts,
    convert_c2_detectron_names,
    convert_torchvision_resnet,
)
from assigndet.modeling import build_backbone

_C2_NORM = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_C2_BRANCH = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}


def _c2_name(key: str) -> str:
    """detectron2 name -> Caffe2 blob name, following the MSRA ImageNet model naming."""
    if key == "stem.conv1.weight":
        return "conv1_w"
    if key.startswith("stem.conv1.norm."):
        return "res_conv1_bn_" + _C2_NORM[key.rsplit(".", 1)[1]]
    stage, block, conv, *rest = key.split(".")
    prefix = f"{stage}_{block}_{_C2_BRANCH[conv]}"
    return prefix + "_w" if rest == ["weight"] else prefix + "_bn_" + _C2_NORM[rest[1]]


def _c2_blobs(model) -> dict:
    blobs = {_c2_name(k): v.numpy().copy() for k, v in model.state_dict().items()}
    blobs["fc1000_w"] = np.zeros((1000, 256), np.float32)
    blobs["fc1000_b"] = np.zeros((1000,), np.float32)
    # Solver state stored next to the weights; never loaded.
    blobs["conv1_w_momentum"] = np.ones_like(blobs["conv1_w"])
    blobs["res2_0_branch2a_w_momentum"] = np.ones_like(blobs["res2_0_branch2a_w"])
    return blobs


def _fpn_cfg(cfg):
    """An FPN on the (narrow) ResNet of ``cfg``, with detectron2's default FREEZE_AT 2."""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


@pytest.mark.parametrize("layout", ["blobs", "flat"])
def test_caffe2_pkl_loads_into_r50(tmp_path, make_resnet, layout, caplog):
    source = make_resnet()
    blobs = _c2_blobs(source)
    assert "res2_0_branch2a_w" in blobs and "res_conv1_bn_s" in blobs
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": blobs} if layout == "blobs" else blobs, f, protocol=2)

    target = make_resnet()
    ckpt = DetectionCheckpointer(target)
    with caplog.at_level(logging.INFO, logger="assigndet.checkpoint"):
        ckpt.load(str(tmp_path / "R-50.pkl"))
    assert "Renaming Caffe2 weights" in caplog.text
    assert ckpt.incompatible_keys.missing_keys == []
    assert ckpt.incompatible_keys.unexpected_keys == ["fc1000.bias", "fc1000.weight"]
    assert ckpt.incompatible_keys.incorrect_shapes == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = source(x), target(x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_caffe2_pkl_matches_into_fpn_by_suffix(tmp_path, make_resnet, make_cfg):
    source = make_resnet()
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": _c2_blobs(source)}, f, protocol=2)
    model = build_backbone(_fpn_cfg(make_cfg())).eval()
    ckpt = DetectionCheckpointer(model)
    ckpt.load(str(tmp_path / "R-50.pkl"))
    missing = ckpt.incompatible_keys.missing_keys
    assert missing and all(k.startswith("fpn_") for k in missing)
    assert len(missing) == 16  # fpn_lateral2..5 and fpn_output2..5, weight and bias
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = source(x), model.bottom_up(x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_detectron2_zoo_pkl_loads_exactly(tmp_path, make_resnet):
    source = make_resnet()
    data = {
        "model": {k: v.numpy() for k, v in source.state_dict().items()},
        "__author__": "Detectron2 Model Zoo",
    }
    with open(tmp_path / "model_final_abc.pkl", "wb") as f:
        pickle.dump(data, f)
    target = make_resnet()
    ckpt = DetectionCheckpointer(target)
    extra = ckpt.load(str(tmp_path / "model_final_abc.pkl"))
    assert extra == {"__author__": "Detectron2 Model Zoo"}
    assert not ckpt.incompatible_keys
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x)["res5"], target(x)["res5"])


def test_torchvision_state_dict_loads_into_r50(tmp_path, make_resnet, randomize):
    tv = torchvision.models.resnet50(weights=None)
    randomize(tv)
    tv.eval()
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")

    target = make_resnet(narrow=False, STRIDE_IN_1X1=False)
    ckpt = DetectionCheckpointer(target)
    extra = ckpt.load(str(tmp_path / "resnet50.pth"))
    assert extra["__author__"] == "torchvision"
    assert ckpt.incompatible_keys.missing_keys == []
    assert ckpt.incompatible_keys.unexpected_keys == []
    assert ckpt.incompatible_keys.incorrect_shapes == []

    direct = make_resnet(narrow=False, STRIDE_IN_1X1=False)
    result = direct.load_state_dict(convert_torchvision_resnet(tv.state_dict()), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = target(x)
        assert all(torch.equal(got[k], v) for k, v in direct(x).items())
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for stage, layer in zip(
            ["res2", "res3", "res4", "res5"], [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
        ):
            h = layer(h)
            assert torch.allclose(got[stage], h, rtol=1e-4, atol=1e-4), stage


def test_torchvision_renames():
    names = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv2.weight": "res2.0.conv2.weight",
        "layer1.0.bn3.bias": "res2.0.conv3.norm.bias",
        "layer4.0.downsample.0.weight": "res5.0.shortcut.weight",
        "layer4.0.downsample.1.weight": "res5.0.shortcut.norm.weight",
    }
    tensors = {k: torch.tensor([float(i)]) for i, k in enumerate(names)}
    tensors["fc.weight"] = torch.zeros(1)
    tensors["bn1.num_batches_tracked"] = torch.tensor(0)
    converted = convert_torchvision_resnet(tensors)
    assert sorted(converted) == sorted(names.values())
    assert all(converted[new] is tensors[old] for old, new in names.items())


def test_caffe2_detection_renames_and_class_layout():
    blobs = {
        "conv1_w": torch.zeros(1),
        "res_conv1_bn_s": torch.zeros(1),
        "res2_0_branch2a_bn_riv": torch.zeros(1),
        "res3_1_branch1_w": torch.zeros(1),
        "fpn_inner_res3_2_sum_lateral_w": torch.zeros(1),
        "fpn_inner_res5_2_sum_b": torch.zeros(1),
        "fpn_res4_5_sum_w": torch.zeros(1),
        "conv_rpn_fpn2_w": torch.zeros(1),
        "rpn_cls_logits_fpn2_b": torch.zeros(1),
        "rpn_bbox_pred_fpn2_w": torch.zeros(1),
        "fc6_w": torch.zeros(1),
        "fc7_b": torch.zeros(1),
        "cls_score_w": torch.arange(3.0).view(3, 1),
        "bbox_pred_b": torch.arange(12.0),
    }
    renamed, original = convert_c2_detectron_names(blobs)
    assert sorted(renamed) == sorted(
        [
            "stem.conv1.weight",
            "stem.conv1.norm.weight",
            "res2.0.conv1.norm.running_var",
            "res3.1.shortcut.weight",
            "fpn_lateral3.weight",
            "fpn_lateral5.bias",
            "fpn_output4.weight",
            "proposal_generator.rpn_head.conv.weight",
            "proposal_generator.rpn_head.objectness_logits.bias",
            "proposal_generator.rpn_head.anchor_deltas.weight",
            "box_head.fc1.weight",
            "box_head.fc2.bias",
            "cls_score.weight",
            "bbox_pred.bias",
        ]
    )
    assert original["fpn_output4.weight"] == "fpn_res4_5_sum_w"
    # Background moves from the first class to the last; its box deltas are dropped.
    assert renamed["cls_score.weight"].flatten().tolist() == [1.0, 2.0, 0.0]
    assert renamed["bbox_pred.bias"].tolist() == list(range(4, 12))


def test_heuristics_longest_suffix_shape_mismatch_and_ambiguity(caplog):
    model = {
        "backbone.res2.0.conv1.weight": torch.zeros(4, 2),
        "head.conv1.weight": torch.zeros(4, 2),
        "head.cls.weight": torch.zeros(3),
    }
    ckpt = {
        "res2.0.conv1.weight": torch.ones(4, 2),
        "head.conv1.weight": torch.full((4, 2), 2.0),
        "cls.weight": torch.ones(5),
        "unrelated": torch.ones(1),
    }
    with caplog.at_level(logging.WARNING):
        aligned, mismatches = align_and_update_state_dicts(model, ckpt)
    assert torch.equal(aligned["backbone.res2.0.conv1.weight"], torch.ones(4, 2))
    assert torch.equal(aligned["head.conv1.weight"], torch.full((4, 2), 2.0))
    assert mismatches == [("head.cls.weight", (5,), (3,))]
    assert "cls.weight" not in aligned and "head.cls.weight" not in aligned
    assert "unrelated" in aligned
    assert "Shape of cls.weight in checkpoint is (5,)" in caplog.text

    with pytest.raises(ValueError, match="ambiguous checkpoint key 'conv1.weight'"):
        align_and_update_state_dicts(model, {"conv1.weight": torch.zeros(4, 2)})


def test_pth_query_turns_heuristics_on(tmp_path, make_resnet, make_cfg):
    source = make_resnet()
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = build_backbone(_fpn_cfg(make_cfg())).eval()
    ckpt = DetectionCheckpointer(model)
    ckpt.load(str(tmp_path / "backbone.pth"))
    assert len(ckpt.incompatible_keys.unexpected_keys) == len(source.state_dict())
    ckpt.load(str(tmp_path / "backbone.pth") + "?matching_heuristics=True")
    assert ckpt.incompatible_keys.unexpected_keys == []
    assert all(k.startswith("fpn_") for k in ckpt.incompatible_keys.missing_keys)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.bottom_up(x)["res4"], source(x)["res4"])
