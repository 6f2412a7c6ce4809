"""Training hooks: timing, lr schedule, checkpoints, evaluation, metric writers, precise BN."""

from __future__ import annotations

import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import torch
from fvcore.common.checkpoint import Checkpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvPeriodicCheckpointer
from fvcore.common.timer import Timer

from assigndet.utils import comm
from assigndet.utils.events import EventWriter

from .train_loop import HookBase

__all__ = [
    "EvalHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "flatten_results_dict",
]

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Puts ``time`` (seconds per iteration, data loading included) from the ``warmup_iter``-th
    iteration of the run on, and logs the overall speed at the end."""

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        timed = self._total_timer.seconds()
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and timed > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                num_iter, datetime.timedelta(seconds=int(timed)), timed / num_iter,
            )
        logger.info(
            "Total training time: %s (%s on hooks)",
            datetime.timedelta(seconds=int(total_time)),
            datetime.timedelta(seconds=int(total_time - timed)),
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if done >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Calls every writer's ``write()`` each ``period`` iterations, at the last iteration, and at
    the end of training (then ``close()``)."""

    def __init__(self, writers: Iterable[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        for w in self._writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"Writers must derive from EventWriter, got {type(w).__name__}")
        self._period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1:
            for w in self._writers:
                w.write()

    def after_train(self) -> None:
        for w in self._writers:
            w.write()
            w.close()


class PeriodicCheckpointer(_FvPeriodicCheckpointer, HookBase):
    """Saves ``model_{iter:07d}.pth`` when (iter + 1) % period == 0 and ``model_final.pth`` after
    the last iteration; each file records ``iteration``."""

    def __init__(self, checkpointer: Checkpointer, period: int, file_prefix: str = "model") -> None:
        super().__init__(checkpointer, period, max_iter=None, file_prefix=file_prefix)

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        self.step(self.trainer.iter)


class LRScheduler(HookBase):
    """Puts the ``lr`` of the main param group, then steps the scheduler, every iteration.

    The main group is the one with the most parameters; when every group holds one parameter,
    the first group with the most common lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._group = main_param_group_index(optimizer)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


def main_param_group_index(optimizer: torch.optim.Optimizer) -> int:
    groups = optimizer.param_groups
    largest = max(len(g["params"]) for g in groups)
    if largest > 1:
        return next(i for i, g in enumerate(groups) if len(g["params"]) == largest)
    common_lr = Counter(g["lr"] for g in groups).most_common(1)[0][0]
    return next(i for i, g in enumerate(groups) if g["lr"] == common_lr)


def flatten_results_dict(results: Mapping) -> dict[str, float]:
    """``{"bbox": {"AP": 1.0}}`` -> ``{"bbox/AP": 1.0}`` (any depth)."""
    flat = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


class EvalHook(HookBase):
    """Runs ``eval_function()`` every ``eval_period`` iterations (not at the last one) and after a
    finished run, and puts its flattened results (``bbox/AP`` ...) into the storage unsmoothed.

    ``eval_function`` runs on every rank (evaluation is distributed); it returns a nested dict of
    numbers (empty on ranks other than the main one).
    """

    def __init__(
        self, eval_period: int, eval_function: Callable[[], Mapping], eval_after_train: bool = True
    ) -> None:
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(
                    f"The evaluation function must return a dict, got {type(results).__name__}"
                )
            flat = flatten_results_dict(results)
            for key, value in flat.items():
                try:
                    flat[key] = float(value)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"Evaluation result '{key}' must be a number, got {value!r}"
                    ) from e
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        # keep ranks in step: evaluation can take different time on different ranks
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        periodic = self._period > 0 and next_iter % self._period == 0
        if periodic and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # iter reaches max_iter only when the loop finished; no evaluation after a failure
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        del self._func  # it may hold the trainer and data loaders


class PreciseBN(HookBase):
    """Recomputes BatchNorm running statistics over ``num_iter`` training batches every
    ``period`` iterations and at the end (``TEST.PRECISE_BN``); a no-op without BN layers."""

    def __init__(
        self,
        period: int,
        model: torch.nn.Module,
        data_loader: Iterable,
        num_iter: int,
    ) -> None:
        from fvcore.nn.precise_bn import get_bn_modules

        self._model = model
        self._period = period
        self._num_iter = num_iter
        self._data_loader = data_loader
        self._data_iter = None
        if not get_bn_modules(model):
            logger.info("PreciseBN is disabled: the model has no BatchNorm layer in training mode")
            self._period = 0

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        last = next_iter == self.trainer.max_iter
        if self._period > 0 and (last or next_iter % self._period == 0):
            self.update_stats()

    def update_stats(self) -> None:
        from fvcore.nn.precise_bn import update_bn_stats

        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)

        def batches():
            for k in range(self._num_iter):
                if k % 100 == 0:
                    logger.info("Running precise BN ... %d/%d iterations", k, self._num_iter)
                yield next(self._data_iter)

        with torch.no_grad():
            update_bn_stats(self._model, batches(), self._num_iter)
