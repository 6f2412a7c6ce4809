"""Inference time per image, split into the network and the post-processing.

Dense detectors of the library (FCOS and the models built on it) expose ``preprocess_image``
and ``predict`` (backbone and every head, the PSS branch included): their network time
is measured by running exactly those, and the post-processing time is the full forward's time
minus the network's (medians over runs). Other models get the full time only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["synchronize_device", "time_inference"]


def synchronize_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network_only(model: nn.Module, batch: list[dict]) -> None:
    model.predict(model.preprocess_image(batch))


def _seconds_per_image(fn, model, batches, runs: int, num_iter: int) -> list[float]:
    device = next(model.parameters()).device
    data = itertools.cycle(batches)
    times = []
    for _ in range(runs):
        synchronize_device(device)
        start = time.perf_counter()
        num_images = 0
        for _ in range(num_iter):
            batch = next(data)
            fn(model, batch)
            num_images += len(batch)
        synchronize_device(device)
        times.append((time.perf_counter() - start) / num_images)
    return times


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
        ``{"total": [...]}``, plus ``"network"`` and ``"postprocess"`` (total minus network,
        per run, floored at 0) for models with ``preprocess_image`` and ``predict``.
    """
    data = itertools.cycle(batches)
    for _ in range(warmup):
        model(next(data))
    total = _seconds_per_image(lambda m, b: m(b), model, batches, runs, num_iter)
    result = {"total": total}
    if hasattr(model, "preprocess_image") and hasattr(model, "predict"):
        network = _seconds_per_image(_network_only, model, batches, runs, num_iter)
        result["network"] = network
        result["postprocess"] = [max(t - n, 0.0) for t, n in zip(total, network)]
    return result

