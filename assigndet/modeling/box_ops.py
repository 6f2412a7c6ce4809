"""Box math on plain tensors that ``torchvision.ops`` does not provide.

Boxes are ``[..., 4]`` XYXY in pixels; distances are ``[..., 4]`` as (left, top, right, bottom)
from a point to the four sides of a box. For pairwise IoU/GIoU, box areas, NMS and the GIoU
loss use ``torchvision.ops`` directly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def boxes_to_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances from points to the sides of boxes; broadcasts like ``points[..., None] - boxes``.

    Args:
        points: ``[..., 2]`` (x, y).
        boxes: ``[..., 4]`` XYXY, broadcastable against ``points``.

    Returns:
        ``[..., 4]`` (x - x0, y - y0, x1 - x, y1 - y). A side is > 0 iff the point is inside
        the box on that side.
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        [x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], dim=-1
    )


def ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Boxes from points and (left, top, right, bottom) distances; the inverse of
    :func:`boxes_to_ltrb`.

    Args:
        points: ``[..., 2]`` (x, y).
        ltrb: ``[..., 4]``, broadcastable against ``points``.

    Returns:
        ``[..., 4]`` XYXY boxes (x - l, y - t, x + r, y + b).
    """
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        [x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]], dim=-1
    )


def centerness(ltrb: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.

    Args:
        ltrb: ``[..., 4]`` positive distances (points inside their box). A zero distance gives 0;
            all four zero gives NaN (0 / 0), so only call it on points strictly inside a box.

    Returns:
        ``[...]`` in [0, 1]; 1 at the box centre.
    """
    lr = ltrb[..., [0, 2]]
    tb = ltrb[..., [1, 3]]
    ratio = (lr.min(dim=-1).values / lr.max(dim=-1).values) * (
        tb.min(dim=-1).values / tb.max(dim=-1).values
    )
    return ratio.sqrt()


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of corresponding boxes (``torchvision.ops.box_iou`` is all-pairs).

    Args:
        boxes1: ``[N, 4]`` XYXY.
        boxes2: ``[N, 4]`` XYXY.
        eps: added to the union so that two empty boxes give 0, not NaN.

    Returns:
        ``[N]`` IoU in [0, 1].
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"paired_box_iou needs boxes of the same shape; got {tuple(boxes1.shape)} and "
            f"{tuple(boxes2.shape)}"
        )
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter + eps)
