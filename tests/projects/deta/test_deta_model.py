"""The DETA meta-architecture: a tiny model trains, detects, reloads; post-processing by hand."""

from __future__ import annotations

import math

import pytest
import torch

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import get_cfg
from assigndet.evaluation.timing import run_inference_stages, time_inference
from assigndet.modeling import build_model
from assigndet.projects.deta.deta import deta_postprocess
from assigndet.utils.testing import random_detection_batch


def _tiny_deta_cfg(matcher: str = "iou"):
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-DETA.yaml")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 32,
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.DETA.NUM_CLASSES", 3, "MODEL.DETA.HIDDEN_DIM", 32, "MODEL.DETA.NHEADS", 2,
        "MODEL.DETA.NUM_FEATURE_LEVELS", 4, "MODEL.DETA.ENC_LAYERS", 1,
        "MODEL.DETA.DEC_LAYERS", 2, "MODEL.DETA.DIM_FEEDFORWARD", 64,
        "MODEL.DETA.ENC_N_POINTS", 2, "MODEL.DETA.DEC_N_POINTS", 2,
        "MODEL.DETA.NUM_QUERIES", 20, "MODEL.DETA.MATCHER", matcher,
        "MODEL.DETA.ASSIGN_FIRST_STAGE_NMS", matcher == "iou",
        "TEST.DETECTIONS_PER_IMAGE", 10,
        # trained on generated batches of 3 classes, not on the base config's COCO
        "DATASETS.TRAIN", (), "DATASETS.TEST", (),
    ])  # fmt: skip
    return cfg


def _batch():
    return random_detection_batch(
        [(64, 96), (80, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], []],
        [[0, 2], []],
        output_scale=2.0,
    )


def test_deta_postprocess_by_hand():
    # 2 queries, 2 classes; sigmoid(logit) scores 0.9, 0.2 / 0.8, 0.7
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    pred_logits = torch.tensor([[logit(0.9), logit(0.2)], [logit(0.8), logit(0.7)]])
    # in pixels the boxes are x 60-140 and 64-144 (IoU 76/84 = 0.90): NMS keeps the better of
    # each class, query 0 for class 0 and query 1 for class 1
    pred_boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4]])
    out = deta_postprocess(pred_logits, pred_boxes, (100, 200), topk=10, nms_threshold=0.7,
                           max_detections=10)
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.7]))
    assert out.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(
        out.pred_boxes, torch.tensor([[60.0, 30.0, 140.0, 70.0], [64.0, 30.0, 144.0, 70.0]])
    )
    assert out.image_size == (100, 200)
    # top-k before NMS: with topk 2 only the two best pairs survive; NMS then removes none
    two = deta_postprocess(pred_logits, pred_boxes, (100, 200), topk=2, nms_threshold=0.7,
                           max_detections=10)
    torch.testing.assert_close(two.scores, torch.tensor([0.9]))
    # no NMS: the plain top max_detections
    plain = deta_postprocess(pred_logits, pred_boxes, (100, 200), topk=10, nms_threshold=0.0,
                             max_detections=3)
    torch.testing.assert_close(plain.scores, torch.tensor([0.9, 0.8, 0.7]))


@pytest.mark.parametrize("matcher", ["iou", "hungarian"])
def test_tiny_deta_trains_saves_reloads_and_detects(tmp_path, matcher):
    torch.manual_seed(0)
    cfg = _tiny_deta_cfg(matcher)
    model = build_model(cfg)
    batch = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(2):
        losses = model(batch)
        expected = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0", "_enc")}
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert model.class_embed[0].weight.grad is not None
    assert model.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad is not None

    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert [o["instances"].image_size for o in outputs] == [(128, 192), (160, 128)]
    for o in outputs:
        inst = o["instances"]
        assert len(inst) == 10
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert (inst.scores[:-1] >= inst.scores[1:]).all() and inst.pred_classes.max() < 3

    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    fresh = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(fresh)
    checkpointer.load(str(tmp_path / "model.pth"))
    assert not checkpointer.incompatible_keys
    with torch.no_grad():
        again = fresh(batch)
    for x, y in zip(outputs, again, strict=True):
        torch.testing.assert_close(x["instances"].pred_boxes, y["instances"].pred_boxes)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores)
        assert torch.equal(x["instances"].pred_classes, y["instances"].pred_classes)


def test_inference_stages_give_exactly_the_forward():
    torch.manual_seed(0)
    model = build_model(_tiny_deta_cfg()).eval()
    batch = _batch()
    with torch.no_grad():
        expected = model(batch)
        got = run_inference_stages(model, batch)
        times = time_inference(model, [batch], runs=2, num_iter=1, warmup=0)
    assert list(times) == [
        "total", "backbone", "encoder", "query_selection", "decoder", "postprocess"
    ]
    for x, y in zip(expected, got, strict=True):
        torch.testing.assert_close(x["instances"].pred_boxes, y["instances"].pred_boxes)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores)


def test_state_dict_names_and_init():
    torch.manual_seed(0)
    model = build_model(_tiny_deta_cfg())
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {
        "backbone", "input_proj", "transformer", "class_embed", "bbox_embed"
    }
    aliases = ("transformer.decoder.class_embed", "transformer.decoder.bbox_embed")
    assert not any(k.startswith(aliases) for k in keys)
    assert len(model.class_embed) == len(model.bbox_embed) == 3  # 2 decoder layers + encoder
    # 3 backbone levels (1x1 convs) + 1 extra (3x3 stride 2 on the raw res5 output)
    assert [tuple(p[0].weight.shape) for p in model.input_proj] == [
        (32, 64, 1, 1), (32, 128, 1, 1), (32, 256, 1, 1), (32, 256, 3, 3)
    ]
    for head in model.class_embed:
        torch.testing.assert_close(head.bias, torch.full((3,), -math.log(99.0)))
    for head in model.bbox_embed:
        assert not head.layers[-1].weight.any() and not head.layers[-1].bias.any()

