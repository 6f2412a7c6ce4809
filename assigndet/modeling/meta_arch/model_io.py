"""The detectron2 model I/O shared by the meta-architectures: the pixel statistics, input dicts
to a normalised, padded batch; the ground truth of training inputs; detections rescaled to each
output size."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...structures import ImageList, Instances
from ..postprocessing import detector_postprocess

__all__ = ["batch_images", "gt_instances", "register_pixel_statistics", "rescale_detections"]


def register_pixel_statistics(
    module: nn.Module, pixel_mean: list[float], pixel_std: list[float], persistent: bool = False
) -> None:
    """Register ``pixel_mean`` and ``pixel_std`` (MODEL.PIXEL_MEAN / PIXEL_STD) on ``module`` as
    ``[C, 1, 1]`` buffers; ``persistent`` puts them in the state dict."""
    if len(pixel_mean) != len(pixel_std):
        raise ValueError(
            f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
            "must have the same length"
        )
    module.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent)
    module.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent)


def batch_images(
    batched_inputs: list[dict[str, Any]],
    pixel_mean: Tensor,
    pixel_std: Tensor,
    size_divisibility: int,
    model_name: str,
) -> ImageList:
    """``(image - pixel_mean) / pixel_std`` of every input's ``"image"`` ``[C, H, W]``, padded
    into one batch whose sides are multiples of ``size_divisibility``, on the device of
    ``pixel_mean`` (``[C, 1, 1]``)."""
    images = []
    for i, x in enumerate(batched_inputs):
        if "image" not in x:
            raise KeyError(f"{model_name} input {i} has no 'image'; it has {sorted(x)}")
        images.append((x["image"].to(pixel_mean.device).float() - pixel_mean) / pixel_std)
    return ImageList.from_tensors(images, size_divisibility)


def gt_instances(
    batched_inputs: list[dict[str, Any]], device: torch.device, model_name: str
) -> list[Instances]:
    """Every training input's ``"instances"`` on ``device``; a KeyError names the inputs that
    have none."""
    missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
    if missing:
        raise KeyError(
            f"{model_name} training inputs {missing} have no 'instances' (the ground truth); "
            "training needs them in every input dict"
        )
    return [x["instances"].to(device) for x in batched_inputs]


def rescale_detections(
    results: list[Instances],
    batched_inputs: list[dict[str, Any]],
    image_sizes: list[tuple[int, int]],
) -> list[dict[str, Instances]]:
    """``[{"instances": ...}]``: each image's detections rescaled from its input size to its
    requested ``"height"`` / ``"width"`` (the input size when absent)."""
    processed = []
    for result, x, image_size in zip(results, batched_inputs, image_sizes, strict=True):
        height = x.get("height", image_size[0])
        width = x.get("width", image_size[1])
        processed.append({"instances": detector_postprocess(result, height, width)})
    return processed
