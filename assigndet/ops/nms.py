"""Greedy non-maximum suppression with torchvision's semantics, plus an early stop (`max_output`).

Semantics (both the compiled kernels and the references):
- boxes are (x1, y1, x2, y2); a box suppresses a lower-scored one when their IoU is strictly
  greater than `iou_threshold`, with IoU = inter / (area_a + area_b - inter) in the boxes' dtype
  (fp32 for fp16/bf16 inputs) compared with the threshold as a double, as torchvision's CPU kernel;
- the kept indices come by decreasing score, equal scores by increasing index (stable sort);
- two zero-area boxes have IoU 0/0 = NaN and never suppress each other;
- with `idxs`, boxes of different ids never suppress each other; each id's result equals a separate
  `nms` call (torchvision's batched_nms may shift coordinates by an id-dependent offset for large
  inputs, which can change an IoU in its last bits; this code never does);
- `max_output` keeps the first `max_output` indices of the full result;
- NaN or inf in boxes or scores raises ValueError.

The outputs are indices: nothing here is differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._extension import compiled_op

__all__ = ["batched_nms", "batched_nms_reference", "nms", "nms_reference"]


def _check_inputs(
    fn: str, boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None
) -> int:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{fn}: boxes must be a [N, 4] tensor, got {shape}")
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"{fn}: scores must be a [N] tensor with N = {boxes.shape[0]}, got {shape}"
        )
    if not boxes.is_floating_point() or scores.dtype != boxes.dtype:
        raise ValueError(
            f"{fn}: boxes and scores must share one floating dtype, got {boxes.dtype} and "
            f"{scores.dtype}"
        )
    if scores.device != boxes.device:
        raise ValueError(
            f"{fn}: boxes and scores must be on one device, got {boxes.device} and {scores.device}"
        )
    if not isinstance(iou_threshold, (int, float)) or not math.isfinite(iou_threshold):
        raise ValueError(f"{fn}: iou_threshold must be a finite number, got {iou_threshold!r}")
    if max_output is None:
        return -1
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
        raise ValueError(f"{fn}: max_output must be None or an int >= 0, got {max_output!r}")
    return max_output


def _check_idxs(boxes: Tensor, idxs: Tensor) -> None:
    if not isinstance(idxs, Tensor) or idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
        raise ValueError(
            f"batched_nms: idxs must be a [N] tensor with N = {boxes.shape[0]}, got {shape}"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(f"batched_nms: idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.device != boxes.device:
        raise ValueError(
            f"batched_nms: idxs must be on {boxes.device} like boxes, got {idxs.device}"
        )


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None = None
) -> Tensor:
    """Greedy NMS (see the module docstring for the exact semantics).

    Args:
        boxes: Tensor[N, 4] float (x1, y1, x2, y2); fp16/bf16 are computed in fp32.
        scores: Tensor[N], same dtype as boxes.
        iou_threshold: suppress a box whose IoU with a kept higher-scored box is > this.
        max_output: stop once this many boxes are kept (None: no limit).

    Returns:
        Tensor[K] int64: indices of the kept boxes by decreasing score.
    """
    limit = _check_inputs("nms", boxes, scores, iou_threshold, max_output)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kernel = compiled_op("nms", boxes.device)
    if kernel is None:
        return nms_reference(boxes, scores, iou_threshold, max_output)
    return kernel(boxes.detach(), scores.detach(), None, float(iou_threshold), limit)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    max_output: int | None = None,
) -> Tensor:
    """Greedy NMS done independently for each value of `idxs` (class, image, or both encoded).

    Args:
        boxes: Tensor[N, 4] float (x1, y1, x2, y2); fp16/bf16 are computed in fp32.
        scores: Tensor[N], same dtype as boxes.
        idxs: Tensor[N] integer group id of each box.
        iou_threshold: suppress a box whose IoU with a kept higher-scored box of the same id is
            > this.
        max_output: keep at most this many boxes over all ids, the highest-scored (None: no limit).

    Returns:
        Tensor[K] int64: indices of the kept boxes by decreasing score, ties by increasing index.
    """
    limit = _check_inputs("batched_nms", boxes, scores, iou_threshold, max_output)
    _check_idxs(boxes, idxs)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kernel = compiled_op("nms", boxes.device)
    if kernel is None:
        return batched_nms_reference(boxes, scores, idxs, iou_threshold, max_output)
    return kernel(boxes.detach(), scores.detach(), idxs, float(iou_threshold), limit)


def nms_reference(
    boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int | None = None
) -> Tensor:
    """Pure-PyTorch `nms`: same signature and results, one Python step per kept box."""
    limit = _check_inputs("nms", boxes, scores, iou_threshold, max_output)
    boxes, scores = boxes.detach(), scores.detach()
    if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise ValueError("nms: boxes and scores must be finite, got a NaN or inf")
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    threshold = torch.tensor(iou_threshold, dtype=torch.float64, device=boxes.device)
    keep: list[Tensor] = []
    remaining = torch.arange(len(order), device=boxes.device)
    while remaining.numel() > 0 and (limit < 0 or len(keep) < limit):
        i, rest = remaining[0], remaining[1:]
        keep.append(i)
        box, others = sorted_boxes[i], sorted_boxes[rest]
        w = (torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0])).clamp(min=0)
        h = (torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        # The IoU keeps its dtype and is compared in double, as in torchvision's CPU kernel;
        # NaN (0/0) compares False.
        remaining = rest[~(iou.double() > threshold)]
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return order[torch.stack(keep)]


def batched_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    max_output: int | None = None,
) -> Tensor:
    """Pure-PyTorch `batched_nms`: same signature and results, one `nms_reference` call per id."""
    limit = _check_inputs("batched_nms", boxes, scores, iou_threshold, max_output)
    _check_idxs(boxes, idxs)
    kept = [
        members[nms_reference(boxes[members], scores[members], iou_threshold, max_output)]
        for members in (torch.nonzero(idxs == g).flatten() for g in torch.unique(idxs))
    ]
    if not kept:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    keep = torch.sort(torch.cat(kept)).values  # increasing index, so the stable sort breaks ties
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    return keep if limit < 0 else keep[:limit]
