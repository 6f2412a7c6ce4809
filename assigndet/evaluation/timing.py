"""Inference time per image, split into the network and the post-processing.

Dense detectors of the library (FCOS and the models built on it) run inference in two public
steps: ``predict(preprocess_image(batch))`` (backbone and every head, the PSS branch included)
and ``postprocess_predictions(predictions, images, batch)`` (score threshold, top-k, decoding,
NMS or the NMS-free selection, rescaling). Each step is timed on its own: the network on the
images, the post-processing on predictions computed once beforehand, so neither figure is a
difference of two noisy totals. Other models get the full forward's time only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["synchronize_device", "time_inference"]


def synchronize_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_image(
    fn: Callable[[Any], int], items: Sequence[Any], device: torch.device, runs: int, num_iter: int
) -> list[float]:
    """``runs`` timings of ``num_iter`` calls of ``fn`` on ``items`` in turn; ``fn`` returns
    the number of images it processed."""
    data = itertools.cycle(items)
    times = []
    for _ in range(runs):
        synchronize_device(device)
        start = time.perf_counter()
        num_images = 0
        for _ in range(num_iter):
            num_images += fn(next(data))
        synchronize_device(device)
        times.append((time.perf_counter() - start) / num_images)
    return times


def _has_split_inference(model: nn.Module) -> bool:
    return all(
        hasattr(model, name) for name in ("preprocess_image", "predict", "postprocess_predictions")
    )


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
        ``{"total": [...]}`` (the full forward), plus ``"network"`` (preprocessing and
        ``predict``) and ``"postprocess"`` (``postprocess_predictions`` on cached predictions)
        for models that have those methods.
    """
    device = next(model.parameters()).device
    data = itertools.cycle(batches)
    for _ in range(warmup):
        model(next(data))

    def full(batch: list[dict]) -> int:
        model(batch)
        return len(batch)

    result = {"total": _seconds_per_image(full, batches, device, runs, num_iter)}
    if not _has_split_inference(model):
        return result

    def network(batch: list[dict]) -> int:
        model.predict(model.preprocess_image(batch))
        return len(batch)

    cached = []
    for batch in batches:
        images = model.preprocess_image(batch)
        cached.append((model.predict(images), images, batch))

    def postprocess(item: tuple[Any, Any, list[dict]]) -> int:
        predictions, images, batch = item
        model.postprocess_predictions(predictions, images, batch)
        return len(batch)

    for item in cached[:warmup]:
        postprocess(item)
    result["network"] = _seconds_per_image(network, batches, device, runs, num_iter)
    result["postprocess"] = _seconds_per_image(postprocess, cached, device, runs, num_iter)
    return result
