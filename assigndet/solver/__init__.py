"""Optimizers and learning-rate schedules built from ``cfg.SOLVER``."""

from .build import (
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler, build_lr_scheduler

__all__ = [
    "LRMultiplier",
    "WarmupParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]
