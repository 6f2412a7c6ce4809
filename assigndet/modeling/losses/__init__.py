"""Losses: pure functions on tensors."""

from .fcos import fcos_losses
from .iou import IOU_LOSS_TYPES, ltrb_iou_loss
from .sampling_free import (
    GUIDANCE_MODES,
    GuidedLossScaling,
    guidance_ratio,
    optimal_prior_prob,
    sampling_free_initial_prior,
    sigmoid_ce_loss,
)

__all__ = [
    "GUIDANCE_MODES",
    "IOU_LOSS_TYPES",
    "GuidedLossScaling",
    "fcos_losses",
    "guidance_ratio",
    "ltrb_iou_loss",
    "optimal_prior_prob",
    "sampling_free_initial_prior",
    "sigmoid_ce_loss",
]
