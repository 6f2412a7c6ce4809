"""FCOS one-to-many assignment of locations to ground-truth boxes (Tian et al., 2019).

A location is positive for a box when it is inside the box, inside the box's centre region
(``radius * stride`` around the box centre, clipped to the box) when centre sampling is on, and
its largest distance to the box's sides falls in its level's size range. A location that
qualifies for several boxes goes to the one with the smallest area. Everything else is
background; there are no ignored locations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..box_ops import boxes_to_ltrb, centerness


class FCOSTargets(NamedTuple):
    """Per-location targets of one image; R is the number of locations over all levels.

    Attributes:
        labels: ``[R]`` int64 class in [0, num_classes); ``num_classes`` is background.
        matched_idxs: ``[R]`` int64 index of the assigned ground-truth box; -1 for background.
        reg_targets: ``[R, 4]`` (l, t, r, b) from the location to its box, divided by the
            location's stride when normalised; zeros for background.
        centerness_targets: ``[R]`` centerness of positives; 0 for background.
    """

    labels: Tensor
    matched_idxs: Tensor
    reg_targets: Tensor
    centerness_targets: Tensor

    @classmethod
    def stack(cls, per_image: list[FCOSTargets]) -> FCOSTargets:
        """The targets of N images (same R) stacked field by field: ``[N, R]`` / ``[N, R, 4]``."""
        return cls(*(torch.stack(field) for field in zip(*per_image)))


def fcos_size_ranges(sizes_of_interest: list[float]) -> list[tuple[float, float]]:
    """Per-level ``[low, high)`` ranges of max(l, t, r, b) from the level boundaries.

    ``[64, 128, 256, 512]`` gives ``[(0, 64), (64, 128), (128, 256), (256, 512), (512, inf)]``,
    one range per level P3..P7.
    """
    bounds = [float(s) for s in sizes_of_interest]
    if any(b <= a for a, b in zip(bounds, bounds[1:])) or any(b <= 0 for b in bounds):
        raise ValueError(
            f"MODEL.FCOS.SIZES_OF_INTEREST must be positive and increasing; got {sizes_of_interest}"
        )
    edges = [0.0, *bounds, math.inf]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def fcos_assign(
    points: Tensor,
    strides: Tensor,
    size_ranges: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    center_sampling_radius: float = 1.5,
    normalize_by_stride: bool = True,
) -> FCOSTargets:
    """Assign every location of one image to a ground-truth box or to background.

    Args:
        points: ``[R, 2]`` (x, y) of the locations, all levels concatenated, in input pixels.
        strides: ``[R]`` stride of each location's level.
        size_ranges: ``[R, 2]`` ``[low, high)`` range of max(l, t, r, b) for each location
            (half-open, so a box whose max distance is exactly 64 goes to P4, not to both).
        gt_boxes: ``[G, 4]`` XYXY boxes (no crowd boxes).
        gt_classes: ``[G]`` int64 classes in [0, num_classes).
        num_classes: number of foreground classes; the background label.
        center_sampling_radius: half side of the centre square in units of the stride;
            0 or less turns centre sampling off (every location inside the box is a candidate).
        normalize_by_stride: divide the regression targets by the stride.

    Returns:
        :class:`FCOSTargets` for the R locations.
    """
    num_points, num_gt = points.shape[0], gt_boxes.shape[0]
    device = points.device
    if num_gt == 0:
        return FCOSTargets(
            labels=torch.full((num_points,), num_classes, dtype=torch.int64, device=device),
            matched_idxs=torch.full((num_points,), -1, dtype=torch.int64, device=device),
            reg_targets=points.new_zeros((num_points, 4)),
            centerness_targets=points.new_zeros((num_points,)),
        )
    gt_boxes = gt_boxes.to(points.dtype)
    # [R, G, 4] distances from each location to each box
    ltrb = boxes_to_ltrb(points[:, None, :], gt_boxes[None, :, :])

    if center_sampling_radius > 0:
        centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [G, 2]
        radius = strides[:, None, None] * center_sampling_radius  # [R, 1, 1]
        region = torch.cat(
            [
                torch.max(centers[None] - radius, gt_boxes[None, :, :2]),
                torch.min(centers[None] + radius, gt_boxes[None, :, 2:]),
            ],
            dim=-1,
        )  # [R, G, 4]: the centre square clipped to the box
        is_candidate = boxes_to_ltrb(points[:, None, :], region).min(dim=-1).values > 0
    else:
        is_candidate = ltrb.min(dim=-1).values > 0

    max_dist = ltrb.max(dim=-1).values  # [R, G]
    in_range = (max_dist >= size_ranges[:, None, 0]) & (max_dist < size_ranges[:, None, 1])
    is_candidate &= in_range

    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    areas = torch.where(is_candidate, areas[None, :], torch.full_like(max_dist, math.inf))
    min_area, matched = areas.min(dim=1)  # ties go to the lower box index
    positive = torch.isfinite(min_area)

    labels = torch.where(
        positive, gt_classes.to(torch.int64)[matched], torch.full_like(matched, num_classes)
    )
    matched_idxs = torch.where(positive, matched, torch.full_like(matched, -1))
    reg = ltrb[torch.arange(num_points, device=device), matched]  # [R, 4]
    # background rows get dummy distances so that centerness never computes 0 / 0
    reg = torch.where(positive[:, None], reg, torch.ones_like(reg))
    ctr = torch.where(positive, centerness(reg), torch.zeros_like(min_area))
    reg = torch.where(positive[:, None], reg, torch.zeros_like(reg))
    if normalize_by_stride:
        reg = reg / strides[:, None]
    return FCOSTargets(labels, matched_idxs, reg, ctr)
