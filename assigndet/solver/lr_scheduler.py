"""Learning-rate schedules: fvcore ``ParamScheduler`` multipliers driven per iteration.

lr(t) = base_lr * m(t / max_iter), t counted from 0. ``WarmupParamScheduler`` puts a warmup in
front of any multiplier schedule; ``LRMultiplier`` is the torch scheduler that applies it.
"""

from __future__ import annotations

import logging

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)

__all__ = [
    "CosineParamScheduler",
    "LRMultiplier",
    "MultiStepParamScheduler",
    "WarmupParamScheduler",
    "build_lr_scheduler",
]

logger = logging.getLogger(__name__)


class WarmupParamScheduler(ParamScheduler):
    """``scheduler`` preceded by a warmup over the first ``warmup_length`` (a fraction of training).

    During warmup the value is ``warmup_factor * scheduler(0)`` ("constant"), or goes linearly from
    that to ``scheduler(warmup_length)`` ("linear"); afterwards it is ``scheduler(where)``.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
    ) -> None:
        if warmup_method not in ("linear", "constant"):
            raise ValueError(
                f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}"
            )
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(
                f"Warmup length must be a fraction of training in [0, 1], got {warmup_length} "
                "(SOLVER.WARMUP_ITERS larger than SOLVER.MAX_ITER?)"
            )
        self._scheduler = scheduler
        self._factor = warmup_factor
        self._length = warmup_length
        self._method = warmup_method

    def __call__(self, where: float) -> float:
        if where >= self._length:
            return self._scheduler(where)
        start = self._factor * self._scheduler(0.0)
        if self._method == "constant":
            return start
        end = self._scheduler(self._length)
        return start + (end - start) * where / self._length


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Sets each param group's lr to ``base_lr * multiplier(iteration / max_iter)``.

    Step it once per iteration, after ``optimizer.step()``. Its state is ``base_lrs`` and
    ``last_epoch`` (the iteration), so a resumed run continues on the same curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(
                f"LRMultiplier needs an fvcore ParamScheduler, got {type(multiplier).__name__}"
            )
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict:
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:
        # the value after the last iteration is never used for a step; clamp so it stays defined
        where = min(self.last_epoch / self._max_iter, 1.0)
        m = self._multiplier(where)
        return [base_lr * m for base_lr in self.base_lrs]


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """The schedule named by ``SOLVER.LR_SCHEDULER_NAME`` (WarmupMultiStepLR or WarmupCosineLR)
    with ``SOLVER.WARMUP_*``, over ``SOLVER.MAX_ITER`` iterations."""
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    max_iter = cfg.SOLVER.MAX_ITER
    if name == "WarmupMultiStepLR":
        # a step at or after the last iteration never changes a used lr
        steps = [s for s in cfg.SOLVER.STEPS if s < max_iter]
        if len(steps) != len(cfg.SOLVER.STEPS):
            logger.warning(
                "SOLVER.STEPS %s has entries at or beyond SOLVER.MAX_ITER=%d; they are ignored",
                tuple(cfg.SOLVER.STEPS), max_iter,
            )
        if any(b <= a for a, b in zip(steps, steps[1:])) or (steps and steps[0] <= 0):
            raise ValueError(
                "SOLVER.STEPS must be positive and strictly increasing, got "
                f"{tuple(cfg.SOLVER.STEPS)}"
            )
        multiplier: ParamScheduler = MultiStepParamScheduler(
            values=[cfg.SOLVER.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=max_iter,
        )
    elif name == "WarmupCosineLR":
        end_factor = cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR if cfg.SOLVER.BASE_LR else 0.0
        if not 0.0 <= end_factor <= 1.0:
            raise ValueError(
                f"SOLVER.BASE_LR_END={cfg.SOLVER.BASE_LR_END} must lie in [0, SOLVER.BASE_LR="
                f"{cfg.SOLVER.BASE_LR}]"
            )
        multiplier = CosineParamScheduler(1.0, end_factor)
    else:
        raise ValueError(
            f"Unknown SOLVER.LR_SCHEDULER_NAME {name!r}; expected 'WarmupMultiStepLR' or "
            "'WarmupCosineLR'"
        )
    multiplier = WarmupParamScheduler(
        multiplier,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier, max_iter=max_iter)

