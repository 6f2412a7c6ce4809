"""Reading images and turning dataset-dict annotations into training targets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from assigndet.structures import BoxMode, Instances, clip_boxes_, nonempty_boxes

from .transforms import Transform, apply_transforms_to_boxes

SUPPORTED_FORMATS = ("BGR", "RGB", "L")


def read_image(file_name: str, format: str = "BGR") -> np.ndarray:
    """Read an image file into a uint8 ``[H, W, C]`` array in ``format``.

    ``format`` is "BGR", "RGB" (C = 3) or "L" (grey, C = 1). opencv's ``IMREAD_COLOR`` applies the
    EXIF orientation, so the array is the upright image (the same size PIL's
    ``ImageOps.exif_transpose`` gives, which is what detectron2 and COCO's height/width use).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or ``format`` is not supported.
    """
    if format not in SUPPORTED_FORMATS:
        raise ValueError(f"Image format must be one of {SUPPORTED_FORMATS}, got '{format}'")
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"Image file not found: {file_name}")
    # imdecode from bytes: imread would hide decode errors behind a None.
    buf = np.fromfile(file_name, dtype=np.uint8)
    flag = cv2.IMREAD_GRAYSCALE if format == "L" else cv2.IMREAD_COLOR
    image = cv2.imdecode(buf, flag) if buf.size else None
    if image is None:
        raise ValueError(f"Cannot decode image file {file_name}")
    if format == "L":
        return image[:, :, None]
    if format == "RGB":
        return np.ascontiguousarray(image[:, :, ::-1])
    return image


def check_image_size(dataset_dict: dict[str, Any], image: np.ndarray) -> None:
    """Check ``image`` against the dict's height/width; fill them in when the dict lacks them."""
    h, w = image.shape[:2]
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if expected[0] is not None and expected[1] is not None and tuple(expected) != (h, w):
        raise ValueError(
            f"Image {dataset_dict.get('file_name')} (image_id {dataset_dict.get('image_id')}) is "
            f"{h}x{w} (height x width), but its dataset dict says {expected[0]}x{expected[1]}"
        )
    dataset_dict.setdefault("height", h)
    dataset_dict.setdefault("width", w)


def annotations_to_instances(
    annotations: Sequence[dict[str, Any]],
    transforms: Sequence[Transform],
    image_size: tuple[int, int],
) -> Instances:
    """Training targets from dataset-dict annotations of one image.

    Crowd annotations are left out. Boxes are converted to XYXY, transformed, clipped to the
    transformed image of ``image_size`` ``(h, w)``, and those with a side <= 1e-5 dropped.

    Returns:
        ``Instances(image_size, gt_boxes=float32 [N, 4] XYXY, gt_classes=int64 [N])``.
    """
    annos = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
        dtype=np.float64,
    ).reshape(-1, 4)
    boxes = torch.as_tensor(apply_transforms_to_boxes(transforms, boxes), dtype=torch.float32)
    classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    clip_boxes_(boxes, image_size)
    keep = nonempty_boxes(boxes, threshold=1e-5)
    return Instances(image_size, gt_boxes=boxes[keep], gt_classes=classes[keep])
