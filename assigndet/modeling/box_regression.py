"""The R-CNN box coder: boxes as (dx, dy, dw, dh) offsets from a reference box.

Parametrisation (detectron2's, so that its weights load): with a reference box of width w =
x2 - x1 (no +1), height h and centre (x, y), a target box of width w', height h' and centre
(x', y') is coded as

    dx = wx * (x' - x) / w,   dy = wy * (y' - y) / h,
    dw = ww * log(w' / w),    dh = wh * log(h' / h).

Decoding inverts this after dividing by the weights and clamping dw, dh at ``scale_clamp``, so
that a large predicted scale cannot overflow ``exp``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Box2BoxTransform"]

# A predicted box may grow at most 1000 / 16 times its reference box per side.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """Encode target boxes as deltas from reference boxes, and decode deltas back into boxes.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the four deltas (e.g. (10, 10, 5, 5) for the
            Fast R-CNN head, (1, 1, 1, 1) for the RPN).
        scale_clamp: upper bound on the decoded dw, dh (before ``exp``).
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP) -> None:
        if len(weights) != 4:
            raise ValueError(
                f"Box2BoxTransform weights must be 4 numbers (wx, wy, ww, wh); got {weights!r}"
            )
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Deltas that turn ``src_boxes`` into ``target_boxes``.

        Args:
            src_boxes: ``[R, 4]`` XYXY reference boxes with positive width and height.
            target_boxes: ``[R, 4]`` XYXY boxes to encode.

        Returns:
            ``[R, 4]`` (dx, dy, dw, dh), in the dtype of the boxes.
        """
        if src_boxes.shape != target_boxes.shape or src_boxes.dim() != 2:
            raise ValueError(
                "Box2BoxTransform.get_deltas needs two [R, 4] tensors; got "
                f"{tuple(src_boxes.shape)} and {tuple(target_boxes.shape)}"
            )
        src_widths = src_boxes[:, 2] - src_boxes[:, 0]
        src_heights = src_boxes[:, 3] - src_boxes[:, 1]
        if not bool(((src_widths > 0) & (src_heights > 0)).all()):
            raise ValueError(
                "Box2BoxTransform.get_deltas: every source box needs a positive width and height"
            )
        src_ctr_x = src_boxes[:, 0] + 0.5 * src_widths
        src_ctr_y = src_boxes[:, 1] + 0.5 * src_heights

        target_widths = target_boxes[:, 2] - target_boxes[:, 0]
        target_heights = target_boxes[:, 3] - target_boxes[:, 1]
        target_ctr_x = target_boxes[:, 0] + 0.5 * target_widths
        target_ctr_y = target_boxes[:, 1] + 0.5 * target_heights

        wx, wy, ww, wh = self.weights
        dx = wx * (target_ctr_x - src_ctr_x) / src_widths
        dy = wy * (target_ctr_y - src_ctr_y) / src_heights
        dw = ww * torch.log(target_widths / src_widths)
        dh = wh * torch.log(target_heights / src_heights)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Decode ``deltas`` relative to ``boxes``.

        Args:
            deltas: ``[R, 4 * k]``: k sets of (dx, dy, dw, dh) per box (k = 1 for class-agnostic
                regression, the number of classes otherwise).
            boxes: ``[R, 4]`` XYXY reference boxes.

        Returns:
            ``[R, 4 * k]`` XYXY boxes, in float32 (or the float dtype of ``deltas`` if wider).
        """
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0 or boxes.shape != (len(deltas), 4):
            raise ValueError(
                "Box2BoxTransform.apply_deltas needs deltas [R, 4k] and boxes [R, 4]; got "
                f"{tuple(deltas.shape)} and {tuple(boxes.shape)}"
            )
        if deltas.dtype not in (torch.float32, torch.float64):
            deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)

        widths = boxes[:, 2:3] - boxes[:, 0:1]
        heights = boxes[:, 3:4] - boxes[:, 1:2]
        ctr_x = boxes[:, 0:1] + 0.5 * widths
        ctr_y = boxes[:, 1:2] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights

        pred_boxes = torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ),
            dim=-1,
        )  # [R, k, 4]
        return pred_boxes.reshape(deltas.shape)
