"""Sampling-Free in CenterNet2 and CenterNet*: guided cross-entropy heatmaps, no RoI sampling,
the factor-2 RoI guidance per cascade stage, prior counts and the prior bias."""

from __future__ import annotations

import math

import pytest
import torch
from test_centernet2 import _tiny_centernet2_cfg as tiny_centernet2_cfg

from assigndet.layers import prior_bias
from assigndet.modeling import build_model
from assigndet.modeling.box_regression import Box2BoxTransform
from assigndet.modeling.meta_arch import model_io
from assigndet.modeling.meta_arch.fcos import compute_locations, padded_feature_sizes
from assigndet.modeling.roi_heads import FastRCNNOutputLayers
from assigndet.projects.centernet2.centernet_targets import heatmap_positive_indices
from assigndet.structures import Instances
from assigndet.utils.events import EventStorage
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg


def _tiny_centernet2_cfg(sampling_free: bool = True, roi_heads: str = "CustomCascadeROIHeads"):
    cfg = tiny_centernet2_cfg(roi_heads)
    cfg.MODEL.SAMPLING_FREE.ENABLED = sampling_free
    return cfg


def _tiny_centernet_star_cfg(sampling_free: bool = True):
    cfg = tiny_dense_detector_cfg("CenterNetDetector", num_classes=3, top_levels=2)
    cfg.MODEL.BACKBONE.NAME = "build_p67_resnet_fpn_backbone"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNet"
    cfg.merge_from_list([
        "MODEL.CENTERNET.NUM_CLASSES", 3, "MODEL.CENTERNET.NUM_CLS_CONVS", 1,
        "MODEL.CENTERNET.NUM_BOX_CONVS", 1, "MODEL.CENTERNET.MORE_POS", True,
        "MODEL.SAMPLING_FREE.ENABLED", sampling_free,
    ])  # fmt: skip
    return cfg


def _batch(empty: bool = False):
    boxes = [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]]
    classes = [[0, 2], [1]]
    if empty:
        boxes, classes = [[], []], [[], []]
    return random_detection_batch([(64, 96), (64, 64)], boxes, classes, output_scale=2.0)


def _predictors(model) -> list:
    predictor = model.roi_heads.box_predictor
    return list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]


@pytest.mark.parametrize("empty", [False, True])
def test_centernet2_sampling_free_losses(empty):
    torch.manual_seed(0)
    model = build_model(_tiny_centernet2_cfg()).train()
    with EventStorage() as storage:
        losses = model(_batch(empty))
    expected = {"loss_centernet_agn", "loss_centernet_agn_delta", "loss_centernet_loc"}
    expected |= {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(3)}
    assert set(losses) == expected  # no focal terms, no delta in the RoI stages
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    log_delta = model.proposal_generator.sf_agn_guidance.log_delta
    assert log_delta.grad is not None and torch.isfinite(log_delta.grad)
    assert log_delta.grad != 0
    scalars = storage.latest()
    for k in range(3):
        assert f"sf_roi_stage{k}_ratio" in scalars and f"sf_roi_stage{k}_cls_raw" in scalars
    assert "sf_centernet_agn_ratio" in scalars
    if empty:  # no box loss: the guidance falls back to 1.0, the RoI loss to twice the raw one
        assert losses["loss_centernet_loc"] == 0
        for k in range(3):
            raw = scalars[f"sf_roi_stage{k}_cls_raw"][0]
            assert scalars[f"sf_roi_stage{k}_ratio"][0] == 1.0
            assert losses[f"loss_cls_stage{k}"].item() == pytest.approx(2 * raw, rel=1e-5)
    else:  # guided: every stage's classification loss equals twice its box loss
        for k in range(3):
            torch.testing.assert_close(
                losses[f"loss_cls_stage{k}"], 2 * losses[f"loss_box_reg_stage{k}"].float()
            )
        guided = losses["loss_centernet_agn"]
        torch.testing.assert_close(guided, losses["loss_centernet_loc"].float())


def test_heatmap_loss_is_soft_cross_entropy_over_all_locations():
    """Unguided (GUIDED False): the raw agnostic loss is sum BCE(agn, soft targets) / N_pos."""
    torch.manual_seed(0)
    cfg = _tiny_centernet2_cfg()
    cfg.MODEL.SAMPLING_FREE.GUIDED = False
    model = build_model(cfg).train()
    assert not hasattr(model.proposal_generator, "sf_agn_guidance")
    pg = model.proposal_generator
    batch = _batch()
    images = model.preprocess_image(batch)
    gt = model_io.gt_instances(batch, model.device, "test")
    features = model.backbone(images.tensor)
    maps = [features[f] for f in pg.in_features]
    _, box_reg, agn = pg.centernet_head(maps)
    points = compute_locations([m.shape[-2:] for m in maps], pg.strides, maps[0].device)
    losses = pg.losses(points, [None] * len(maps), box_reg, agn, gt)
    assert set(losses) == {"loss_centernet_agn", "loss_centernet_loc"}
    _, heatmaps = pg.targets(points, [g.gt_boxes for g in gt], [g.gt_classes for g in gt])
    logits = torch.cat([a.permute(0, 2, 3, 1).reshape(-1) for a in agn])
    target = heatmaps[:, 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), target.double(), reduction="sum"
    )
    pos_inds, _ = heatmap_positive_indices(
        [g.gt_boxes for g in gt],
        [g.gt_classes for g in gt],
        [tuple(m.shape[-2:]) for m in maps],
        pg.strides,
        torch.tensor(pg.sizes_of_interest),
    )
    num_pos = len(pos_inds)
    assert num_pos >= 3
    assert losses["loss_centernet_agn"].item() == pytest.approx(bce.item() / num_pos, rel=1e-4)


def test_no_sampling_every_proposal_and_gt_is_used():
    torch.manual_seed(0)
    batch = _batch()
    for sampling_free, expected in ((True, [50 + 2, 50 + 1]), (False, [32, 32])):
        model = build_model(_tiny_centernet2_cfg(sampling_free)).train()
        gen = torch.Generator().manual_seed(1)
        proposals = []
        for x in batch:
            h, w = x["image"].shape[-2:]
            xy = torch.rand(50, 2, generator=gen) * torch.tensor([w - 20.0, h - 20.0])
            boxes = torch.cat([xy, xy + 4 + 16 * torch.rand(50, 2, generator=gen)], dim=1)
            proposals.append(
                Instances((h, w), proposal_boxes=boxes, objectness_logits=torch.rand(50))
            )
        targets = [x["instances"] for x in batch]
        labelled = model.roi_heads.label_and_sample_proposals(proposals, targets)
        assert [len(p) for p in labelled] == expected
        if sampling_free:
            # every GT box is among the RoIs, as a foreground one
            for p, t in zip(labelled, targets):
                fg = p.gt_classes < 3
                assert int(fg.sum()) >= len(t)


def test_roi_guidance_factor_two_and_guard():
    torch.manual_seed(0)
    predictor = FastRCNNOutputLayers(
        8,
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=3,
        cls_agnostic_bbox_reg=True,
        sampling_free=True,
        sf_guidance="local",
    )
    x = torch.randn(4, 8)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 30, 30], [2, 2, 8, 8]])
    proposals = [
        Instances(
            (32, 32),
            proposal_boxes=boxes,
            gt_boxes=boxes + 1.0,
            gt_classes=torch.tensor([0, 2, 3, 3]),
        )
    ]
    scores, deltas = predictor(x)
    losses = predictor.losses((scores, deltas), proposals)
    raw = torch.nn.functional.cross_entropy(scores, proposals[0].gt_classes)
    ratio = losses["loss_box_reg"].detach() / raw.detach()
    assert losses["loss_box_reg"] > 0
    torch.testing.assert_close(losses["loss_cls"], 2 * losses["loss_box_reg"])
    torch.testing.assert_close(predictor.sampling_free_stats["ratio"], ratio)
    # the gradient is 2 * ratio times the raw loss's
    (grad,) = torch.autograd.grad(losses["loss_cls"], scores)
    (raw_grad,) = torch.autograd.grad(raw, scores)
    torch.testing.assert_close(grad, 2 * ratio * raw_grad)

    # a batch without foreground: box loss 0, the last valid ratio is reused
    proposals[0].gt_classes = torch.tensor([3, 3, 3, 3])
    scores, deltas = predictor(x)
    losses = predictor.losses((scores, deltas), proposals)
    raw = torch.nn.functional.cross_entropy(scores, proposals[0].gt_classes)
    assert losses["loss_box_reg"] == 0
    torch.testing.assert_close(losses["loss_cls"], 2 * ratio * raw)

    # unguided: the raw loss
    predictor.sf_guided = False
    losses = predictor.losses((scores, deltas), proposals)
    torch.testing.assert_close(losses["loss_cls"], raw)


def test_prior_counts_by_hand_and_feature_sizes():
    torch.manual_seed(0)
    model = build_model(_tiny_centernet2_cfg()).train()
    pg = model.proposal_generator
    # one 4x4 box: the gaussian radius is the floor min_radius = 4 px on every level
    batch = random_detection_batch(
        [(64, 96), (64, 64)], [[[20.0, 21.0, 24.0, 25.0]], []], [[1], []]
    )
    images = model.preprocess_image(batch)
    gt = model_io.gt_instances(batch, model.device, "test")
    counts = pg.sampling_free_prior_counts(images, gt)
    assert set(counts) == {"centernet_agn"}
    num_fg, num = counts["centernet_agn"]

    # feature sizes: ceil(H / s) of the padded batch, as the backbone gives them
    features = model.backbone(images.tensor)
    real = [tuple(features[f].shape[-2:]) for f in pg.in_features]
    assert padded_feature_sizes(tuple(images.tensor.shape[-2:]), pg.strides) == real
    odd = torch.zeros(1, 3, 200, 328)
    real_odd = [tuple(model.backbone(odd)[f].shape[-2:]) for f in pg.in_features]
    assert padded_feature_sizes((200, 328), pg.strides) == real_odd

    # N: every location of both images, one channel
    assert num.item() == 2 * sum(h * w for h, w in real)
    # N^f: exp(-|p - c|^2 / 16) over the locations of image 0, values < 1e-4 dropped, and 1 at
    # the cell holding the centre on every level
    expected = 0.0
    cx, cy = 22.0, 23.0
    for (h, w), s in zip(real, pg.strides):
        for i in range(h):
            for j in range(w):
                px, py = j * s + s // 2, i * s + s // 2
                y = math.exp(-((px - cx) ** 2 + (py - cy) ** 2) / 16.0)
                if (j, i) == (int(cx // s), int(cy // s)):
                    y = 1.0
                expected += y if y >= 1e-4 else 0.0
    assert num_fg.item() == pytest.approx(expected, rel=1e-5)
    assert num_fg.item() > len(real)  # one peak per level and a little around them


def test_set_sampling_free_prior_and_initial_bias():
    torch.manual_seed(0)
    cfg = _tiny_centernet2_cfg()
    model = build_model(cfg)
    head = model.proposal_generator.centernet_head
    # PRIOR_PROB -1: the head's own prior (MODEL.CENTERNET.PRIOR_PROB) until the estimate
    torch.testing.assert_close(head.agn_hm.bias, torch.full((1,), prior_bias(0.01)))
    model.proposal_generator.set_sampling_free_prior({"centernet_agn": 1e-3, "other": 0.1})
    torch.testing.assert_close(head.agn_hm.bias, torch.full((1,), prior_bias(1e-3)))

    cfg.MODEL.SAMPLING_FREE.PRIOR_PROB = 2e-3
    head = build_model(cfg).proposal_generator.centernet_head
    torch.testing.assert_close(head.agn_hm.bias, torch.full((1,), prior_bias(2e-3)))
    cfg.MODEL.SAMPLING_FREE.PRIOR_INIT = False
    head = build_model(cfg).proposal_generator.centernet_head
    assert head.agn_hm.bias.abs().max() == 0

    # one-stage CenterNet*: the class heatmap, through the meta-architecture
    star = build_model(_tiny_centernet_star_cfg())
    counts = star.sampling_free_prior_counts(_batch())
    assert set(counts) == {"centernet_cls"}
    num_fg, num = counts["centernet_cls"]
    assert 3 <= num_fg.item() < num.item()
    assert num.item() % 3 == 0  # locations x 3 classes
    star.set_sampling_free_prior({"centernet_cls": 1e-4})
    bias = star.proposal_generator.centernet_head.cls_logits.bias
    torch.testing.assert_close(bias, torch.full((3,), prior_bias(1e-4)))


def test_centernet_star_sampling_free_losses_and_thresholds():
    torch.manual_seed(0)
    model = build_model(_tiny_centernet_star_cfg()).train()
    losses = model(_batch())
    assert set(losses) == {"loss_centernet_cls", "loss_centernet_cls_delta", "loss_centernet_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.proposal_generator.sf_cls_guidance.log_delta.grad is not None
    # test thresholds: SCORE_THRESH_TEST replaces the 0.05 of CenterNet* and of the RoI heads
    assert model.proposal_generator.score_thresh == pytest.approx(1e-3)
    assert build_model(_tiny_centernet_star_cfg(False)).proposal_generator.score_thresh == 0.05
    cn2 = build_model(_tiny_centernet2_cfg())
    assert cn2.proposal_generator.score_thresh == pytest.approx(1e-4)  # INFERENCE_TH is lower
    assert all(p.test_score_thresh == pytest.approx(1e-3) for p in _predictors(cn2))
    assert cn2.roi_heads.sampling_free


def test_disabled_keeps_the_model():
    torch.manual_seed(0)
    off = build_model(_tiny_centernet2_cfg(False))
    torch.manual_seed(0)
    on = build_model(_tiny_centernet2_cfg(True))
    assert set(on.state_dict()) - set(off.state_dict()) == {
        "proposal_generator.sf_agn_guidance.log_delta"
    }
    assert not off.roi_heads.sampling_free
    assert not any(p.sampling_free for p in _predictors(off))
    off.train()
    losses = off(_batch())
    assert {"loss_centernet_agn_pos", "loss_centernet_agn_neg"} <= set(losses)
