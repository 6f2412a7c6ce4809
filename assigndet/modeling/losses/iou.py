"""IoU-family losses for boxes regressed as (l, t, r, b) distances from a location."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ..box_ops import ltrb_to_boxes, paired_box_iou

IOU_LOSS_TYPES = ("iou", "linear_iou", "giou")


def ltrb_iou_loss(
    pred: Tensor, target: Tensor, loss_type: str = "giou", eps: float = 1e-6
) -> Tensor:
    """Per-location IoU loss between predicted and target distances from the same location.

    Both boxes are rebuilt around the origin; IoU and GIoU do not depend on the location, nor on
    a common scale, so stride-normalised and pixel distances give the same loss.

    Args:
        pred: ``[N, 4]`` predicted (l, t, r, b), >= 0.
        target: ``[N, 4]`` target (l, t, r, b), > 0.
        loss_type: ``"iou"`` (-log IoU, UnitBox and the original FCOS), ``"linear_iou"``
            (1 - IoU) or ``"giou"`` (1 - GIoU).
        eps: lower clamp of the IoU inside the log of ``"iou"``.

    Returns:
        ``[N]`` unreduced losses, computed in float32.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(
            f"MODEL.FCOS.LOC_LOSS_TYPE must be one of {IOU_LOSS_TYPES}; got {loss_type!r}"
        )
    origin = pred.new_zeros((1, 2), dtype=torch.float32)
    pred_boxes = ltrb_to_boxes(origin, pred.float())
    target_boxes = ltrb_to_boxes(origin, target.float())
    if loss_type == "giou":
        return generalized_box_iou_loss(pred_boxes, target_boxes, reduction="none")
    iou = paired_box_iou(pred_boxes, target_boxes)
    if loss_type == "iou":
        return -iou.clamp(min=eps).log()
    return 1 - iou
