"""Inference time per image, in total and split into the model's stages.

A model may describe its inference as a chain of stages with ``inference_stages()``: a list of
``(name, fn)`` where the first ``fn`` takes the batched inputs, each later one takes the previous
one's output, and the last one returns what ``model(batched_inputs)`` returns. Each stage is
timed on its own, on inputs computed once beforehand by the stages before it, so no figure is a
difference of two noisy totals. For example FCOS has ``network`` (preprocessing, backbone, heads)
and ``postprocess`` (threshold, top-k, decoding, NMS, rescaling); GeneralizedRCNN has
``backbone``, ``first_stage``, ``second_stage`` and ``postprocess``. Other models get the full
forward's time only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["run_inference_stages", "synchronize_device", "time_inference"]


def synchronize_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_image(
    fn: Callable[[Any], Any], items: Sequence[tuple[Any, int]], device: torch.device, runs: int,
    num_iter: int,
) -> list[float]:
    """``runs`` timings of ``num_iter`` calls of ``fn`` on the ``(input, num_images)`` items in
    turn, per image."""
    data = itertools.cycle(items)
    times = []
    for _ in range(runs):
        synchronize_device(device)
        start = time.perf_counter()
        num_images = 0
        for _ in range(num_iter):
            item, count = next(data)
            fn(item)
            num_images += count
        synchronize_device(device)
        times.append((time.perf_counter() - start) / num_images)
    return times


def run_inference_stages(model: nn.Module, batched_inputs: list[dict]) -> Any:
    """The model's output computed stage by stage through ``model.inference_stages()``."""
    state: Any = batched_inputs
    for _, fn in model.inference_stages():
        state = fn(state)
    return state


def time_inference(
    model: nn.Module,
    batches: Sequence[list[dict]],
    runs: int = 5,
    num_iter: int = 10,
    warmup: int = 3,
) -> dict[str, list[float]]:
    """Seconds per image of ``runs`` timed runs of ``num_iter`` batches each.

    The model must be in eval mode; call it under ``torch.no_grad()`` (and autocast if wanted).

    Returns:
        ``{"total": [...]}`` (the full forward), then one entry per stage of
        ``model.inference_stages()`` in order, for models that have it.
    """
    device = next(model.parameters()).device
    items = [(batch, len(batch)) for batch in batches]
    for batch, _ in itertools.islice(itertools.cycle(items), warmup):
        model(batch)
    result = {"total": _seconds_per_image(model, items, device, runs, num_iter)}
    if not hasattr(model, "inference_stages"):
        return result

    stages = model.inference_stages()
    stage_inputs: list[list[tuple[Any, int]]] = [[] for _ in stages]
    for batch, count in items:
        state: Any = batch
        for inputs, (_, fn) in zip(stage_inputs, stages):
            inputs.append((state, count))
            state = fn(state)
    for inputs, (name, fn) in zip(stage_inputs, stages):
        for state, _ in itertools.islice(itertools.cycle(inputs), warmup):
            fn(state)
        result[name] = _seconds_per_image(fn, inputs, device, runs, num_iter)
    return result
