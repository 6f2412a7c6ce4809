"""CenterNet losses on cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from assigndet.projects.centernet2.centernet_losses import (
    binary_heatmap_focal_loss,
    centernet_losses,
    heatmap_focal_loss,
    smoothed_ltrb_iou_loss,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# p = 0.5 (the positive, Y = 1), 0.9 (Y = 0.5), 0.2 (Y = 0)
LOGITS = torch.tensor([_logit(0.5), _logit(0.9), _logit(0.2)])
TARGETS = torch.tensor([1.0, 0.5, 0.0])
POS_TERM = 0.25 * 0.5**2 * math.log(2.0)  # alpha (1 - p)^2 (-log p)
NEG_09 = 0.5**4 * 0.9**2 * -math.log(0.1)  # (1 - Y)^4 p^2 (-log(1 - p))
NEG_02 = 0.2**2 * -math.log(0.8)


def test_heatmap_focal_loss_by_hand():
    pos, neg = binary_heatmap_focal_loss(LOGITS, TARGETS, torch.tensor([0]))
    assert pos.item() == pytest.approx(POS_TERM, rel=1e-5)
    assert neg.item() == pytest.approx(0.75 * (NEG_09 + NEG_02), rel=1e-5)


def test_ignore_high_fp_drops_confident_negatives():
    _, neg = binary_heatmap_focal_loss(LOGITS, TARGETS, torch.tensor([0]), ignore_high_fp=0.85)
    assert neg.item() == pytest.approx(0.75 * NEG_02, rel=1e-5)  # p = 0.9 >= 0.85 is dropped


def test_positive_listed_twice_counts_twice_and_class_column():
    logits = torch.stack([torch.zeros(3), LOGITS], dim=1)  # [R=3, C=2]; class 1 is LOGITS
    targets = torch.stack([torch.zeros(3), TARGETS], dim=1)
    pos, neg = heatmap_focal_loss(logits, targets, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert pos.item() == pytest.approx(2 * POS_TERM, rel=1e-5)
    neg_class0 = 3 * 0.5**2 * math.log(2.0)  # p = 0.5, Y = 0 everywhere in column 0
    assert neg.item() == pytest.approx(0.75 * (NEG_09 + NEG_02 + neg_class0), rel=1e-5)


def test_sigmoid_clamp_and_no_alpha():
    pos, neg = binary_heatmap_focal_loss(
        torch.tensor([-100.0, 100.0]), torch.zeros(2), torch.tensor([0]), alpha=-1
    )
    p = 1e-4  # clamped from sigmoid(-100)
    assert pos.item() == pytest.approx((1 - p) ** 2 * -math.log(p), rel=1e-4)
    q = 1 - 1e-4  # clamped from sigmoid(100)
    assert neg.item() == pytest.approx(p**2 * -math.log(1 - p) + q**2 * -math.log(1 - q), rel=1e-3)


def test_smoothed_giou_by_hand():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 1.0], [0.0, 2.0, 2.0, 0.0]])
    # row 0: areas 4 and 8, I = 4, U = 8, E = 8: IoU = 5 / 9, loss 4 / 9
    # row 1: disjoint quadrants, I = 0, U = 8, E = 16: GIoU = 1 / 9 - 1 / 2
    loss = smoothed_ltrb_iou_loss(pred, target)
    assert loss.tolist() == pytest.approx([4 / 9, 1.5 - 1 / 9], rel=1e-6)
    assert smoothed_ltrb_iou_loss(pred, target, "linear_iou").tolist() == pytest.approx(
        [4 / 9, 8 / 9]
    )
    assert smoothed_ltrb_iou_loss(pred, target, "iou").tolist() == pytest.approx(
        [-math.log(5 / 9), math.log(9)]
    )
    # +1 smoothing: the same boxes in half the units give a different IoU
    assert smoothed_ltrb_iou_loss(pred[:1] / 2, target[:1] / 2).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="LOC_LOSS_TYPE"):
        smoothed_ltrb_iou_loss(pred, target, "l1")


def test_centernet_losses_names_weights_and_normalisers():
    box_reg = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    reg_targets = torch.tensor(
        [[1.0, 1.0, 3.0, 1.0], [0.0, 2.0, 2.0, 0.0], [-1e8, -1e8, -1e8, -1e8]]
    )
    heatmaps = TARGETS[:, None]
    pos_inds = torch.tensor([0, 0])  # N_pos = 2
    agn = centernet_losses(
        box_reg, reg_targets, heatmaps, pos_inds, torch.zeros(2, dtype=torch.long),
        agn_hm_logits=LOGITS, pos_weight=0.5, neg_weight=0.5, reg_weight=1.0,
        ignore_high_fp=0.85,
    )  # fmt: skip
    assert set(agn) == {"loss_centernet_agn_pos", "loss_centernet_agn_neg", "loss_centernet_loc"}
    assert agn["loss_centernet_agn_pos"].item() == pytest.approx(0.5 * 2 * POS_TERM / 2)
    assert agn["loss_centernet_agn_neg"].item() == pytest.approx(0.5 * 0.75 * NEG_02 / 2)
    # two valid rows, each weight 1, divided by 2
    loc = (4 / 9 + 1.5 - 1 / 9) / 2
    assert agn["loss_centernet_loc"].item() == pytest.approx(loc)

    one_stage = centernet_losses(
        box_reg, reg_targets, heatmaps, pos_inds[:0], pos_inds[:0], cls_logits=LOGITS[:, None],
        not_norm_reg=False,
    )  # fmt: skip
    assert set(one_stage) == {"loss_centernet_pos", "loss_centernet_neg", "loss_centernet_loc"}
    assert one_stage["loss_centernet_pos"].item() == 0.0  # no positives; N_pos floored at 1
    assert one_stage["loss_centernet_neg"].item() == pytest.approx(0.75 * (NEG_09 + NEG_02))
    # cells weighted by their heatmap target (1 and 0.5), normalised by max(1.5, 1)
    weighted = 2.0 * (1.0 * 4 / 9 + 0.5 * (1.5 - 1 / 9)) / 1.5
    assert one_stage["loss_centernet_loc"].item() == pytest.approx(weighted)
