"""CenterNet2 as a whole: the official R-50 state dict, the probabilistic score, the RoI
predictor's options, and a tiny model that trains, saves, reloads and detects."""

from __future__ import annotations

import json
import math

import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import get_cfg, load_config
from assigndet.evaluation.timing import run_inference_stages, time_inference
from assigndet.modeling import build_model
from assigndet.projects.centernet2.custom_fast_rcnn import (
    CustomFastRCNNOutputLayers,
    multiply_proposal_scores,
    sigmoid_ce_loss,
)
from assigndet.projects.centernet2.fed_loss import fed_loss_classes, load_class_freq
from assigndet.structures import Instances
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg


def _official_r50_keys() -> dict[str, tuple[int, ...]]:
    """CenterNet2_R50_1x's state dict as the official module tree gives it (GeneralizedRCNN
    with the p67 ResNet-50 FPN, the proposal-only CenterNet head and 3 cascade stages)."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv_norm(prefix: str, out_c: int, in_c: int, k: int) -> None:
        keys[f"{prefix}.weight"] = (out_c, in_c, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.norm.{name}"] = (out_c,)

    bottom_up = "backbone.bottom_up"
    conv_norm(f"{bottom_up}.stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, (blocks, bottleneck, out_c) in enumerate(
        [(3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048)], start=2
    ):
        for i in range(blocks):
            prefix = f"{bottom_up}.res{stage}.{i}"
            if i == 0:
                conv_norm(f"{prefix}.shortcut", out_c, in_c, 1)
            conv_norm(f"{prefix}.conv1", bottleneck, in_c if i == 0 else out_c, 1)
            conv_norm(f"{prefix}.conv2", bottleneck, bottleneck, 3)
            conv_norm(f"{prefix}.conv3", out_c, bottleneck, 1)
        in_c = out_c
    for level, c in zip((3, 4, 5), (512, 1024, 2048)):
        keys[f"backbone.fpn_lateral{level}.weight"] = (256, c, 1, 1)
        keys[f"backbone.fpn_lateral{level}.bias"] = (256,)
        keys[f"backbone.fpn_output{level}.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn_output{level}.bias"] = (256,)
    for name in ("p6", "p7"):
        keys[f"backbone.top_block.{name}.weight"] = (256, 256, 3, 3)
        keys[f"backbone.top_block.{name}.bias"] = (256,)

    head = "proposal_generator.centernet_head"
    for i in (0, 3, 6, 9):
        keys[f"{head}.bbox_tower.{i}.weight"] = (256, 256, 3, 3)
        keys[f"{head}.bbox_tower.{i}.bias"] = (256,)
        keys[f"{head}.bbox_tower.{i + 1}.weight"] = (256,)
        keys[f"{head}.bbox_tower.{i + 1}.bias"] = (256,)
    keys[f"{head}.bbox_pred.weight"] = (4, 256, 3, 3)
    keys[f"{head}.bbox_pred.bias"] = (4,)
    keys[f"{head}.agn_hm.weight"] = (1, 256, 3, 3)
    keys[f"{head}.agn_hm.bias"] = (1,)
    for level in range(5):
        keys[f"{head}.scales.{level}.scale"] = (1,)

    for k in range(3):
        keys[f"roi_heads.box_head.{k}.fc1.weight"] = (1024, 256 * 7 * 7)
        keys[f"roi_heads.box_head.{k}.fc1.bias"] = (1024,)
        keys[f"roi_heads.box_head.{k}.fc2.weight"] = (1024, 1024)
        keys[f"roi_heads.box_head.{k}.fc2.bias"] = (1024,)
        keys[f"roi_heads.box_predictor.{k}.cls_score.weight"] = (81, 1024)
        keys[f"roi_heads.box_predictor.{k}.cls_score.bias"] = (81,)
        keys[f"roi_heads.box_predictor.{k}.bbox_pred.weight"] = (4, 1024)
        keys[f"roi_heads.box_predictor.{k}.bbox_pred.bias"] = (4,)
    return keys


def test_r50_state_dict_equals_the_official_structure():
    cfg = load_config("configs/centernet2_r50_1x.yaml", ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _official_r50_keys()
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert got == expected
    predictor = model.roi_heads.box_predictor[2]
    assert predictor.box2box_transform.weights == (30.0, 30.0, 15.0, 15.0)
    assert predictor.mult_proposal_score and not predictor.use_sigmoid_ce
    assert [m.thresholds[1] for m in model.roi_heads.proposal_matchers] == [0.6, 0.7, 0.8]


def test_multiply_proposal_scores_by_hand():
    proposals = [Instances((10, 10), objectness_logits=torch.tensor([0.25, 1.0]))]
    probs = [torch.tensor([[0.64, 0.36], [0.5, 0.5]])]
    (fused,) = multiply_proposal_scores(probs, proposals)
    # sqrt(0.64 * 0.25) = 0.4, sqrt(0.36 * 0.25) = 0.3
    torch.testing.assert_close(fused, torch.tensor([[0.4, 0.3], [0.5**0.5, 0.5**0.5]]))


def test_sigmoid_ce_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0, 5.0], [math.log(3.0), 0.0, -5.0]])
    gt = torch.tensor([1, 2])  # the second RoI is background (K = 2)
    # RoI 0: BCE(0 | t=0) + BCE(0 | t=1) = 2 log 2; RoI 1: BCE(log 3 | 0) + BCE(0 | 0)
    expected = (2 * math.log(2.0) + math.log(4.0) + math.log(2.0)) / 2
    assert sigmoid_ce_loss(logits, gt).item() == pytest.approx(expected, rel=1e-6)
    # federated subset {1}: only class 1's column counts
    subset_loss = sigmoid_ce_loss(logits, gt, torch.tensor([1, 2]))
    assert subset_loss.item() == pytest.approx((math.log(2.0) + math.log(2.0)) / 2, rel=1e-6)


def test_fed_loss_classes_keeps_present_and_draws_by_weight():
    torch.manual_seed(0)
    gt = torch.tensor([3, 3, 5, 5])  # K = 5: class 3 and background present
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])  # class 1 is never drawn
    subset = fed_loss_classes(gt, num_sample_classes=4, num_classes=5, weight=weight)
    assert subset[:2].tolist() == [3, 5]
    drawn = set(subset[2:].tolist())
    assert len(subset) == 4 and len(drawn) == 2 and drawn <= {0, 2, 4}
    everything = fed_loss_classes(gt, num_sample_classes=50, num_classes=5, weight=weight)
    assert sorted(everything.tolist()) == [0, 2, 3, 4, 5]  # all drawable classes, no repeat


def test_load_class_freq(tmp_path):
    path = tmp_path / "cat_info.json"
    path.write_text(json.dumps([{"id": 7, "image_count": 9}, {"id": 2, "image_count": 4}]))
    torch.testing.assert_close(load_class_freq(str(path), 0.5), torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError, match="NUM_CLASSES is 3"):
        load_class_freq(str(path), 0.5, num_classes=3)
    with pytest.raises(FileNotFoundError, match="CAT_FREQ_PATH"):
        load_class_freq(str(tmp_path / "missing.json"), 0.5)
    path.write_text(json.dumps([{"id": 1}]))
    with pytest.raises(ValueError, match="image_count"):
        load_class_freq(str(path), 0.5)


def test_predictor_options_from_config(tmp_path):
    path = tmp_path / "cat_info.json"
    path.write_text(json.dumps([{"id": i, "image_count": 4 * i + 1} for i in range(3)]))
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True
    cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = True
    cfg.MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH = str(path)
    predictor = CustomFastRCNNOutputLayers(cfg, 16)
    torch.testing.assert_close(predictor.cls_score.bias, torch.full((4,), -math.log(99.0)))
    torch.testing.assert_close(predictor.freq_weight, torch.tensor([1.0, 5.0, 9.0]).sqrt())
    assert "freq_weight" in predictor.state_dict()
    rois = [Instances((5, 5), proposal_boxes=torch.zeros(2, 4))]
    probs = predictor.predict_probs((torch.zeros(2, 4), torch.zeros(2, 4)), rois)
    torch.testing.assert_close(probs[0], torch.full((2, 4), 0.5))

    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        CustomFastRCNNOutputLayers(cfg, 16)
    cfg.MODEL.ROI_BOX_HEAD.USE_EQL_LOSS = True
    with pytest.raises(NotImplementedError, match="USE_EQL_LOSS"):
        CustomFastRCNNOutputLayers(cfg, 16)


def _tiny_centernet2_cfg(roi_heads: str = "CustomCascadeROIHeads"):
    cfg = tiny_dense_detector_cfg("GeneralizedRCNN", num_classes=3, top_levels=2)
    cfg.merge_from_file("configs/Base-CenterNet2.yaml")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.CENTERNET.NUM_BOX_CONVS", 1, "MODEL.CENTERNET.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.ROI_HEADS.NAME", roi_heads, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
        # trained on generated batches of 3 classes, not on the base config's COCO
        "DATASETS.TRAIN", (), "DATASETS.TEST", (),
    ])  # fmt: skip
    return cfg


def _batch():
    return random_detection_batch(
        [(64, 96), (64, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]],
        [[0, 2], [1]],
        output_scale=2.0,
    )


@pytest.mark.parametrize("roi_heads", ["CustomCascadeROIHeads", "CustomROIHeads"])
def test_tiny_centernet2_trains_saves_reloads_and_detects(tmp_path, roi_heads):
    torch.manual_seed(0)
    cfg = _tiny_centernet2_cfg(roi_heads)
    model = build_model(cfg)
    batch = _batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(3):
        losses = model(batch)
        assert {"loss_centernet_agn_pos", "loss_centernet_agn_neg", "loss_centernet_loc"} <= set(
            losses
        )
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    stage_keys = {k for k in losses if k.startswith("loss_cls")}
    assert stage_keys == (
        {"loss_cls_stage0", "loss_cls_stage1", "loss_cls_stage2"}
        if roi_heads == "CustomCascadeROIHeads"
        else {"loss_cls"}
    )

    model.eval()
    for predictor in _predictors(model):
        predictor.test_score_thresh = 0.0  # keep detections of the barely trained model
    with torch.no_grad():
        outputs = model(batch)
    inst = outputs[0]["instances"]
    assert inst.image_size == (128, 192) and len(inst) > 0
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert (inst.scores <= 1).all() and inst.pred_classes.max() < 3

    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    fresh = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(fresh)
    checkpointer.load(str(tmp_path / "model.pth"))
    assert not checkpointer.incompatible_keys
    for predictor in _predictors(fresh):
        predictor.test_score_thresh = 0.0
    with torch.no_grad():
        again = fresh(batch)
    for x, y in zip(outputs, again):
        torch.testing.assert_close(x["instances"].pred_boxes, y["instances"].pred_boxes)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores)
        assert torch.equal(x["instances"].pred_classes, y["instances"].pred_classes)


def _predictors(model) -> list:
    predictor = model.roi_heads.box_predictor
    return list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]


@pytest.mark.parametrize("roi_heads", ["CustomCascadeROIHeads", "CustomROIHeads"])
def test_inference_stages_give_exactly_the_detections(roi_heads):
    """backbone -> first stage -> second stage -> post-processing, each timed on its own by
    ``time_inference``, together equal ``model(batch)``."""
    torch.manual_seed(0)
    model = build_model(_tiny_centernet2_cfg(roi_heads)).eval()
    for predictor in _predictors(model):
        predictor.test_score_thresh = 0.0
    batch = _batch()
    with torch.no_grad():
        expected = model(batch)
        got = run_inference_stages(model, batch)
        times = time_inference(model, [batch], runs=2, num_iter=1, warmup=0)
    assert list(times) == ["total", "backbone", "first_stage", "second_stage", "postprocess"]
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    for x, y in zip(expected, got, strict=True):
        assert len(x["instances"]) == len(y["instances"]) > 0
        torch.testing.assert_close(x["instances"].pred_boxes, y["instances"].pred_boxes)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores)
        assert torch.equal(x["instances"].pred_classes, y["instances"].pred_classes)
