"""Sampling-Free in FCOS, ATSS and the PSS detectors' base branch."""

import math

import pytest
import torch
import torch.nn.functional as F

import assigndet.modeling.meta_arch.fcos  # noqa: F401  (registers FCOS)
import assigndet.projects.pss  # noqa: F401  (registers ATSS and the PSS detectors)
from assigndet.layers import prior_bias
from assigndet.modeling import build_model
from assigndet.modeling.losses import fcos_losses
from assigndet.utils.events import EventStorage
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

SIZES = [(64, 80), (56, 64)]
BOXES = [[[8.0, 10.0, 40.0, 50.0], [30.0, 4.0, 60.0, 30.0]], [[12.0, 12.0, 44.0, 36.0]]]
CLASSES = [[0, 2], [1]]


def _cfg(meta_architecture="FCOS", **sf):
    cfg = tiny_dense_detector_cfg(meta_architecture)
    cfg.MODEL.SAMPLING_FREE.ENABLED = True
    for key, value in sf.items():
        setattr(cfg.MODEL.SAMPLING_FREE, key, value)
    return cfg


def _model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).train()


def _batch(boxes=BOXES, classes=CLASSES):
    return random_detection_batch(SIZES, boxes, classes)


def _raw_fcos_losses(model, batch, cls_loss_type):
    """The unguided FCOS losses of ``batch`` recomputed from the model's predictions."""
    images = model.preprocess_image(batch)
    locations, cls_logits, box_reg, ctr_logits, _ = model.predict(images)
    targets = model.label_locations(locations, model.gt_instances(batch))
    k = model.num_classes
    return fcos_losses(
        cls_logits.reshape(-1, k),
        box_reg.reshape(-1, 4),
        ctr_logits.reshape(-1),
        targets.labels.reshape(-1),
        targets.reg_targets.reshape(-1, 4),
        targets.centerness_targets.reshape(-1),
        k,
        cls_loss_type=cls_loss_type,
    )


def test_guided_ce_replaces_the_focal_loss():
    model = _model(_cfg(PRIOR_PROB=1e-3))
    assert model.sampling_free and model.score_threshold == pytest.approx(1e-3)
    assert torch.allclose(model.head.cls_logits.bias, torch.full((3,), prior_bias(1e-3)))
    batch = _batch()
    with EventStorage(0) as storage:
        losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_fcos_delta"}
    raw = _raw_fcos_losses(model, batch, "ce")
    # g = L_loc / L_ce and delta = 1 at the start: the scaled CE equals the box loss in value
    assert losses["loss_fcos_cls"].item() == pytest.approx(raw["loss_fcos_loc"].item(), rel=1e-5)
    assert losses["loss_fcos_delta"].item() == 0.0
    latest = storage.latest()
    assert latest["sf_fcos_delta"][0] == 1.0
    assert latest["sf_fcos_cls_raw"][0] == pytest.approx(raw["loss_fcos_cls"].item(), rel=1e-5)
    expected_ratio = raw["loss_fcos_loc"].item() / raw["loss_fcos_cls"].item()
    assert latest["sf_fcos_ratio"][0] == pytest.approx(expected_ratio, rel=1e-5)

    sum(losses.values()).backward()
    log_delta = model.cls_guidance.log_delta
    # d/d(log delta) of g·delta·L_ce - log delta at delta = 1 is g·L_ce - 1 = L_loc - 1
    expected = raw["loss_fcos_loc"].item() - 1
    assert log_delta.grad.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_ce_is_exact_where_focal_is_not_used():
    """The CE term is sigmoid BCE summed over every location and class, / #positives."""
    model = _model(_cfg(PRIOR_PROB=1e-3))
    batch = _batch()
    images = model.preprocess_image(batch)
    locations, cls_logits, *_ = model.predict(images)
    labels = model.label_locations(locations, model.gt_instances(batch)).labels
    onehot = F.one_hot(labels, 4)[..., :3].float()
    expected = F.binary_cross_entropy_with_logits(
        cls_logits.double(), onehot.double(), reduction="sum"
    )
    num_pos = (labels < 3).sum()
    raw = _raw_fcos_losses(model, batch, "ce")
    assert raw["loss_fcos_cls"].item() == pytest.approx((expected / num_pos).item(), rel=1e-5)


def test_disabled_keeps_the_focal_loss():
    cfg = _cfg()
    cfg.MODEL.SAMPLING_FREE.ENABLED = False
    model = _model(cfg)
    assert model.cls_guidance is None and not model.sampling_free
    assert model.score_threshold == cfg.MODEL.FCOS.INFERENCE_TH_TEST
    batch = _batch()
    losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    focal = _raw_fcos_losses(model, batch, "focal")
    assert losses["loss_fcos_cls"].item() == pytest.approx(focal["loss_fcos_cls"].item())
    assert model.head.cls_logits.bias[0].item() == pytest.approx(prior_bias(0.01))


def test_plain_ce_ablation_has_neither_prior_nor_guidance():
    model = _model(_cfg(PRIOR_INIT=False, GUIDED=False))
    assert model.cls_guidance is None
    assert torch.all(model.head.cls_logits.bias == 0)
    batch = _batch()
    losses = model(batch)
    assert "loss_fcos_delta" not in losses
    raw = _raw_fcos_losses(model, batch, "ce")
    assert losses["loss_fcos_cls"].item() == pytest.approx(raw["loss_fcos_cls"].item())


def test_batch_without_positives_keeps_the_last_ratio():
    model = _model(_cfg(PRIOR_PROB=1e-3))
    with EventStorage(0):
        model(_batch())
    ratio = model.cls_guidance.last_ratio
    empty = _batch(boxes=[[], []], classes=[[], []])
    with EventStorage(1) as storage:
        losses = model(empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"].item() == 0.0
    assert storage.latest()["sf_fcos_ratio"][0] == pytest.approx(ratio)
    # the CE still trains the negatives, scaled by the last valid ratio
    raw = _raw_fcos_losses(model, empty, "ce")
    assert losses["loss_fcos_cls"].item() == pytest.approx(
        ratio * raw["loss_fcos_cls"].item(), rel=1e-5
    )
    sum(losses.values()).backward()
    assert model.cls_guidance.log_delta.grad.item() == pytest.approx(
        ratio * raw["loss_fcos_cls"].item() - 1, rel=1e-4
    )


@pytest.mark.parametrize("meta_architecture", ["FCOS", "ATSS"])
def test_prior_counts_follow_the_assignment(meta_architecture):
    model = _model(_cfg(meta_architecture))
    batch = _batch()
    counts = model.sampling_free_prior_counts(batch)
    # the locations the network really has, from a forward pass
    locations, cls_logits, *_ = model.predict(model.preprocess_image(batch))
    labels = model.label_locations(locations, model.gt_instances(batch)).labels
    num_fg, num = counts["cls"]
    assert int(num_fg) == int((labels < 3).sum()) > 0
    assert num == cls_logits.numel() == labels.numel() * 3

    model.set_sampling_free_prior({"cls": 0.002})
    assert torch.allclose(model.head.cls_logits.bias, torch.full((3,), math.log(0.002 / 0.998)))


def test_atss_is_guided_by_its_weighted_box_loss():
    model = _model(_cfg("ATSS", PRIOR_PROB=1e-3))
    with EventStorage(0):
        losses = model(_batch())
    assert set(losses) == {"loss_atss_cls", "loss_atss_loc", "loss_atss_ctr", "loss_atss_delta"}
    assert losses["loss_atss_cls"].item() == pytest.approx(losses["loss_atss_loc"].item(), rel=1e-5)


def test_pss_keeps_its_focal_branch():
    model = _model(_cfg("FCOS_PSS", PRIOR_PROB=1e-3))
    with EventStorage(0):
        losses = model(_batch())
    assert {"loss_fcos_delta", "loss_pss", "loss_pss_rank"} <= set(losses)
    assert losses["loss_fcos_cls"].item() == pytest.approx(losses["loss_fcos_loc"].item(), rel=1e-5)
    assert all(torch.isfinite(v) for v in losses.values())
