"""torchvision ResNet state dicts -> detectron2 ResNet names.

Renames: keys outside ``layer*`` get a ``stem.`` prefix; ``layerN`` -> ``res{N+1}``;
``bnK`` -> ``convK.norm``; ``downsample.0`` / ``downsample.1`` -> ``shortcut`` / ``shortcut.norm``;
the classifier ``fc.*`` and the ``num_batches_tracked`` counters are dropped. The result is
matched into the model by name heuristics.

torchvision models are trained on RGB images in [0, 1] normalised by ImageNet statistics, with
the stride of each downsampling bottleneck on its 3x3 conv. To use them set::

    INPUT.FORMAT "RGB"
    MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]
    MODEL.PIXEL_STD [58.395, 57.120, 57.375]
    MODEL.RESNETS.STRIDE_IN_1X1 False
"""

from __future__ import annotations

import re

import torch


def is_torchvision_resnet(state_dict: dict) -> bool:
    """Whether the keys look like a torchvision ResNet (``conv1``, ``bn1``, ``layer1.*``)."""
    keys = set(state_dict)
    return (
        "conv1.weight" in keys
        and "bn1.weight" in keys
        and any(k.startswith("layer1.") for k in keys)
        and not any(k.startswith("stem.") for k in keys)
    )


def convert_torchvision_resnet_name(name: str) -> str | None:
    """The detectron2 name of one torchvision ResNet key (None for a key that is dropped)."""
    if name.startswith("fc.") or name.endswith(".num_batches_tracked"):
        return None
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"^layer([1-4])\.", lambda m: f"res{int(m.group(1)) + 1}.", name)
    name = re.sub(r"(^|\.)bn([1-3])\.", r"\1conv\2.norm.", name)
    name = name.replace(".downsample.0.", ".shortcut.")
    name = name.replace(".downsample.1.", ".shortcut.norm.")
    return name


def convert_torchvision_resnet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to detectron2 names, dropping ``fc``.

    ``num_batches_tracked`` is dropped too: FrozenBatchNorm2d has no such buffer, and BatchNorm2d
    sets it to 0 when it is absent from a checkpoint without version metadata.
    """
    converted = {}
    for key, value in state_dict.items():
        new_key = convert_torchvision_resnet_name(key)
        if new_key is not None:
            converted[new_key] = value
    return converted
