"""ATSS one-to-many assignment (Zhang et al., CVPR 2020) with one square anchor per location.

Each location carries one anchor: a square of side ``anchor_scale * stride`` centred on it
(8 strides, i.e. 64 to 1024 pixels on P3-P7, as the "modified RetinaNet" of the PSS paper).
For every ground-truth box, the ``topk`` anchors of each level whose centres are nearest to the
box centre are its candidates; the candidates whose IoU with the box reaches the mean plus the
(unbiased) standard deviation of the candidates' IoUs, and whose centre lies inside the box,
are its positives. A location positive for several boxes goes to the box it overlaps most.
Everything else is background; there are no ignored locations and no size ranges.

The targets are those of FCOS (:class:`FCOSTargets`): (l, t, r, b) from the location, i.e. the
anchor centre, to its box, and the centerness of the location in that box. This is the "POINT"
regression of the ATSS paper.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from assigndet.modeling.assigners.fcos import FCOSTargets
from assigndet.modeling.box_ops import boxes_to_ltrb, centerness

__all__ = ["atss_anchors", "atss_assign", "atss_candidates"]

# an anchor centre closer than this to a side of its box does not count as inside (mmdet)
_INSIDE_EPS = 0.01


def atss_anchors(points: Tensor, strides: Tensor, anchor_scale: float = 8.0) -> Tensor:
    """The square anchor of every location.

    Args:
        points: ``[R, 2]`` (x, y) anchor centres in input pixels.
        strides: ``[R]`` stride of each location's level.
        anchor_scale: side of the anchor in units of the stride.

    Returns:
        ``[R, 4]`` XYXY anchors of side ``anchor_scale * stride`` centred on ``points``.
    """
    half = (strides.to(points.dtype) * (anchor_scale / 2))[:, None]
    return torch.cat([points - half, points + half], dim=1)


def atss_candidates(
    points: Tensor, num_points_per_level: list[int], gt_centres: Tensor, topk: int = 9
) -> Tensor:
    """The ``topk`` locations of each level nearest to each box centre.

    Args:
        points: ``[R, 2]`` (x, y), levels concatenated in the order of ``num_points_per_level``.
        num_points_per_level: R_l for each level; they sum to R.
        gt_centres: ``[G, 2]`` (x, y) box centres.
        topk: candidates per level and box; a level with fewer locations gives all of them.

    Returns:
        ``[C, G]`` int64 location indices into R, C = sum over levels of min(topk, R_l); level
        by level, nearest first. Equal distances go to the lower location index (row-major, so
        upper-left first), which makes the choice at the k-th place the same on every device.
    """
    # squared distances order the locations like the L2 distances
    dist = (points[:, None, :] - gt_centres[None, :, :]).square().sum(dim=-1)  # [R, G]
    candidates, start = [], 0
    for level_dist in dist.split(list(num_points_per_level)):
        order = level_dist.argsort(dim=0, stable=True)[:topk]  # [min(topk, R_l), G]
        candidates.append(order + start)
        start += level_dist.shape[0]
    return torch.cat(candidates)


@torch.no_grad()
def atss_assign(
    points: Tensor,
    strides: Tensor,
    num_points_per_level: list[int],
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_classes: int,
    topk: int = 9,
    anchor_scale: float = 8.0,
    normalize_by_stride: bool = True,
) -> FCOSTargets:
    """Assign every location of one image to a ground-truth box or to background with ATSS.

    For box j: candidates = the ``topk`` nearest anchor centres on each level
    (:func:`atss_candidates`); threshold t_j = mean + std of the candidates' IoU with the box
    (``torch.std``, unbiased; 0 when there is a single candidate, where it is undefined);
    a candidate is positive if its IoU >= t_j and its centre is inside the box by more than
    0.01 pixel on every side. A location positive for several boxes goes to the one with the
    highest IoU; equal IoUs go to the lower box index.

    Args:
        points: ``[R, 2]`` (x, y) of the locations (anchor centres), all levels concatenated,
            in input pixels.
        strides: ``[R]`` stride of each location's level.
        num_points_per_level: R_l of each level, in the order of ``points``; they sum to R.
        gt_boxes: ``[G, 4]`` XYXY boxes (no crowd boxes).
        gt_classes: ``[G]`` int64 classes in [0, num_classes).
        num_classes: number of foreground classes; the background label.
        topk: candidates per level and box (``MODEL.ATSS.TOPK``).
        anchor_scale: anchor side in strides (``MODEL.ATSS.ANCHOR_SCALE``).
        normalize_by_stride: divide the regression targets by the stride.

    Returns:
        :class:`FCOSTargets` for the R locations: labels, matched box indices, (l, t, r, b)
        from the location to its box and centerness targets; background rows are
        (num_classes, -1, zeros, 0).
    """
    if topk < 1:
        raise ValueError(f"MODEL.ATSS.TOPK must be at least 1; got {topk}")
    if anchor_scale <= 0:
        raise ValueError(f"MODEL.ATSS.ANCHOR_SCALE must be positive; got {anchor_scale}")
    num_points, num_gt = points.shape[0], gt_boxes.shape[0]
    if sum(num_points_per_level) != num_points:
        raise ValueError(
            f"atss_assign: num_points_per_level {list(num_points_per_level)} sums to "
            f"{sum(num_points_per_level)}, but there are {num_points} points"
        )
    device = points.device
    if num_gt == 0 or num_points == 0:
        return FCOSTargets(
            labels=torch.full((num_points,), num_classes, dtype=torch.int64, device=device),
            matched_idxs=torch.full((num_points,), -1, dtype=torch.int64, device=device),
            reg_targets=points.new_zeros((num_points, 4)),
            centerness_targets=points.new_zeros((num_points,)),
        )
    gt_boxes = gt_boxes.to(points.dtype)
    ious = box_iou(atss_anchors(points, strides, anchor_scale), gt_boxes)  # [R, G]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    candidates = atss_candidates(points, num_points_per_level, gt_centres, topk)  # [C, G]

    candidate_ious = ious.gather(0, candidates)  # [C, G]
    if candidates.shape[0] > 1:
        std = candidate_ious.std(dim=0)
    else:  # the std of one value is NaN in torch; one candidate is its own threshold
        std = torch.zeros_like(candidate_ious[0])
    threshold = candidate_ious.mean(dim=0) + std  # [G]
    inside = boxes_to_ltrb(points[candidates], gt_boxes[None]).min(dim=-1).values > _INSIDE_EPS
    candidate_positive = (candidate_ious >= threshold[None]) & inside  # [C, G]
    # within a column the candidates are distinct locations, so no write is lost
    is_positive = torch.zeros_like(ious, dtype=torch.bool)
    is_positive.scatter_(0, candidates, candidate_positive)  # [R, G]

    # IoU >= 0, so -1 marks non-positive pairs; argmax returns the first maximum (lower index)
    matched = torch.where(is_positive, ious, torch.full_like(ious, -1.0)).argmax(dim=1)  # [R]
    positive = is_positive.any(dim=1)

    labels = torch.where(
        positive, gt_classes.to(torch.int64)[matched], torch.full_like(matched, num_classes)
    )
    matched_idxs = torch.where(positive, matched, torch.full_like(matched, -1))
    reg = boxes_to_ltrb(points, gt_boxes[matched])  # [R, 4]
    # background rows get dummy distances so that centerness never computes 0 / 0
    reg = torch.where(positive[:, None], reg, torch.ones_like(reg))
    ctr = torch.where(positive, centerness(reg), torch.zeros_like(reg[:, 0]))
    reg = torch.where(positive[:, None], reg, torch.zeros_like(reg))
    if normalize_by_stride:
        reg = reg / strides[:, None].to(reg.dtype)
    return FCOSTargets(labels, matched_idxs, reg, ctr)
