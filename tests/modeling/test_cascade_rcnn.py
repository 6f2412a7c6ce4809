"""CascadeROIHeads: detectron2's keys, per-stage matching, the 1/num_stages gradient scale,
stage losses and the stage-averaged inference."""

import pytest
import torch

from assigndet.config import get_cfg
from assigndet.layers import ShapeSpec
from assigndet.modeling.roi_heads import CascadeROIHeads, build_roi_heads, fast_rcnn_inference
from assigndet.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from assigndet.structures import ImageList, Instances
from assigndet.utils.events import EventStorage

SHAPES = {"p3": ShapeSpec(channels=8, stride=8), "p4": ShapeSpec(channels=8, stride=16)}
NUM_CLASSES = 3


def _cfg():
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return cfg


def _features(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    feats = {
        "p3": torch.randn(1, 8, 25, 25, generator=gen),
        "p4": torch.randn(1, 8, 13, 13, generator=gen),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in feats.items()}


def _proposals(boxes, size=(200, 200)):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    return Instances(size, proposal_boxes=boxes, objectness_logits=torch.zeros(len(boxes)))


def _targets(boxes, classes, size=(200, 200)):
    return Instances(
        size,
        gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )


IMAGES = ImageList(torch.zeros(1, 3, 200, 200), [(200, 200)])
PROPOSALS = [[10.0, 10, 60, 60], [14, 8, 62, 58], [50, 50, 150, 120], [0, 0, 30, 20]]
TARGETS = [[12.0, 12, 58, 62], [60, 55, 140, 125]], [1, 2]


def test_state_dict_keys_and_stage_settings():
    heads = build_roi_heads(_cfg(), SHAPES)
    assert isinstance(heads, CascadeROIHeads) and heads.num_cascade_stages == 3
    expected = {
        f"{module}.{k}.{layer}.{param}"
        for k in range(3)
        for module, layers in (
            ("box_head", ("fc1", "fc2")),
            ("box_predictor", ("cls_score", "bbox_pred")),
        )
        for layer in layers
        for param in ("weight", "bias")
    }
    assert set(heads.state_dict()) == expected
    assert heads.box_head[0].fc1.weight.shape == (16, 8 * 4 * 4)
    assert heads.box_predictor[2].cls_score.weight.shape == (NUM_CLASSES + 1, 16)
    assert heads.box_predictor[2].bbox_pred.weight.shape == (4, 16)
    weights = [p.box2box_transform.weights for p in heads.box_predictor]
    assert weights == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert not any(m.allow_low_quality_matches for m in heads.proposal_matchers)
    assert heads.proposal_matcher is heads.proposal_matchers[0]


def test_config_errors():
    cfg = _cfg()
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG True"):
        build_roi_heads(cfg, SHAPES)
    cfg = _cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.6, 0.7, 0.8)
    with pytest.raises(ValueError, match=r"IOU_THRESHOLDS\[0\] = 0.5 must equal .*IOUS\[0\] = 0.6"):
        build_roi_heads(cfg, SHAPES)
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.6]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.6, 0.7)
    with pytest.raises(ValueError, match="one entry per stage"):
        build_roi_heads(cfg, SHAPES)
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0),) * 2
    heads = build_roi_heads(cfg, SHAPES)  # two stages is fine
    assert heads.num_cascade_stages == 2 and heads.proposal_matchers[1].thresholds[1] == 0.7


def test_scale_gradient_function():
    x = torch.randn(3, 4, requires_grad=True)
    y = _ScaleGradient.apply(x, 0.25)
    torch.testing.assert_close(y, x)
    (y * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), 0.5))


def test_pooled_features_gradient_is_scaled_by_one_over_num_stages():
    heads = build_roi_heads(_cfg(), SHAPES)
    pooled = {}
    heads.box_pooler.register_forward_hook(lambda m, i, out: pooled.update(out=out))
    heads.box_head[1].register_forward_pre_hook(lambda m, args: pooled.update(head_in=args[0]))

    def feature_grads(train: bool) -> torch.Tensor:
        heads.train(train)
        features = _features(requires_grad=True)
        proposals = [_proposals(PROPOSALS)]
        scores, deltas = heads._run_stage([features["p3"], features["p4"]], proposals, 1)
        pooled["out"].retain_grad()
        pooled["head_in"].retain_grad()
        (scores.sum() + deltas.sum()).backward()
        return features["p3"].grad

    grad_train = feature_grads(True)
    torch.testing.assert_close(pooled["out"].grad, pooled["head_in"].grad / 3)
    grad_eval = feature_grads(False)
    torch.testing.assert_close(grad_train, grad_eval / 3)


def test_training_losses_per_stage_and_no_resampling():
    heads = build_roi_heads(_cfg(), SHAPES).train()
    with EventStorage() as storage:
        sampled, losses = heads(IMAGES, _features(), [_proposals(PROPOSALS)], [_targets(*TARGETS)])
    assert set(losses) == {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # 4 proposals + 2 GT boxes: 5 foreground, of which int(16 * 0.25) = 4 are sampled, and 1
    # background; later stages keep every non-empty box.
    assert len(sampled[0]) == 5 and (sampled[0].gt_classes < NUM_CLASSES).sum() == 4
    for stage in (1, 2):
        fg = storage.history(f"stage{stage}/roi_head/num_fg_samples").latest()
        bg = storage.history(f"stage{stage}/roi_head/num_bg_samples").latest()
        assert fg + bg == 5 and fg >= 2  # the GT boxes barely move at initialisation
    assert "stage0/fast_rcnn/cls_accuracy" in storage.histories()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in heads.parameters())


def test_create_proposals_clips_detaches_and_drops_empty_in_training_only():
    heads = build_roi_heads(_cfg(), SHAPES)
    boxes = (
        torch.tensor([[-5.0, -5, 20, 20], [30, 10, 30, 20], [10, 10, 5, 20]], requires_grad=True)
        * 1.0
    )
    heads.train()
    (props,) = heads._create_proposals_from_boxes([boxes], [(25, 40)])
    torch.testing.assert_close(props.proposal_boxes, torch.tensor([[0.0, 0, 20, 20]]))
    assert not props.proposal_boxes.requires_grad
    heads.eval()
    (props,) = heads._create_proposals_from_boxes([boxes], [(25, 40)])
    assert len(props) == 3 and props.image_size == (25, 40)
    torch.testing.assert_close(props.proposal_boxes[1], torch.tensor([30.0, 10, 30, 20]))
    assert boxes[0, 0] == -5.0  # the input is not clipped in place


def test_match_and_label_boxes_uses_each_stage_threshold():
    heads = build_roi_heads(_cfg(), SHAPES)
    targets = [_targets([[0.0, 0, 100, 100]], [2])]
    boxes = [[0.0, 0, 100, 65], [0, 0, 100, 80], [0, 0, 100, 30]]  # IoU 0.65, 0.8, 0.3
    labelled = {}
    for stage in (1, 2):
        (labelled[stage],) = heads._match_and_label_boxes([_proposals(boxes)], stage, targets)
    assert labelled[1].gt_classes.tolist() == [2, 2, NUM_CLASSES]
    assert labelled[2].gt_classes.tolist() == [NUM_CLASSES, 2, NUM_CLASSES]
    torch.testing.assert_close(labelled[2].gt_boxes, torch.tensor([[0.0, 0, 100, 100]] * 3))
    (empty,) = heads._match_and_label_boxes([_proposals(boxes)], 1, [_targets([], [])])
    assert empty.gt_classes.tolist() == [NUM_CLASSES] * 3
    assert not empty.gt_boxes.any()


def test_inference_averages_stage_probabilities_and_uses_last_boxes():
    heads = build_roi_heads(_cfg(), SHAPES).eval()
    for predictor in heads.box_predictor:
        predictor.test_score_thresh = 0.0
    features = _features()
    proposals = [_proposals(PROPOSALS)]
    with torch.no_grad():
        results, losses = heads(IMAGES, features, proposals)
        props, probs = proposals, []
        for k in range(3):
            predictions = heads._run_stage([features["p3"], features["p4"]], props, k)
            probs.append(heads.box_predictor[k].predict_probs(predictions, props)[0])
            boxes = heads.box_predictor[k].predict_boxes(predictions, props)
            if k < 2:
                props = heads._create_proposals_from_boxes(boxes, [(200, 200)])
        (expected,), _ = fast_rcnn_inference(
            boxes,
            [sum(probs) / 3],
            [(200, 200)],
            0.0,
            heads.box_predictor[2].test_nms_thresh,
            100,
        )
    assert losses == {}
    assert len(results[0]) > 0
    for name in ("pred_boxes", "scores", "pred_classes"):
        torch.testing.assert_close(results[0].get(name), expected.get(name))
