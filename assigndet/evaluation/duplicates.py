"""How many detections repeat a better one: the failure that NMS exists to remove.

A detection is a duplicate when its score is above ``score_threshold`` and it overlaps a
higher-scored detection of the same class at IoU above ``iou_threshold``. The duplicate rate is
the share of detections above the score threshold that are duplicates. NMS-free detectors
(FCOS-PSS, ATSS-PSS) are meant to keep it near zero without NMS.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor
from torchvision.ops import box_iou

from assigndet.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["DuplicateRateEvaluator", "duplicate_mask"]


def duplicate_mask(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.7,
) -> Tensor:
    """Which detections above ``score_threshold`` are duplicates.

    Args:
        boxes: ``[D, 4]`` XYXY; scores: ``[D]``; classes: ``[D]`` int.
        score_threshold: only detections with a score above it are counted, and only they can
            be the better detection (a better detection has a higher score anyway).
        iou_threshold: overlap above which two same-class detections are the same object.

    Returns:
        ``[D']`` bool over the D' detections with score > ``score_threshold``, in decreasing
        score order (ties keep their input order, the earlier one counting as the better).
    """
    keep = scores > score_threshold
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    boxes, classes = boxes[keep][order].float(), classes[keep][order]
    overlaps = box_iou(boxes, boxes) > iou_threshold
    same_class = classes[:, None] == classes[None, :]
    better = torch.ones_like(overlaps).tril(diagonal=-1)  # [i, j]: j comes before i
    return (overlaps & same_class & better).any(dim=1)


class DuplicateRateEvaluator(DatasetEvaluator):
    """Duplicate rate over a dataset, summed over all ranks.

    Returns ``{"duplicates": {"rate": percent, "num_duplicates": n, "num_detections": m}}``,
    where m counts the detections above the score threshold.
    """

    def __init__(self, score_threshold: float = 0.3, iou_threshold: float = 0.7) -> None:
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self._num_duplicates = 0
        self._num_detections = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for output in outputs:
            instances = output["instances"].to("cpu")
            mask = duplicate_mask(
                instances.pred_boxes,
                instances.scores,
                instances.pred_classes,
                self.score_threshold,
                self.iou_threshold,
            )
            self._num_duplicates += int(mask.sum())
            self._num_detections += int(mask.numel())

    def evaluate(self) -> dict:
        counts = comm.gather((self._num_duplicates, self._num_detections), dst=0)
        if not comm.is_main_process():
            return {}
        duplicates = sum(c[0] for c in counts)
        detections = sum(c[1] for c in counts)
        rate = 100.0 * duplicates / detections if detections else 0.0
        return OrderedDict(
            duplicates={
                "rate": rate,
                "num_duplicates": float(duplicates),
                "num_detections": float(detections),
            }
        )
