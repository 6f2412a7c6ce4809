"""GeneralizedRCNN end to end: a tiny ResNet-18/FPN with CascadeROIHeads trains and detects.

The real first stage (CenterNet) lives in its own project; here a test fixture,
``JitteredGTProposalsForTest``, follows the proposal contract with jittered GT boxes plus random
boxes, so the two-stage plumbing is tested on its own.
"""

import pytest
import torch
from torch import nn

from assigndet.checkpoint import DetectionCheckpointer
from assigndet.modeling import GeneralizedRCNN, build_model
from assigndet.modeling.postprocessing import detector_postprocess
from assigndet.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from assigndet.structures import Instances
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

NUM_CLASSES = 3


class JitteredGTProposalsForTest(nn.Module):
    """Test fixture: per image, 20 random boxes, plus 8 jittered copies of each GT box when GT is
    given; ``objectness_logits`` are 0 and there are no losses."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.num_random = 20
        self.num_jitter = 8

    def forward(self, images, features, gt_instances):
        proposals = []
        for i, (h, w) in enumerate(images.image_sizes):
            size = torch.tensor([w, h], dtype=torch.float32, device=images.device)
            xy = torch.rand(self.num_random, 2, device=images.device) * size * 0.7
            wh = 8 + torch.rand(self.num_random, 2, device=images.device) * size * 0.3
            boxes = [torch.cat([xy, xy + wh], dim=1)]
            if gt_instances is not None:
                gt = gt_instances[i].gt_boxes.repeat_interleave(self.num_jitter, dim=0)
                size = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
                boxes.append(gt + 0.15 * size * (torch.rand_like(gt) * 2 - 1))
            boxes = torch.cat(boxes)
            proposals.append(
                Instances(
                    (h, w),
                    proposal_boxes=boxes.detach(),
                    objectness_logits=boxes.new_zeros(len(boxes)),
                )
            )
        return proposals, {}


if "JitteredGTProposalsForTest" not in PROPOSAL_GENERATOR_REGISTRY:
    PROPOSAL_GENERATOR_REGISTRY.register(JitteredGTProposalsForTest)


def _cfg():
    cfg = tiny_dense_detector_cfg("GeneralizedRCNN", NUM_CLASSES, fpn_channels=32, top_levels=0)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "JitteredGTProposalsForTest"
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # keep every (RoI, class) pair of the tiny model
    return cfg


def _batch():
    return random_detection_batch(
        [(64, 80), (56, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 76.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]],
        [[0, 2], [1]],
        output_scale=2,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def test_structure_and_state_dict_names(model):
    assert isinstance(model, GeneralizedRCNN)
    keys = set(model.state_dict())
    for k in range(3):
        assert f"roi_heads.box_head.{k}.fc1.weight" in keys
        assert f"roi_heads.box_head.{k}.fc2.bias" in keys
        assert f"roi_heads.box_predictor.{k}.cls_score.weight" in keys
        assert f"roi_heads.box_predictor.{k}.bbox_pred.weight" in keys
    assert "backbone.bottom_up.stem.conv1.weight" in keys
    assert not {"pixel_mean", "pixel_std"} & keys
    assert model.pixel_mean.shape == (3, 1, 1) and model.pixel_std.shape == (3, 1, 1)
    assert model.input_format == "BGR"


def test_trains_with_decreasing_losses_then_detects(model):
    model.train()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9
    )
    batch = _batch()
    totals = []
    for _ in range(6):
        losses = model(batch)
        assert set(losses) == {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0] and totals[-2] < 0.85 * totals[0], totals

    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for out, x in zip(outputs, batch):
        inst = out["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert len(inst) > 0
        boxes = inst.pred_boxes
        assert (boxes[:, 0::2] <= x["width"]).all() and (boxes[:, 1::2] <= x["height"]).all()
        assert ((inst.scores > 0) & (inst.scores <= 1)).all()
        assert inst.pred_classes.dtype == torch.int64
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()

    with torch.no_grad():
        raw = model.inference(batch, do_postprocess=False)
        given = model.inference(batch, detected_instances=raw)
    assert raw[0].image_size == (64, 80)
    # no box branch to rerun: the given detections come back, rescaled to the output size
    expected = detector_postprocess(raw[0], batch[0]["height"], batch[0]["width"])
    torch.testing.assert_close(given[0]["instances"].pred_boxes, expected.pred_boxes)


def test_training_without_instances_is_an_error(model):
    model.train()
    batch = _batch()
    del batch[1]["instances"]
    with pytest.raises(
        KeyError, match=r"GeneralizedRCNN training inputs \[1\] have no 'instances'"
    ):
        model(batch)


def test_precomputed_proposals():
    cfg = _cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    model = build_model(cfg).eval()
    assert model.proposal_generator is None
    batch = _batch()
    with pytest.raises(KeyError, match="inputs need 'proposals'"):
        model(batch)
    for x in batch:
        h, w = x["image"].shape[1:]
        x["proposals"] = Instances(
            (h, w),
            proposal_boxes=torch.tensor([[2.0, 2.0, 30.0, 30.0], [10.0, 5.0, 50.0, 40.0]]),
            objectness_logits=torch.zeros(2),
        )
    with torch.no_grad():
        outputs = model(batch)
    assert [o["instances"].image_size for o in outputs] == [(128, 160), (112, 128)]


def test_checkpoints_with_pixel_mean_and_std_load_cleanly(model, tmp_path):
    state = model.state_dict()
    state["pixel_mean"] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    state["pixel_std"] = torch.tensor([4.0, 5.0, 6.0]).view(3, 1, 1)
    path = tmp_path / "old_style.pth"
    torch.save({"model": state}, path)

    torch.manual_seed(2)
    target = build_model(_cfg())
    checkpointer = DetectionCheckpointer(target)
    checkpointer.load(str(path))
    assert not checkpointer.incompatible_keys
    key = "roi_heads.box_predictor.2.cls_score.weight"
    torch.testing.assert_close(target.state_dict()[key], model.state_dict()[key])
    # the buffers keep the config's values
    torch.testing.assert_close(
        target.pixel_mean.flatten(), torch.tensor([103.530, 116.280, 123.675])
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_train_step_and_inference():
    cfg = _cfg()
    cfg.MODEL.DEVICE = "cuda"
    model = build_model(cfg)
    losses = model(_batch())
    assert all(torch.isfinite(v) and v.is_cuda for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(_batch())
    inst = outputs[0]["instances"]
    assert inst.pred_boxes.is_cuda and inst.image_size == (128, 160) and len(inst) > 0
