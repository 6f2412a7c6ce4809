"""Losses: pure functions on tensors."""

from .fcos import fcos_losses
from .iou import IOU_LOSS_TYPES, ltrb_iou_loss

__all__ = ["IOU_LOSS_TYPES", "fcos_losses", "ltrb_iou_loss"]
