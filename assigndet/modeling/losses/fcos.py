"""The FCOS training objective on flattened per-location predictions and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ...utils.comm import all_reduce_mean
from .iou import ltrb_iou_loss
from .sampling_free import sigmoid_ce_loss


def fcos_losses(
    cls_logits: Tensor,
    box_reg: Tensor,
    ctr_logits: Tensor,
    labels: Tensor,
    reg_targets: Tensor,
    ctr_targets: Tensor,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    loc_loss_type: str = "giou",
    cls_loss_type: str = "focal",
) -> dict[str, Tensor]:
    """Focal + centerness-weighted IoU + centerness BCE, as in the FCOS reference code and mmdet.

    With ``cls_loss_type="ce"`` (Sampling-Free) the classification loss is plain sigmoid
    cross-entropy over every location and class instead of the focal loss, with the same
    normaliser; its guided scaling is the caller's (it needs a learnable δ).

    Normalisers: the classification and centerness losses are divided by the number of
    positives, the box loss by the sum of the positives' centerness targets; both are averaged
    over ranks (so that every rank divides by the same number) and clamped at 1 and 1e-6.
    Everything is computed in float32, so the losses are safe under autocast.

    Args:
        cls_logits: ``[R, K]`` class logits of all locations of all images (K = num_classes).
        box_reg: ``[R, 4]`` predicted (l, t, r, b), in the same units as ``reg_targets``.
        ctr_logits: ``[R]`` centerness logits.
        labels: ``[R]`` int64 classes; ``num_classes`` is background.
        reg_targets: ``[R, 4]`` target (l, t, r, b); only rows of positives are read.
        ctr_targets: ``[R]`` centerness targets; only positives are read.
        num_classes: K.
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        loc_loss_type: ``"iou"``, ``"linear_iou"`` or ``"giou"`` (see :func:`ltrb_iou_loss`).
        cls_loss_type: ``"focal"`` or ``"ce"``.

    Returns:
        ``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}``, scalar tensors.
    """
    if cls_logits.dim() != 2 or cls_logits.shape[1] != num_classes:
        raise ValueError(
            f"fcos_losses: cls_logits must be [R, {num_classes}]; got {tuple(cls_logits.shape)}"
        )
    pos = (labels >= 0) & (labels < num_classes)
    num_pos = all_reduce_mean(pos.sum().float().detach()).clamp(min=1.0)

    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(torch.float32)
    if cls_loss_type == "focal":
        loss_cls = sigmoid_focal_loss(
            cls_logits.float(), onehot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
        )
    elif cls_loss_type == "ce":
        loss_cls = sigmoid_ce_loss(cls_logits, onehot)
    else:
        raise ValueError(
            f"fcos_losses: cls_loss_type must be 'focal' or 'ce'; got {cls_loss_type!r}"
        )

    ctr_t = ctr_targets[pos].float()
    ctr_sum = all_reduce_mean(ctr_t.sum().detach()).clamp(min=1e-6)
    loc = ltrb_iou_loss(box_reg[pos], reg_targets[pos], loc_loss_type)
    loss_loc = (loc * ctr_t).sum()
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos].float(), ctr_t, reduction="sum")
    return {
        "loss_fcos_cls": loss_cls / num_pos,
        "loss_fcos_loc": loss_loc / ctr_sum,
        "loss_fcos_ctr": loss_ctr / num_pos,
    }
