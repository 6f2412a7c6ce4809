from pathlib import Path

import pytest
import torch

import assigndet.projects.pss.config  # noqa: F401  (adds MODEL.ATSS)
from assigndet.config import get_cfg
from assigndet.modeling import build_model
from assigndet.modeling.assigners.fcos import FCOSTargets
from assigndet.modeling.losses.fcos import fcos_losses
from assigndet.projects.pss.atss import ATSS
from assigndet.structures import Instances
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

NUM_CLASSES = 3
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _tiny_cfg():
    """R-18 with a 64-channel FPN on P3-P5 and one conv per tower."""
    return tiny_dense_detector_cfg("ATSS", NUM_CLASSES, fpn_channels=64)


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
    return build_model(_tiny_cfg())


def test_built_from_config(model):
    assert isinstance(model, ATSS)
    assert (model.topk, model.anchor_scale, model.loc_loss_weight) == (9, 8.0, 2.0)
    assert model.fpn_strides == [8, 16, 32]


def test_training_step_gives_finite_losses_and_gradients(model):
    model.train()
    losses = model(_batch())
    assert set(losses) == {"loss_atss_cls", "loss_atss_loc", "loss_atss_ctr"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    model.zero_grad()
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_labels_are_atss_targets_of_each_image(model):
    model.train()
    batch = _batch()
    images = model.preprocess_image(batch)
    with torch.no_grad():
        locations, *_ = model.predict(images)
    targets = model.label_locations(locations, model.gt_instances(batch))
    num_locations = sum(len(p) for p in locations)
    assert targets.labels.shape == (2, num_locations)
    assert targets.reg_targets.shape == (2, num_locations, 4)
    # every box has positives, with its class; image 1 has one box
    assert set(targets.matched_idxs[0].tolist()) == {-1, 0, 1}
    assert set(targets.matched_idxs[1].tolist()) == {-1, 0}
    assert targets.labels[1][targets.matched_idxs[1] == 0].unique().tolist() == [1]
    # k = 1 keeps at most one candidate per level (3 levels) for each box
    model.topk = 1
    try:
        narrow = model.label_locations(locations, model.gt_instances(batch))
    finally:
        model.topk = 9
    for matched in narrow.matched_idxs:
        per_box = torch.bincount(matched[matched >= 0])
        assert (per_box >= 1).all() and (per_box <= 3).all()


def test_box_loss_is_weighted_by_loc_loss_weight(model):
    gen = torch.Generator().manual_seed(1)
    num = 30
    cls_logits = torch.randn(1, num, NUM_CLASSES, generator=gen)
    box_reg = torch.rand(1, num, 4, generator=gen) + 0.5
    ctr_logits = torch.randn(1, num, generator=gen)
    labels = torch.full((1, num), NUM_CLASSES)
    labels[0, :4] = torch.tensor([0, 1, 2, 1])
    matched = torch.where(labels < NUM_CLASSES, 0, -1)
    reg_targets = torch.where(labels[..., None] < NUM_CLASSES, torch.ones(1, num, 4), 0.0)
    ctr_targets = torch.where(labels < NUM_CLASSES, 0.5, 0.0)
    targets = FCOSTargets(labels, matched, reg_targets, ctr_targets)
    ours = model.losses(cls_logits, box_reg, ctr_logits, targets)
    ref = fcos_losses(
        cls_logits[0], box_reg[0], ctr_logits[0], labels[0], reg_targets[0], ctr_targets[0], 3
    )
    assert ours["loss_atss_cls"] == ref["loss_fcos_cls"]
    assert ours["loss_atss_ctr"] == ref["loss_fcos_ctr"]
    assert ours["loss_atss_loc"] == 2.0 * ref["loss_fcos_loc"] and ref["loss_fcos_loc"] > 0


def test_inference_gives_instances_at_the_output_size(model):
    model.eval()
    batch = [{"image": x["image"], "height": x["height"], "width": x["width"]} for x in _batch()]
    model.score_threshold = 0.0  # the untrained classifier is below the default threshold
    try:
        with torch.no_grad():
            outputs = model(batch)
    finally:
        model.score_threshold = 0.05
    assert len(outputs) == 2
    for out, x in zip(outputs, batch):
        inst = out["instances"]
        assert isinstance(inst, Instances)
        assert inst.image_size == (x["height"], x["width"])
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= model.max_detections_per_image
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()


def test_explicit_constructor_and_errors():
    kwargs = ATSS.from_config(_tiny_cfg())
    assert "sizes_of_interest" not in kwargs and "center_sampling_radius" not in kwargs
    model = ATSS(**{**kwargs, "topk": 5, "loc_loss_weight": 1.0})
    assert (model.topk, model.loc_loss_weight) == (5, 1.0)
    with pytest.raises(TypeError, match="sizes_of_interest"):
        ATSS(**kwargs, sizes_of_interest=[64, 128])
    with pytest.raises(ValueError, match="MODEL.ATSS.TOPK"):
        ATSS(**{**kwargs, "topk": 0})
    cfg = _tiny_cfg()
    cfg.MODEL.ATSS.ANCHOR_SCALE = -1.0
    with pytest.raises(ValueError, match="MODEL.ATSS.ANCHOR_SCALE"):
        build_model(cfg)


def test_config_files_merge():
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / "atss_r50_1x.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "ATSS"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.FCOS.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    assert (cfg.MODEL.ATSS.TOPK, cfg.MODEL.ATSS.ANCHOR_SCALE) == (9, 8.0)
    assert cfg.MODEL.ATSS.LOC_LOSS_WEIGHT == 2.0
