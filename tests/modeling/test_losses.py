import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assigndet.modeling.losses import fcos_losses, ltrb_iou_loss

LN2 = math.log(2.0)
# focal loss at p = 0.5 (logit 0), alpha 0.25, gamma 2
FOCAL_POS = 0.25 * 0.5**2 * LN2  # -alpha (1 - p)^gamma log p
FOCAL_NEG = 0.75 * 0.5**2 * LN2  # -(1 - alpha) p^gamma log(1 - p)
CTR1 = (1 / 3) ** 0.5  # centerness of distances (1, 1, 3, 1)


def _case():
    """Three locations, K = 2: location 0 is class 0, location 1 class 1, location 2 background.

    Location 0 predicts its target exactly; location 1 predicts (1, 1, 1, 1) against (1, 1, 3, 1):
    IoU 4 / 8 = 0.5, enclosing box = target, so GIoU = 0.5.
    """
    cls_logits = torch.zeros(3, 2, requires_grad=True)
    box_reg = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [7, 7, 7, 7]], requires_grad=True)
    ctr_logits = torch.tensor([0.0, 1.0, 5.0], requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    reg_targets = torch.tensor([[1.0, 1, 1, 1], [1, 1, 3, 1], [0, 0, 0, 0]])
    ctr_targets = torch.tensor([1.0, CTR1, 0.0])
    return cls_logits, box_reg, ctr_logits, labels, reg_targets, ctr_targets


def test_fcos_losses_hand_computed():
    losses = fcos_losses(*_case(), num_classes=2)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    # 2 positive entries and 4 negative entries, divided by 2 positives
    assert losses["loss_fcos_cls"].item() == pytest.approx((2 * FOCAL_POS + 4 * FOCAL_NEG) / 2)
    # GIoU losses 0 and 0.5, weighted by centerness targets 1 and CTR1, divided by their sum
    assert losses["loss_fcos_loc"].item() == pytest.approx(CTR1 * 0.5 / (1 + CTR1), rel=1e-5)
    # BCE(0, 1) = ln 2; BCE(1, t) = log(1 + e) - t; divided by 2 positives
    bce1 = math.log(1 + math.e) - CTR1
    assert losses["loss_fcos_ctr"].item() == pytest.approx((LN2 + bce1) / 2, rel=1e-6)
    sum(losses.values()).backward()


def test_fcos_losses_iou_types():
    iou = fcos_losses(*_case(), num_classes=2, loc_loss_type="iou")["loss_fcos_loc"]
    assert iou.item() == pytest.approx(CTR1 * LN2 / (1 + CTR1), rel=1e-5)
    linear = fcos_losses(*_case(), num_classes=2, loc_loss_type="linear_iou")["loss_fcos_loc"]
    assert linear.item() == pytest.approx(CTR1 * 0.5 / (1 + CTR1), rel=1e-5)


def test_fcos_losses_focal_parameters():
    losses = fcos_losses(*_case(), num_classes=2, focal_alpha=0.5, focal_gamma=0.0)
    # alpha 0.5 and gamma 0 make it half the binary cross-entropy: 6 entries of ln 2 / 2
    assert losses["loss_fcos_cls"].item() == pytest.approx(6 * LN2 / 2 / 2)


def test_fcos_losses_without_positives_are_finite():
    cls_logits = torch.zeros(4, 3, requires_grad=True)
    box_reg = torch.ones(4, 4, requires_grad=True)
    ctr_logits = torch.zeros(4, requires_grad=True)
    labels = torch.full((4,), 3)
    losses = fcos_losses(
        cls_logits, box_reg, ctr_logits, labels, torch.zeros(4, 4), torch.zeros(4), num_classes=3
    )
    # the normaliser is clamped to 1: 12 negative entries at p = 0.5
    assert losses["loss_fcos_cls"].item() == pytest.approx(12 * FOCAL_NEG)
    assert losses["loss_fcos_loc"].item() == 0.0
    assert losses["loss_fcos_ctr"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(box_reg.grad).all() and torch.isfinite(ctr_logits.grad).all()


def test_fcos_losses_are_float32_for_half_inputs():
    cls_logits, box_reg, ctr_logits, labels, reg_targets, ctr_targets = _case()
    losses = fcos_losses(
        cls_logits.half(), box_reg.half(), ctr_logits.half(), labels, reg_targets, ctr_targets, 2
    )
    for value in losses.values():
        assert value.dtype == torch.float32


def test_fcos_losses_shape_error():
    cls_logits, *rest = _case()
    with pytest.raises(ValueError, match=r"cls_logits must be \[R, 3\]"):
        fcos_losses(cls_logits, *rest, num_classes=3)


def test_ltrb_iou_loss_unknown_type():
    with pytest.raises(ValueError, match="MODEL.FCOS.LOC_LOSS_TYPE.*'l1'"):
        ltrb_iou_loss(torch.ones(1, 4), torch.ones(1, 4), "l1")


def test_ltrb_iou_loss_scale_invariant():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    for loss_type in ("iou", "linear_iou", "giou"):
        a = ltrb_iou_loss(pred, target, loss_type)
        b = ltrb_iou_loss(pred * 8, target * 8, loss_type)
        assert torch.allclose(a, b, atol=1e-6)


def _two_rank_worker(rank: int, tmp: str) -> None:
    init_file = os.path.join(tmp, "init")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cls_logits, box_reg, ctr_logits, labels, reg_targets, ctr_targets = _case()
        if rank == 1:
            # rank 1 has only the first location: 1 positive, centerness sum 1
            cls_logits, box_reg, ctr_logits = cls_logits[:1], box_reg[:1], ctr_logits[:1]
            labels, reg_targets, ctr_targets = labels[:1], reg_targets[:1], ctr_targets[:1]
        losses = fcos_losses(
            cls_logits, box_reg, ctr_logits, labels, reg_targets, ctr_targets, num_classes=2
        )
        torch.save({k: v.item() for k, v in losses.items()}, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fcos_losses_normalisers_are_averaged_over_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_two_rank_worker, args=(tmp,), nprocs=2)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    num_pos = (2 + 1) / 2
    ctr_sum = ((1 + CTR1) + 1) / 2
    rank0, rank1 = results[0], results[1]
    assert rank0["loss_fcos_cls"] == pytest.approx((2 * FOCAL_POS + 4 * FOCAL_NEG) / num_pos)
    assert rank1["loss_fcos_cls"] == pytest.approx((FOCAL_POS + FOCAL_NEG) / num_pos)
    assert rank0["loss_fcos_loc"] == pytest.approx(CTR1 * 0.5 / ctr_sum, rel=1e-5)
    assert rank1["loss_fcos_loc"] == pytest.approx(0.0, abs=1e-6)
    bce1 = math.log(1 + math.e) - CTR1
    assert rank0["loss_fcos_ctr"] == pytest.approx((LN2 + bce1) / num_pos, rel=1e-6)
    assert rank1["loss_fcos_ctr"] == pytest.approx(LN2 / num_pos, rel=1e-6)
