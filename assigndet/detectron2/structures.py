"""detectron2's structures <-> assigndet's, sharing every tensor (no copy).

detectron2 wraps boxes in ``Boxes`` (``.tensor`` ``[N, 4]`` XYXY); assigndet keeps the bare
tensor. Everything else (``Instances`` fields, ``ImageList``, ``ShapeSpec``) carries the same
data under the same names, so a conversion re-wraps the same objects.
"""

from __future__ import annotations

from typing import Any

from detectron2.layers import ShapeSpec as D2ShapeSpec
from detectron2.structures import Boxes
from detectron2.structures import ImageList as D2ImageList
from detectron2.structures import Instances as D2Instances

from assigndet.layers import ShapeSpec
from assigndet.structures import ImageList, Instances

__all__ = [
    "image_list_from_d2",
    "inputs_from_d2",
    "instances_from_d2",
    "instances_to_d2",
    "outputs_to_d2",
    "shapes_to_d2",
]


def instances_from_d2(instances: D2Instances) -> Instances:
    """assigndet ``Instances`` with the same fields; each ``Boxes`` becomes its tensor."""
    fields = {
        name: value.tensor if isinstance(value, Boxes) else value
        for name, value in instances.get_fields().items()
    }
    return Instances(instances.image_size, **fields)


def instances_to_d2(instances: Instances) -> D2Instances:
    """detectron2 ``Instances`` with the same fields; each ``*_boxes`` tensor becomes ``Boxes``."""
    fields = {
        name: Boxes(value) if name.endswith("boxes") else value
        for name, value in instances.get_fields().items()
    }
    return D2Instances(instances.image_size, **fields)


def image_list_from_d2(images: D2ImageList) -> ImageList:
    """assigndet ``ImageList`` over the same padded tensor ``[N, C, H, W]``."""
    return ImageList(images.tensor, [tuple(s) for s in images.image_sizes])


def shapes_to_d2(shapes: dict[str, ShapeSpec]) -> dict[str, D2ShapeSpec]:
    """detectron2 ``ShapeSpec`` of every feature map."""
    return {
        name: D2ShapeSpec(channels=s.channels, height=s.height, width=s.width, stride=s.stride)
        for name, s in shapes.items()
    }


def inputs_from_d2(batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model input dicts with their ``"instances"`` / ``"proposals"`` as assigndet ``Instances``
    (the dicts are shallow copies; images and other entries are shared)."""
    converted = []
    for x in batched_inputs:
        x = dict(x)
        for key in ("instances", "proposals"):
            if isinstance(x.get(key), D2Instances):
                x[key] = instances_from_d2(x[key])
        converted.append(x)
    return converted


def outputs_to_d2(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model output dicts with their ``"instances"`` as detectron2 ``Instances``."""
    return [
        {k: instances_to_d2(v) if isinstance(v, Instances) else v for k, v in out.items()}
        for out in outputs
    ]
