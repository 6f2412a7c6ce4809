"""R-CNN RoI heads: box head, Fast R-CNN predictor (losses, inference) and proposal sampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from assigndet.config import get_cfg
from assigndet.layers import ShapeSpec
from assigndet.modeling.box_regression import Box2BoxTransform
from assigndet.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_box_head,
    build_roi_heads,
    fast_rcnn_inference,
)
from assigndet.structures import ImageList, Instances
from assigndet.utils.events import EventStorage

SHAPES = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}


def _cfg():
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 8
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    return cfg


# ---- box head ------------------------------------------------------------------------------


def test_conv_fc_head_children_keys_and_shapes():
    head = FastRCNNConvFCHead(
        ShapeSpec(channels=8, height=4, width=4), conv_dims=[6], fc_dims=[16, 12]
    )
    names = [name for name, _ in head.named_children()]
    assert names == ["conv1", "flatten", "fc1", "fc_relu1", "fc2", "fc_relu2"]
    assert list(head.state_dict()) == [
        "conv1.weight",
        "conv1.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    assert head.fc1.weight.shape == (16, 6 * 4 * 4)
    assert head.output_shape == ShapeSpec(channels=12)
    assert all(not b.detach().any() for b in (head.conv1.bias, head.fc1.bias, head.fc2.bias))
    out = head(torch.randn(5, 8, 4, 4))
    assert out.shape == (5, 12) and (out >= 0).all()

    conv_only = FastRCNNConvFCHead(
        ShapeSpec(channels=8, height=4, width=4), conv_dims=[6, 6], fc_dims=[], conv_norm="BN"
    )
    assert conv_only.output_shape == ShapeSpec(channels=6, height=4, width=4)
    assert (
        "conv1.norm.weight" in conv_only.state_dict() and "conv1.bias" not in conv_only.state_dict()
    )
    with pytest.raises(ValueError, match="NUM_CONV / NUM_FC"):
        FastRCNNConvFCHead(ShapeSpec(channels=8, height=4, width=4), conv_dims=[], fc_dims=[])


def test_build_box_head_from_config_and_errors():
    cfg = _cfg()
    head = build_box_head(cfg, ShapeSpec(channels=8, height=4, width=4))
    assert head.fc1.weight.shape == (16, 128) and head.output_shape.channels == 16
    cfg.MODEL.ROI_BOX_HEAD.NAME = ""
    with pytest.raises(KeyError, match="MODEL.ROI_BOX_HEAD.NAME = ''.*FastRCNNConvFCHead"):
        build_box_head(cfg, ShapeSpec(channels=8, height=4, width=4))


# ---- predictor -----------------------------------------------------------------------------


def _predictor(num_classes=2, agnostic=False, weights=(1.0, 1.0, 1.0, 1.0), **kwargs):
    return FastRCNNOutputLayers(
        4,
        box2box_transform=Box2BoxTransform(weights),
        num_classes=num_classes,
        cls_agnostic_bbox_reg=agnostic,
        **kwargs,
    )


def test_predictor_layers_and_init():
    shape = ShapeSpec(channels=1024)
    p = FastRCNNOutputLayers(
        shape, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=80
    )
    assert p.cls_score.weight.shape == (81, 1024) and p.bbox_pred.weight.shape == (320, 1024)
    assert abs(float(p.cls_score.weight.detach().std()) - 0.01) < 0.001
    assert abs(float(p.bbox_pred.weight.detach().std()) - 0.001) < 0.0001
    assert not p.cls_score.bias.detach().any() and not p.bbox_pred.bias.detach().any()
    agnostic = FastRCNNOutputLayers(
        ShapeSpec(channels=8, height=2, width=2),
        box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        num_classes=80,
        cls_agnostic_bbox_reg=True,
    )
    assert agnostic.bbox_pred.weight.shape == (4, 32)
    scores, deltas = agnostic(torch.randn(3, 8, 2, 2))
    assert scores.shape == (3, 81) and deltas.shape == (3, 4)
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE"):
        _predictor(box_reg_loss_type="l2")


def _loss_proposals():
    return [
        Instances(
            (50, 50),
            proposal_boxes=torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]),
            gt_classes=torch.tensor([0, 1, 2]),  # the last is background (K = 2)
            gt_boxes=torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 1, 1]]),
        )
    ]


def _loss_predictions():
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
    deltas = torch.zeros(3, 8)
    deltas[0, 0:4] = torch.tensor([0.0, 0.2, 0.0, 0.0])  # class 0 of RoI 0 (target 0)
    deltas[1, 4:8] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 1 of RoI 1 (target dx 0.1)
    deltas[2] = 7.0  # background RoI: never in the box loss
    return scores, deltas


def test_losses_l1_and_smooth_l1_by_hand():
    losses = _predictor().losses(_loss_predictions(), _loss_proposals())
    expected_cls = F.cross_entropy(_loss_predictions()[0], torch.tensor([0, 1, 2]))
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    # L1: |0.2| + |0.5 - 0.1|, divided by all 3 RoIs.
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.6 / 3))

    smooth = _predictor(smooth_l1_beta=0.5, loss_weight={"loss_box_reg": 2.0})
    losses = smooth.losses(_loss_predictions(), _loss_proposals())
    # 0.5 * d^2 / beta for d = 0.2 and 0.4, times the weight 2.
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(2 * (0.04 + 0.16) / 3))
    torch.testing.assert_close(losses["loss_cls"], expected_cls)


def test_losses_giou_class_agnostic():
    p = _predictor(agnostic=True, box_reg_loss_type="giou")
    proposals = [
        Instances(
            (50, 50),
            proposal_boxes=torch.tensor([[0.0, 0, 10, 10], [0, 0, 5, 5]]),
            gt_classes=torch.tensor([1, 2]),
            gt_boxes=torch.tensor([[0.0, 0, 10, 20], [0, 0, 0, 0]]),
        )
    ]
    losses = p.losses((torch.zeros(2, 3), torch.zeros(2, 4)), proposals)
    # IoU 0.5 and the enclosing box is the union: 1 - GIoU = 0.5, over 2 RoIs.
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.25))


def test_losses_with_no_foreground_and_no_rois_are_zero_with_grad():
    p = _predictor()
    proposals = [
        Instances(
            (10, 10), proposal_boxes=torch.tensor([[0.0, 0, 5, 5]]), gt_classes=torch.tensor([2])
        )
    ]
    x = torch.randn(1, 4, requires_grad=True)
    losses = p.losses(p(x), proposals)
    assert losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()
    assert x.grad is not None
    empty = [
        Instances(
            (10, 10), proposal_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.int64)
        )
    ]
    losses = p.losses(p(torch.randn(0, 4)), empty)
    assert losses["loss_cls"].item() == 0 and losses["loss_box_reg"].item() == 0


def test_predict_boxes_and_probs_split_per_image():
    p = _predictor(num_classes=2, weights=(10, 10, 5, 5))
    proposals = [
        Instances((20, 20), proposal_boxes=torch.tensor([[0.0, 0, 10, 10]])),
        Instances((20, 20), proposal_boxes=torch.tensor([[1.0, 1, 5, 5], [2.0, 2, 8, 8]])),
    ]
    predictions = (torch.randn(3, 3), torch.zeros(3, 8))
    boxes = p.predict_boxes(predictions, proposals)
    assert [b.shape for b in boxes] == [(1, 8), (2, 8)]
    torch.testing.assert_close(boxes[1][:, 4:], proposals[1].proposal_boxes)
    probs = p.predict_probs(predictions, proposals)
    torch.testing.assert_close(torch.cat(probs), predictions[0].softmax(-1))


# ---- fast_rcnn_inference -------------------------------------------------------------------


def _inference_inputs():
    boxes = torch.tensor(
        [
            [10.0, 10, 50, 50, 10, 10, 50, 50],
            [12.0, 12, 52, 52, 60, 60, 90, 90],
            [0.0, 0, 30, 30, 0, 0, 30, 30],
            [-10.0, -5, 120, 130, 5, 5, 6, 6],
        ]
    )
    scores = torch.tensor(
        [
            [0.7, 0.25, 0.05],
            [0.6, 0.3, 0.1],
            [0.01, 0.02, 0.97],  # background wins: no detection
            [0.2, 0.01, 0.79],
        ]
    )
    return boxes, scores


def test_fast_rcnn_inference_threshold_nms_topk():
    boxes, scores = _inference_inputs()
    (result,), (kept,) = fast_rcnn_inference([boxes], [scores], [(100, 100)], 0.04, 0.5, 100)
    # Class 0: RoI 1 overlaps RoI 0 (IoU 0.82) and is suppressed; class 1 keeps both.
    torch.testing.assert_close(result.scores, torch.tensor([0.7, 0.3, 0.25, 0.2]))
    assert result.pred_classes.tolist() == [0, 1, 1, 0]
    assert kept.tolist() == [0, 1, 0, 3]
    torch.testing.assert_close(
        result.pred_boxes,
        torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90], [10, 10, 50, 50], [0, 0, 100, 100]]),
    )
    assert result.image_size == (100, 100)

    (top2,), (kept2,) = fast_rcnn_inference([boxes], [scores], [(100, 100)], 0.04, 0.5, 2)
    assert top2.scores.tolist() == pytest.approx([0.7, 0.3]) and kept2.tolist() == [0, 1]
    (strict,), _ = fast_rcnn_inference([boxes], [scores], [(100, 100)], 0.25, 0.5, 100)
    assert strict.scores.tolist() == pytest.approx([0.7, 0.3])  # 0.25 itself is dropped
    (no_nms,), _ = fast_rcnn_inference([boxes], [scores], [(100, 100)], 0.04, 1.0, 100)
    assert len(no_nms) == 5


def test_fast_rcnn_inference_class_agnostic_and_non_finite_rows():
    boxes, scores = _inference_inputs()
    bad_boxes = torch.cat([torch.full((1, 8), float("nan")), boxes])
    bad_scores = torch.cat([torch.tensor([[0.9, 0.05, 0.05]]), scores])
    (result,), (kept,) = fast_rcnn_inference(
        [bad_boxes], [bad_scores], [(100, 100)], 0.04, 0.5, 100
    )
    assert kept.tolist() == [1, 2, 1, 4]  # indices of the rows given, NaN row dropped
    assert result.pred_classes.tolist() == [0, 1, 1, 0]

    (agnostic,), (kept,) = fast_rcnn_inference(
        [boxes[:, :4]], [scores], [(100, 100)], 0.04, 0.5, 100
    )
    # One box per RoI: class 1 of RoI 0 is now suppressed by class 1 of RoI 1, while RoI 1's
    # class-1 detection survives class 0 of RoI 0 (different classes never suppress each other).
    assert kept.tolist() == [0, 1, 3] and agnostic.pred_classes.tolist() == [0, 1, 0]
    torch.testing.assert_close(agnostic.pred_boxes[1], torch.tensor([12.0, 12, 52, 52]))


def test_fast_rcnn_inference_shape_errors():
    with pytest.raises(ValueError, match="one entry per image"):
        fast_rcnn_inference([torch.zeros(1, 4)], [], [(10, 10)], 0.05, 0.5, 10)
    with pytest.raises(ValueError, match="do not fit"):
        fast_rcnn_inference([torch.zeros(2, 12)], [torch.zeros(2, 3)], [(10, 10)], 0.05, 0.5, 10)


# ---- proposal labelling and sampling -------------------------------------------------------


def _heads(**overrides):
    cfg = _cfg()
    for key, value in overrides.items():
        setattr(cfg.MODEL.ROI_HEADS, key, value)
    return StandardROIHeads(cfg, SHAPES)


def _proposals(boxes):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    return Instances((200, 200), proposal_boxes=boxes, objectness_logits=torch.zeros(len(boxes)))


def _targets(boxes, classes):
    return Instances(
        (200, 200),
        gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )


def test_gt_boxes_are_appended_and_background_is_k():
    heads = _heads()
    far = [[150.0, 150, 160 + i, 160] for i in range(5)]
    gt = _targets([[10.0, 10, 50, 50]], [2])
    (sampled,) = heads.label_and_sample_proposals([_proposals(far)], [gt])
    assert len(sampled) == 6
    fg = sampled.gt_classes != 3
    assert fg.sum() == 1 and sampled.gt_classes[0] == 2  # foreground first
    torch.testing.assert_close(sampled.proposal_boxes[0], torch.tensor([10.0, 10, 50, 50]))
    torch.testing.assert_close(sampled.gt_boxes[0], torch.tensor([10.0, 10, 50, 50]))
    assert sampled.objectness_logits[0] == pytest.approx(math.log((1 - 1e-10) / 1e-10), rel=1e-5)
    assert (sampled.gt_classes[1:] == 3).all()

    (no_append,) = _heads(PROPOSAL_APPEND_GT=False).label_and_sample_proposals(
        [_proposals(far)], [gt]
    )
    assert len(no_append) == 5 and (no_append.gt_classes == 3).all()


def test_positive_fraction_and_matching():
    heads = _heads()
    good = [[10.0 + i % 3, 10, 50, 50] for i in range(20)]  # IoU >= 0.9 with GT 0
    second = [[100.0, 100, 140, 140]] * 3  # IoU 1 with GT 1
    bad = [[10.0, 10, 30, 30]] * 20  # IoU 0.25 with GT 0: background
    gt = _targets([[10.0, 10, 50, 50], [100.0, 100, 140, 140]], [0, 1])
    with EventStorage() as storage:
        (sampled,) = heads.label_and_sample_proposals([_proposals(good + second + bad)], [gt])
    assert len(sampled) == 8
    fg = sampled.gt_classes != 3
    assert int(fg.sum()) == 2  # int(8 * 0.25)
    assert fg[:2].all()
    for cls, gt_box in zip(sampled.gt_classes[fg], sampled.gt_boxes[fg]):
        torch.testing.assert_close(gt_box, gt.gt_boxes[int(cls)])
    assert storage.history("roi_head/num_fg_samples").latest() == 2
    assert storage.history("roi_head/num_bg_samples").latest() == 6


def test_image_without_gt_is_all_background():
    heads = _heads()
    (sampled,) = heads.label_and_sample_proposals(
        [_proposals([[0.0, 0, 10, 10]] * 12)], [_targets([], [])]
    )
    assert len(sampled) == 8 and (sampled.gt_classes == 3).all()
    assert sampled.gt_boxes.shape == (8, 4) and float(sampled.gt_boxes.abs().sum()) == 0


def test_append_gt_rejects_fields_the_targets_lack():
    props = _proposals([[0.0, 0, 10, 10]])
    props.extra = torch.zeros(1)
    with pytest.raises(ValueError, match="'extra'"):
        _heads().label_and_sample_proposals([props], [_targets([[0.0, 0, 5, 5]], [0])])


# ---- StandardROIHeads ----------------------------------------------------------------------


def _features():
    gen = torch.Generator().manual_seed(0)
    return {
        "p3": torch.randn(2, 8, 25, 25, generator=gen),
        "p4": torch.randn(2, 8, 13, 13, generator=gen),
    }


def test_standard_roi_heads_train_and_inference():
    cfg = _cfg()
    heads = build_roi_heads(cfg, SHAPES)
    assert isinstance(heads, StandardROIHeads)
    keys = set(heads.state_dict())
    assert {
        "box_head.fc1.weight",
        "box_head.fc2.bias",
        "box_predictor.cls_score.weight",
        "box_predictor.bbox_pred.weight",
    } <= keys
    assert heads.box_predictor.bbox_pred.weight.shape == (12, 16)
    assert not any(k.startswith("box_pooler") for k in keys)

    images = ImageList(torch.zeros(2, 3, 200, 200), [(200, 200), (180, 190)])
    proposals = [_proposals([[10.0, 10, 60, 60], [50, 50, 150, 120]]) for _ in range(2)]
    targets = [_targets([[12.0, 12, 58, 62]], [1]), _targets([], [])]
    heads.train()
    sampled, losses = heads(images, _features(), proposals, targets)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert [len(s) for s in sampled] == [3, 2]
    with pytest.raises(ValueError, match="needs targets"):
        heads(images, _features(), proposals, None)

    heads.eval()
    heads.box_predictor.test_score_thresh = 0.0
    results, losses = heads(images, _features(), proposals, None)
    assert losses == {} and len(results) == 2
    assert results[0].image_size == (200, 200)
    for r in results:
        assert set(r.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert ((r.pred_classes >= 0) & (r.pred_classes < 3)).all()


def test_build_roi_heads_errors():
    cfg = _cfg()
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    with pytest.raises(KeyError, match="'Res5ROIHeads' is not registered.*StandardROIHeads"):
        build_roi_heads(cfg, SHAPES)
    cfg = _cfg()
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p3", "p9"]
    with pytest.raises(ValueError, match=r"names \['p9'\]"):
        build_roi_heads(cfg, SHAPES)
