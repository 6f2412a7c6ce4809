"""Training metrics: a per-run ``EventStorage`` of scalar histories and the writers that read it.

Inside ``trainer.train()`` an ``EventStorage`` is current (``get_event_storage()``); any code may
``put_scalar``. Writers run periodically: ``CommonMetricPrinter`` (the console line),
``JSONWriter`` (``metrics.json``) and ``TensorboardXWriter`` (when tensorboard is installed).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fvcore.common.history_buffer import HistoryBuffer
from iopath.common.file_io import g_pathmgr

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "current_event_storage",
    "get_event_storage",
    "peak_memory_mb",
]

_CURRENT_STORAGE_STACK: list[EventStorage] = []


def get_event_storage() -> EventStorage:
    """The innermost ``EventStorage`` in use; raises RuntimeError outside of one."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context "
            "(trainer.train() opens one)"
        )
    return _CURRENT_STORAGE_STACK[-1]


def current_event_storage() -> EventStorage | None:
    """The innermost ``EventStorage``, or None outside of one (so that models which log
    training statistics also run outside a trainer)."""
    return _CURRENT_STORAGE_STACK[-1] if _CURRENT_STORAGE_STACK else None


class EventStorage:
    """Scalar histories keyed by name, stamped with the current iteration.

    Use as a context manager: ``with EventStorage(start_iter) as storage: ...``.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._iter = start_iter
        self._current_prefix = ""

    def put_scalar(
        self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True,
        cur_iter: int | None = None,
    ) -> None:
        """Record ``value`` for ``name`` at ``cur_iter`` (default: the current iteration).

        ``smoothing_hint`` tells writers whether to report the median of a recent window (True,
        for noisy values such as losses) or the raw latest value (False, e.g. lr or AP). The hint
        of a name must not change once set.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing = self._smoothing_hints.get(name)
        if existing is None:
            self._smoothing_hints[name] = smoothing_hint
        elif existing != smoothing_hint:
            raise ValueError(
                f"Scalar '{name}' was put with smoothing_hint={existing} before and "
                f"smoothing_hint={smoothing_hint} now; a name keeps one hint"
            )

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: int | None = None, **kwargs: float
    ) -> None:
        """``put_scalar`` for each keyword argument."""
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name`` (``.median(n)``, ``.avg(n)``, ``.latest()``,
        ``.global_avg()``, ``.values()``)."""
        if name not in self._history:
            raise KeyError(
                f"No history metric available for '{name}'; known: {sorted(self._history)}"
            )
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """name -> (latest value, iteration it was put at)."""
        return dict(self._latest_scalars)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like ``latest()``, but names put with ``smoothing_hint=True`` report the median of
        their last ``window_size`` values."""
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            result[name] = (value, itr)
        return result

    def smoothing_hints(self) -> dict[str, bool]:
        return dict(self._smoothing_hints)

    def step(self) -> None:
        """Advance the iteration counter by one."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The iteration new scalars are stamped with; the trainer sets it each step."""
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every scalar put inside the block with ``name/``."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()


class EventWriter:
    """Reads the current ``EventStorage`` and writes it somewhere."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _new_scalars_by_iter(
    storage: EventStorage, window_size: int, last_write: int
) -> dict[int, dict[str, float]]:
    by_iter: dict[int, dict[str, float]] = defaultdict(dict)
    for name, (value, itr) in storage.latest_with_smoothing_hint(window_size).items():
        if itr > last_write:
            by_iter[itr][name] = value
    return by_iter


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration to ``json_file`` (detectron2's ``metrics.json``).

    Each line holds the scalars put since the previous write, keys sorted, plus ``iteration``.
    Smoothed scalars are the median of the last ``window_size`` values. Lines are strict JSON:
    a NaN or infinite value is written as ``null``.
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._file = g_pathmgr.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter = _new_scalars_by_iter(storage, self._window_size, self._last_write)
        for itr in sorted(by_iter):
            scalars = {k: v if math.isfinite(v) else None for k, v in by_iter[itr].items()}
            line = json.dumps({"iteration": itr, **scalars}, sort_keys=True, allow_nan=False)
            self._file.write(line + "\n")
        if by_iter:
            self._last_write = max(by_iter)
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except (AttributeError, OSError):
            pass

    def close(self) -> None:
        self._file.close()


class TensorboardXWriter(EventWriter):
    """Writes scalars to TensorBoard event files in ``log_dir`` through
    ``torch.utils.tensorboard``; does nothing (one info log) when tensorboard is not installed."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any) -> None:
        self._window_size = window_size
        self._last_write = -1
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logging.getLogger(__name__).info(
                "tensorboard is not installed; TensorBoard logging is off "
                "(pip install tensorboard to enable it)"
            )
            self._writer = None
            return
        self._writer = SummaryWriter(log_dir, **kwargs)

    def write(self) -> None:
        if self._writer is None:
            return
        storage = get_event_storage()
        by_iter = _new_scalars_by_iter(storage, self._window_size, self._last_write)
        for itr in sorted(by_iter):
            for name, value in by_iter[itr].items():
                self._writer.add_scalar(name, value, itr)
        if by_iter:
            self._last_write = max(by_iter)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def peak_memory_mb() -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` when CUDA is in use, otherwise
    the peak resident set size of this process (``ru_maxrss``, so it never decreases)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class CommonMetricPrinter(EventWriter):
    """Logs detectron2's console line::

         eta: 1:02:03  iter: 19  total_loss: 2.1  loss_cls: 0.8  time: 0.4100  data_time: 0.0200
         lr: 0.00039  max_mem: 3100M

    Losses (every scalar with "loss" in its name) are medians over ``window_size`` iterations;
    ``time`` is the average since timing started, ``data_time`` the mean of the window; ``iter`` is
    0-based. ``max_mem`` is the peak
    CUDA memory allocated, or on CPU the peak resident set size of the process.
    """

    def __init__(self, max_iter: int | None = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger(__name__)
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None  # (iteration, time) for the ETA fallback

    def _eta(self, storage: EventStorage) -> str | None:
        if self._max_iter is None:
            return None
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # no iteration time recorded yet: estimate from the wall time between writes
            eta = None
            now = time.perf_counter()
            if self._last_write is not None:
                per_iter = (now - self._last_write[1]) / max(iteration - self._last_write[0], 1)
                remaining = per_iter * (self._max_iter - iteration - 1)
                eta = str(datetime.timedelta(seconds=int(remaining)))
            self._last_write = (iteration, now)
            return eta

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if self._max_iter is not None and iteration >= self._max_iter:
            return  # training has finished; this line reports progress only
        histories = storage.histories()
        parts = []
        eta = self._eta(storage)
        if eta is not None:
            parts.append(f"eta: {eta}")
        parts.append(f"iter: {iteration}")
        for name, buf in histories.items():
            if "loss" in name:
                parts.append(f"{name}: {buf.median(self._window_size):.4g}")
        if "time" in histories:
            parts.append(f"time: {histories['time'].global_avg():.4f}")
        if "data_time" in histories:
            parts.append(f"data_time: {histories['data_time'].avg(self._window_size):.4f}")
        if "lr" in histories:
            parts.append(f"lr: {histories['lr'].latest():.5g}")
        parts.append(f"max_mem: {peak_memory_mb():.0f}M")
        self.logger.info(" " + "  ".join(parts))
