"""CenterNet head, proposal generator and CenterNet* detector: names, init, outputs, training."""

from __future__ import annotations

import math

import pytest
import torch

from assigndet.config import get_cfg
from assigndet.layers import ShapeSpec
from assigndet.modeling import build_backbone, build_model
from assigndet.modeling.proposal_generator import build_proposal_generator
from assigndet.projects.centernet2.centernet import CenterNet, decode_level, nms_and_topk
from assigndet.projects.centernet2.centernet_head import CenterNetHead
from assigndet.structures import ImageList
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

PRIOR_BIAS = -math.log(99)
LEVELS = ["p3", "p4", "p5", "p6", "p7"]


def _shapes(channels: int) -> dict[str, ShapeSpec]:
    return {f"p{k}": ShapeSpec(channels=channels, stride=2**k) for k in range(3, 8)}


def _centernet2_cfg():
    """The first-stage keys of Base-CenterNet2.yaml."""
    cfg = get_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    cfg.merge_from_list(
        ["MODEL.CENTERNET.REG_WEIGHT", 1.0, "MODEL.CENTERNET.ONLY_PROPOSAL", True,
         "MODEL.CENTERNET.WITH_AGN_HM", True, "MODEL.CENTERNET.INFERENCE_TH", 0.0001,
         "MODEL.CENTERNET.PRE_NMS_TOPK_TRAIN", 4000, "MODEL.CENTERNET.POST_NMS_TOPK_TRAIN", 2000,
         "MODEL.CENTERNET.POST_NMS_TOPK_TEST", 256, "MODEL.CENTERNET.NMS_TH_TRAIN", 0.9,
         "MODEL.CENTERNET.NMS_TH_TEST", 0.9, "MODEL.CENTERNET.POS_WEIGHT", 0.5,
         "MODEL.CENTERNET.NEG_WEIGHT", 0.5, "MODEL.CENTERNET.IGNORE_HIGH_FP", 0.85]
    )  # fmt: skip
    return cfg


def _expected_head_keys(tower_names: list[str], outputs: dict[str, int]) -> dict[str, tuple]:
    keys = {}
    for tower in tower_names:
        for i in (0, 3, 6, 9):
            keys[f"{tower}.{i}.weight"] = (256, 256, 3, 3)
            keys[f"{tower}.{i}.bias"] = (256,)
        for i in (1, 4, 7, 10):
            keys[f"{tower}.{i}.weight"] = (256,)
            keys[f"{tower}.{i}.bias"] = (256,)
    for name, out in outputs.items():
        keys[f"{name}.weight"] = (out, 256, 3, 3)
        keys[f"{name}.bias"] = (out,)
    for level in range(5):
        keys[f"scales.{level}.scale"] = (1,)
    return {f"centernet_head.{k}": v for k, v in keys.items()}


def test_centernet2_first_stage_state_dict_is_official():
    pg = build_proposal_generator(_centernet2_cfg(), _shapes(256))
    assert isinstance(pg, CenterNet)
    got = {k: tuple(v.shape) for k, v in pg.state_dict().items()}
    assert got == _expected_head_keys(["bbox_tower"], {"bbox_pred": 4, "agn_hm": 1})


def test_centernet_star_head_state_dict_is_official():
    cfg = get_cfg()  # CenterNet-FPN_R50_1x uses the head defaults
    pg = CenterNet(cfg, _shapes(256))
    got = {k: tuple(v.shape) for k, v in pg.state_dict().items()}
    expected = _expected_head_keys(["cls_tower", "bbox_tower"], {"bbox_pred": 4, "cls_logits": 80})
    assert got == expected


def test_head_init():
    head = CenterNet(_centernet2_cfg(), _shapes(256)).centernet_head
    assert (head.bbox_pred.bias == 8.0).all()
    assert head.agn_hm.bias.item() == pytest.approx(PRIOR_BIAS)
    for conv in (head.bbox_tower[0], head.bbox_tower[9], head.bbox_pred, head.agn_hm):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert (head.bbox_tower[3].bias == 0).all()
    assert (
        isinstance(head.bbox_tower[1], torch.nn.GroupNorm) and head.bbox_tower[1].num_groups == 32
    )
    assert all(s.scale.item() == 1.0 for s in head.scales)
    star = CenterNetHead(in_channels=50, num_levels=2, num_classes=3, num_cls_convs=1)
    assert star.cls_logits.bias.tolist() == pytest.approx([PRIOR_BIAS] * 3)
    assert star.cls_tower[1].num_groups == 25  # GN on channels that 32 does not divide
    assert not hasattr(star, "agn_hm")


def test_head_outputs_relu_of_scaled_regression():
    torch.manual_seed(0)
    head = CenterNetHead(
        in_channels=32, num_levels=2, num_classes=3, with_agn_hm=True, num_cls_convs=1,
        num_box_convs=1,
    )  # fmt: skip
    torch.nn.init.zeros_(head.bbox_pred.weight)
    head.scales[1].scale.data.fill_(-1.0)
    feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    cls, reg, agn = head(feats)
    assert [c.shape for c in cls] == [(2, 3, 8, 8), (2, 3, 4, 4)]
    assert [a.shape for a in agn] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    assert (reg[0] == 8.0).all() and (reg[1] == 0.0).all()  # ReLU(-1 * 8)
    only = CenterNetHead(in_channels=32, num_levels=2, with_agn_hm=True, only_proposal=True)
    cls, _, agn = only(feats)
    assert cls == [None, None] and agn[0].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="WITH_AGN_HM"):
        CenterNetHead(in_channels=32, num_levels=2, only_proposal=True)


def test_decode_level_threshold_topk_sqrt_and_min_size():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    heatmap = torch.tensor([[0.04, 0.5], [0.81, 0.3]])
    box_reg = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    boxes, scores, classes = decode_level(points, heatmap, box_reg, None, 0.2, 2, True)
    order = scores.argsort(descending=True)
    assert scores[order].tolist() == pytest.approx([0.9, math.sqrt(0.5)])
    assert classes[order].tolist() == [0, 1]
    assert boxes[order].tolist() == [pytest.approx([12, 4, 12.01, 4.01]), [3, 2, 7, 8]]
    # the agnostic factor multiplies the score but not the threshold test
    agn = torch.tensor([0.5, 0.1])
    _, scores, classes = decode_level(points, heatmap, box_reg, agn, 0.2, 10, False)
    assert sorted(scores.tolist()) == pytest.approx([0.03, 0.081, 0.25])


def test_nms_and_topk_keeps_ties():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10],
                          [80, 0, 90, 10], [0, 0, 10, 9.5]], dtype=torch.float32)  # fmt: skip
    scores = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1, 0.8])
    classes = torch.zeros(6, dtype=torch.long)
    keep = nms_and_topk(boxes, scores, classes, 0.9, 2)
    assert sorted(keep.tolist()) == [0, 1, 2, 3]  # box 5 suppressed; three 0.5 ties kept
    keep = nms_and_topk(boxes, scores, torch.tensor([0, 0, 0, 0, 0, 1]), 0.9, 10)
    assert sorted(keep.tolist()) == [0, 1, 2, 3, 4, 5]  # another class is not suppressed
    assert sorted(nms_and_topk(boxes, scores, classes, 0.0, 3).tolist()) == [0, 1, 2, 3, 5]


def _proposal_generator(agn_prob: float = 0.25):
    cfg = _centernet2_cfg()
    cfg.MODEL.CENTERNET.NUM_BOX_CONVS = 1
    cfg.MODEL.CENTERNET.PRE_NMS_TOPK_TRAIN = 30
    cfg.MODEL.CENTERNET.POST_NMS_TOPK_TRAIN = 20
    cfg.MODEL.CENTERNET.PRE_NMS_TOPK_TEST = 10
    cfg.MODEL.CENTERNET.POST_NMS_TOPK_TEST = 8
    pg = build_proposal_generator(cfg, _shapes(64))
    torch.nn.init.zeros_(pg.centernet_head.agn_hm.weight)
    torch.nn.init.constant_(pg.centernet_head.agn_hm.bias, math.log(agn_prob / (1 - agn_prob)))
    return pg


def _features():
    return {f"p{k}": torch.randn(2, 64, 128 // 2**k, 128 // 2**k) for k in range(3, 8)}


def test_proposals_scores_fields_and_ties():
    pg = _proposal_generator(0.25)
    images = ImageList(torch.zeros(2, 3, 128, 128), [(120, 100), (128, 128)])
    gt = random_detection_batch([(120, 100), (128, 128)], [[[4, 6, 40, 30]], []], [[0], []])
    pg.train()
    proposals, losses = pg(images, _features(), [x["instances"] for x in gt])
    assert set(losses) == {"loss_centernet_agn_pos", "loss_centernet_agn_neg", "loss_centernet_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    for p, size in zip(proposals, images.image_sizes):
        assert p.image_size == size
        assert set(p.get_fields()) == {"proposal_boxes", "objectness_logits"}
        # every score ties at sqrt(0.25): the post-NMS cut keeps them all, up to 30 per level
        assert (p.objectness_logits == 0.5).all() and 20 < len(p) <= 30 + 30 + 16 + 4 + 1
        assert not p.proposal_boxes.requires_grad
    pg.eval()
    proposals, losses = pg(images, _features(), None)
    assert losses == {}
    for p in proposals:
        assert set(p.get_fields()) == {"proposal_boxes", "objectness_logits", "scores",
                                       "pred_classes"}  # fmt: skip
        assert torch.equal(p.scores, p.objectness_logits) and (p.pred_classes == 0).all()
        boxes = p.proposal_boxes
        assert (boxes[:, 2] >= boxes[:, 0] + 0.01).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes.min() < 0  # 8 strides each side at init: not clipped to the image


def test_proposals_below_threshold_and_sqrt_score():
    pg = _proposal_generator(5e-5)  # below INFERENCE_TH 1e-4: no candidate
    pg.eval()
    images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    feats = {k: v[:1] for k, v in _features().items()}
    assert len(pg(images, feats, None)[0][0]) == 0
    torch.nn.init.constant_(pg.centernet_head.agn_hm.bias, math.log(0.36 / 0.64))
    assert pg(images, feats, None)[0][0].scores[0].item() == pytest.approx(0.6)


def test_unimplemented_and_inconsistent_keys_raise():
    cfg = _centernet2_cfg()
    cfg.MODEL.CENTERNET.USE_DEFORMABLE = True
    with pytest.raises(NotImplementedError, match="USE_DEFORMABLE"):
        build_proposal_generator(cfg, _shapes(32))
    cfg = _centernet2_cfg()
    cfg.MODEL.CENTERNET.AS_PROPOSAL = True
    with pytest.raises(NotImplementedError, match="AS_PROPOSAL"):
        build_proposal_generator(cfg, _shapes(32))
    cfg = _centernet2_cfg()
    cfg.MODEL.CENTERNET.FPN_STRIDES = [8, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_proposal_generator(cfg, _shapes(32))
    cfg = _centernet2_cfg()
    cfg.MODEL.CENTERNET.WITH_AGN_HM = False
    with pytest.raises(ValueError, match="WITH_AGN_HM"):
        build_proposal_generator(cfg, _shapes(32))


def test_p67_backbone_r50_names_and_padding():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_p67_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    backbone = build_backbone(cfg)
    assert backbone.size_divisibility == 32
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        f"p{k}": (256, 2**k) for k in range(3, 8)
    }
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    for k, c in ((3, 512), (4, 1024), (5, 2048)):
        assert shapes[f"fpn_lateral{k}.weight"] == (256, c, 1, 1)
        assert shapes[f"fpn_output{k}.bias"] == (256,)
    for k in ("p6", "p7"):
        assert shapes[f"top_block.{k}.weight"] == (256, 256, 3, 3)
    assert backbone.top_block.in_feature == "p5"
    assert shapes["bottom_up.res5.2.conv3.weight"] == (2048, 512, 1, 1)


def _tiny_centernet_star_cfg():
    cfg = tiny_dense_detector_cfg("CenterNetDetector", num_classes=3, top_levels=2)
    cfg.MODEL.BACKBONE.NAME = "build_p67_resnet_fpn_backbone"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    cfg.merge_from_list(
        ["MODEL.CENTERNET.NUM_CLASSES", 3, "MODEL.CENTERNET.NUM_CLS_CONVS", 1,
         "MODEL.CENTERNET.NUM_BOX_CONVS", 1, "MODEL.CENTERNET.MORE_POS", True]
    )  # fmt: skip
    return cfg


def test_tiny_centernet_star_trains_and_detects():
    torch.manual_seed(0)
    model = build_model(_tiny_centernet_star_cfg())
    assert {"pixel_mean", "pixel_std"} <= set(model.state_dict())
    assert "proposal_generator.centernet_head.cls_logits.weight" in model.state_dict()
    batch = random_detection_batch(
        [(64, 96), (64, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]],
        [[0, 2], [1]],
        output_scale=2.0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    first = None
    for _ in range(3):
        losses = model(batch)
        assert set(losses) == {"loss_centernet_pos", "loss_centernet_neg", "loss_centernet_loc"}
        assert all(torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        first = total.item() if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < first

    model.eval()
    model.proposal_generator.score_thresh = 0.0  # keep candidates of the untrained model
    outputs = model(batch)
    for out, x in zip(outputs, batch):
        inst = out["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= 100 and inst.pred_classes.dtype == torch.int64
        assert inst.pred_classes.max() < 3 and (inst.scores <= 1).all()
        assert inst.pred_boxes[:, 2].max() <= x["width"] and inst.pred_boxes.min() >= 0


def test_centernet_detector_rejects_proposal_only_config():
    cfg = _tiny_centernet_star_cfg()
    cfg.MODEL.CENTERNET.ONLY_PROPOSAL = True
    cfg.MODEL.CENTERNET.WITH_AGN_HM = True
    with pytest.raises(ValueError, match="ONLY_PROPOSAL"):
        build_model(cfg)
