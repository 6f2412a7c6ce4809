"""Box conventions. Boxes are plain ``Tensor[N, 4]`` in XYXY absolute pixels everywhere in the
library; ``BoxMode`` only describes the ``bbox`` field of dataset dicts (detectron2's values)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch
from torch import Tensor


class BoxMode(IntEnum):
    """How a dataset dict's ``bbox`` is written. Integer values match detectron2's."""

    XYXY_ABS = 0
    XYWH_ABS = 1

    @staticmethod
    def convert(box, from_mode: BoxMode | int, to_mode: BoxMode | int):
        """Convert one box (list/tuple of 4) or an ``[N, 4]`` array/tensor between modes.

        Returns the same kind of object it was given.
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        is_sequence = isinstance(box, (list, tuple))
        if is_sequence:
            arr = torch.tensor([list(box)], dtype=torch.float64)
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(np.asarray(box, dtype=np.float64)).clone()
        else:
            arr = box.clone()
        if from_mode == BoxMode.XYWH_ABS:
            arr[..., 2:4] = arr[..., 0:2] + arr[..., 2:4]
        else:
            arr[..., 2:4] = arr[..., 2:4] - arr[..., 0:2]
        if is_sequence:
            return type(box)(arr[0].tolist())
        if isinstance(box, np.ndarray):
            return arr.numpy().astype(box.dtype)
        return arr


def clip_boxes_(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip ``boxes`` ``[N, 4]`` (XYXY) in place to an image of ``(height, width)``."""
    h, w = image_size
    boxes[:, 0].clamp_(min=0, max=w)
    boxes[:, 1].clamp_(min=0, max=h)
    boxes[:, 2].clamp_(min=0, max=w)
    boxes[:, 3].clamp_(min=0, max=h)
    return boxes


def nonempty_boxes(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """``[N]`` bool mask of boxes ``[N, 4]`` (XYXY) whose sides both exceed ``threshold``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)
