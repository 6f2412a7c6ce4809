"""The training loop: a trainer runs ``run_step`` between hook calls, inside an ``EventStorage``.

Hooks (``before_train``, ``before_step``, ``after_backward``, ``after_step``, ``after_train``) run
in registration order; ``after_train`` runs even when training fails.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from assigndet.utils import comm
from assigndet.utils.events import EventStorage, get_event_storage

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)


class HookBase:
    """A training hook. ``self.trainer`` is set (a weak proxy) when the hook is registered."""

    trainer: TrainerBase

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class TrainerBase:
    """Iterates ``run_step`` from ``start_iter`` to ``max_iter`` and calls the hooks.

    Attributes:
        iter: the current iteration; equals ``max_iter`` after a finished run.
        storage: the ``EventStorage`` open during ``train``.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks (None entries are skipped); they run in the order given."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"Hooks must derive from HookBase, got {type(hook).__name__}")
            # a proxy avoids a reference cycle between trainer and hooks
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # the loop variable stops at max_iter - 1; a finished run reports max_iter
                self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration: losses = model(batch), sum, backward, step.

    Args:
        model: in training mode, ``model(batch)`` returns a dict of scalar loss tensors.
        data_loader: an iterable of batches (infinite for training).
        optimizer: any torch optimizer.
    """

    def __init__(
        self, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _next_batch(self) -> tuple[object, float]:
        if not self.model.training:
            raise RuntimeError(
                f"The model is in eval mode at iteration {self.iter}; a hook left it there"
            )
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, time.perf_counter() - start

    def run_step(self) -> None:
        data, data_time = self._next_batch()
        loss_dict = self.model(data)
        losses = _sum_losses(loss_dict)
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        write_metrics(loss_dict, data_time, self.iter)


def _sum_losses(loss_dict) -> torch.Tensor:
    if not isinstance(loss_dict, Mapping) or not loss_dict:
        raise TypeError(
            "In training the model must return a non-empty dict of scalar loss tensors, got "
            f"{type(loss_dict).__name__}"
        )
    return sum(loss_dict.values())


def write_metrics(
    loss_dict: Mapping[str, torch.Tensor], data_time: float, iteration: int, prefix: str = ""
) -> None:
    """Reduce the losses over ranks (mean) and ``data_time`` (max) and put them in the storage.

    Every rank receives the reduced values, so a non-finite total raises ``FloatingPointError``
    on all ranks together.
    """
    metrics = {k: float(v.detach().float().cpu()) for k, v in loss_dict.items()}
    metrics["data_time"] = data_time
    all_metrics = comm.all_gather(metrics)
    data_time = max(m.pop("data_time") for m in all_metrics)
    means = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in all_metrics[0]}
    total = sum(means.values())
    if not math.isfinite(total):
        terms = ", ".join(f"{k}={v}" for k, v in means.items())
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration={iteration}: total_loss={total}; "
            f"loss terms (mean over {len(all_metrics)} rank(s)): {terms}"
        )
    storage = get_event_storage()
    storage.put_scalar(f"{prefix}total_loss", total)
    storage.put_scalar("data_time", data_time)
    storage.put_scalars(**{f"{prefix}{k}": v for k, v in means.items()})


class AMPTrainer(SimpleTrainer):
    """``SimpleTrainer`` under ``torch.autocast``.

    float16 uses a ``GradScaler`` (loss scaling, steps skipped on inf/NaN gradients); bfloat16
    needs none. On CPU autocast runs in bfloat16: float16 is turned into bfloat16 with a warning.
    Gradient clipping built into the optimizer (``maybe_add_gradient_clipping``) runs inside
    ``GradScaler.step`` after the gradients are unscaled.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        precision: torch.dtype = torch.float16,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        self.device_type = _model_device_type(model)
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMP precision must be float16 or bfloat16, got {precision}")
        if self.device_type == "cpu" and precision == torch.float16:
            logger.warning("AMP on CPU runs in bfloat16 (float16 was requested)")
            precision = torch.bfloat16
        self.precision = precision
        if grad_scaler is None and precision == torch.float16:
            grad_scaler = torch.amp.GradScaler(self.device_type)
        self.grad_scaler = grad_scaler

    def run_step(self) -> None:
        data, data_time = self._next_batch()
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            losses = _sum_losses(loss_dict)
        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
        else:
            self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()


def _model_device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cpu"
