"""CenterNet training targets: level assignment, gaussian heatmaps, positives and box targets.

Geometry is in padded input pixels. A location p of a level with stride s sits at
(j * s + s // 2, i * s + s // 2). For an object with centre c, its "peak" cell on that level is
(floor(c_x / s), floor(c_y / s)), whose location is floor(c / s) * s + s // 2.

Batched tensors are flattened level-first, as the official code does: row
``level_start[l] + b * H_l * W_l + i * W_l + j`` holds cell (i, j) of level l of image b, where
``level_start[l]`` counts the rows of all images on the finer levels (see
:func:`flatten_level_first`). Predictions flattened the same way line up with these targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assigndet.modeling.box_ops import boxes_to_ltrb

from .centernet_losses import smoothed_ltrb_iou_loss

__all__ = [
    "INF",
    "assign_fpn_levels",
    "flatten_level_first",
    "gaussian_heatmaps",
    "heatmap_distances",
    "heatmap_positive_indices",
    "more_positive_indices",
    "regression_targets",
]

INF = 100000000.0

# (dx, dy) of the 3x3 window, row-major: index 4 is the centre cell.
_WINDOW_DX = (-1, 0, 1, -1, 0, 1, -1, 0, 1)
_WINDOW_DY = (-1, -1, -1, 0, 0, 0, 1, 1, 1)


def _half_diagonals(boxes: Tensor) -> Tensor:
    """``[N, 4]`` XYXY -> ``[N]`` sqrt(w^2 + h^2) / 2, the size measure of level assignment."""
    return ((boxes[:, 2:] - boxes[:, :2]) ** 2).sum(dim=1).sqrt() / 2


def _peak_locations(centers: Tensor, strides: Tensor) -> Tensor:
    """Location of the cell containing each centre: floor(c / s) * s + s // 2 (broadcasts).

    ``centers`` ``[..., 2]`` and ``strides`` ``[...]``; returns ``[..., 2]``.
    """
    s = strides[..., None]
    return torch.floor(centers / s) * s + torch.div(s, 2, rounding_mode="floor")


def assign_fpn_levels(boxes: Tensor, sizes_of_interest: Tensor) -> Tensor:
    """Levels each object is assigned to: lo <= half-diagonal <= hi (both inclusive).

    The ranges overlap (e.g. [0, 80] and [64, 160]), so an object can be on two levels.

    Args:
        boxes: ``[N, 4]`` XYXY.
        sizes_of_interest: ``[L, 2]`` (lo, hi) per level.

    Returns:
        ``[N, L]`` bool.
    """
    d = _half_diagonals(boxes)[:, None]
    soi = sizes_of_interest.to(boxes)
    return (d >= soi[None, :, 0]) & (d <= soi[None, :, 1])


def heatmap_distances(
    points: Tensor, strides: Tensor, boxes: Tensor, delta: float, min_radius: float
) -> Tensor:
    """Squared distance of every location to every object's centre, over its squared radius.

    D(p, n) = |p - c_n|^2 / r_n^2 with the continuous centre c_n and
    r_n^2 = max(2 delta^2 area_n, min_radius^2); D is exactly 0 at the object's peak cell on
    every level.

    Args:
        points: ``[M, 2]`` locations (x, y).
        strides: ``[M]`` stride of each location.
        boxes: ``[N, 4]`` XYXY.
        delta: (1 - HM_MIN_OVERLAP) / (1 + HM_MIN_OVERLAP).
        min_radius: MIN_RADIUS, in pixels.

    Returns:
        ``[M, N]``.
    """
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    peaks = _peak_locations(centers[None], strides[:, None].to(centers))  # [M, N, 2]
    is_peak = (points[:, None, :] == peaks).all(dim=2)
    dist2 = ((points[:, None, :] - centers[None]) ** 2).sum(dim=2)
    dist2 = dist2.masked_fill(is_peak, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    radius2 = (2 * delta**2 * area).clamp(min=float(min_radius) ** 2)
    return dist2 / radius2[None]


def gaussian_heatmaps(distances: Tensor, classes: Tensor | None, num_classes: int) -> Tensor:
    """Heatmap targets Y = exp(-min D) over the objects of each class; values < 1e-4 become 0.

    Every object is rendered on every level, so on a level it is not assigned to its peak cell
    still has Y = 1: the focal loss then gives that cell no negative weight, and it is no
    positive either.

    Args:
        distances: ``[M, N]`` from :func:`heatmap_distances`.
        classes: ``[N]`` int64 classes, or None for the class-agnostic map (min over all
            objects; then ``num_classes`` must be 1).
        num_classes: C, the channels of the output.

    Returns:
        ``[M, C]``; zeros when N = 0.
    """
    num_locations, num_objects = distances.shape
    heatmaps = distances.new_zeros((num_locations, num_classes))
    if num_objects == 0:
        return heatmaps
    if classes is None:
        if num_classes != 1:
            raise ValueError(f"the agnostic heatmap has 1 channel; got num_classes={num_classes}")
        heatmaps[:, 0] = torch.exp(-distances.min(dim=1).values)
    else:
        for c in torch.unique(classes).tolist():
            heatmaps[:, c] = torch.exp(-distances[:, classes == c].min(dim=1).values)
    return heatmaps.masked_fill(heatmaps < 1e-4, 0.0)


def regression_targets(
    points: Tensor,
    strides: Tensor,
    size_ranges: Tensor,
    boxes: Tensor,
    distances: Tensor,
) -> Tensor:
    """(l, t, r, b) targets in strides of the cells near each object's centre; -INF elsewhere.

    A location p gets object n when (1) it lies in the 3x3 window around n's peak cell on its
    level (|p - peak| <= s on both axes), (2) it is strictly inside the box, and (3) n's
    half-diagonal lies in the level's range. Among several such objects the one with the
    smallest ``distances[p, n]`` wins (the first on ties).

    Args:
        points: ``[M, 2]`` locations; strides: ``[M]``.
        size_ranges: ``[M, 2]`` (lo, hi) of each location's level.
        boxes: ``[N, 4]`` XYXY.
        distances: ``[M, N]`` from :func:`heatmap_distances`.

    Returns:
        ``[M, 4]``: (p_x - x1, p_y - y1, x2 - p_x, y2 - p_y) / s, or -INF in all four.
    """
    num_locations = points.shape[0]
    if boxes.shape[0] == 0:
        return points.new_full((num_locations, 4), -INF)
    ltrb = boxes_to_ltrb(points[:, None, :], boxes[None])  # [M, N, 4]
    in_box = ltrb.min(dim=2).values > 0
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    peaks = _peak_locations(centers[None], strides[:, None].to(centers))  # [M, N, 2]
    in_window = ((points[:, None, :] - peaks).abs() <= strides[:, None, None]).all(dim=2)
    # the size test on the distances themselves, as the official code does
    half_diag = ((ltrb[..., :2] + ltrb[..., 2:]) ** 2).sum(dim=2).sqrt() / 2
    in_range = (half_diag >= size_ranges[:, :1]) & (half_diag <= size_ranges[:, 1:])
    valid = in_window & in_box & in_range
    masked = torch.where(valid, distances, torch.full_like(distances, INF))
    min_dist, best = masked.min(dim=1)
    targets = ltrb[torch.arange(num_locations, device=points.device), best] / strides[:, None]
    return targets.masked_fill((min_dist == INF)[:, None], -INF)


def flatten_level_first(per_image: list[Tensor], num_locations: list[int]) -> Tensor:
    """Per-image ``[M, ...]`` tensors (M = sum of ``num_locations``) -> ``[B * M, ...]``,
    level-first: all images' rows of level 0, then of level 1, ..."""
    split = [t.split(num_locations, dim=0) for t in per_image]
    return torch.cat([torch.cat(level, dim=0) for level in zip(*split)], dim=0)


def _level_starts(shapes: list[tuple[int, int]], num_images: int) -> list[int]:
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += num_images * h * w
    return starts


def heatmap_positive_indices(
    gt_boxes: list[Tensor],
    gt_classes: list[Tensor],
    shapes: list[tuple[int, int]],
    strides: list[int],
    sizes_of_interest: Tensor,
) -> tuple[Tensor, Tensor]:
    """One positive per object and assigned level: its peak cell, in the level-first layout.

    Ordered by image, object, level. An object whose peak cell falls outside a level's map (a
    centre outside the padded image) gets no positive there.

    Args:
        gt_boxes: per image, ``[N_b, 4]`` XYXY.
        gt_classes: per image, ``[N_b]`` int64.
        shapes: (H_l, W_l) of each level.
        strides: stride of each level.
        sizes_of_interest: ``[L, 2]``.

    Returns:
        ``(pos_inds [P], labels [P])``, int64.
    """
    num_images = len(gt_boxes)
    starts = _level_starts(shapes, num_images)
    pos_inds, labels = [], []
    for b, (boxes, classes) in enumerate(zip(gt_boxes, gt_classes)):
        device = boxes.device
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
        s = torch.tensor(strides, dtype=centers.dtype, device=device)  # [L]
        cells = torch.floor(centers[:, None, :] / s[None, :, None]).long()  # [N, L, 2]
        h = torch.tensor([hw[0] for hw in shapes], device=device)
        w = torch.tensor([hw[1] for hw in shapes], device=device)
        inside = (cells >= 0).all(dim=2) & (cells[..., 0] < w) & (cells[..., 1] < h)
        base = torch.tensor(starts, device=device) + b * h * w  # [L]
        index = base[None] + cells[..., 1] * w[None] + cells[..., 0]  # [N, L]
        keep = assign_fpn_levels(boxes, sizes_of_interest) & inside
        pos_inds.append(index[keep])
        labels.append(classes[:, None].expand_as(index)[keep])
    device = gt_boxes[0].device if gt_boxes else torch.device("cpu")
    if not pos_inds:
        return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(
            0, dtype=torch.int64, device=device
        )
    return torch.cat(pos_inds).long(), torch.cat(labels).long()


@torch.no_grad()
def more_positive_indices(
    box_reg: Tensor,
    gt_boxes: list[Tensor],
    gt_classes: list[Tensor],
    shapes: list[tuple[int, int]],
    strides: list[int],
    sizes_of_interest: Tensor,
    more_pos_thresh: float = 0.2,
    more_pos_topk: int = 9,
    loc_loss_type: str = "giou",
) -> tuple[Tensor, Tensor]:
    """``MORE_POS`` positives: the 3x3-window cells whose current box loss is small.

    For each object, the candidates are the 9 cells around its peak cell on each of the L
    levels. A candidate is valid when it lies inside the map and its own target (the peak
    cell's target shifted by the cell offset, in strides) is >= 0 on all four sides. Its loss
    is the IoU loss of the (detached) prediction at that cell against that target; invalid
    candidates get INF and the peak cell of each level the object is assigned to (with a
    target >= 0) gets 0. Candidates with a loss below min(``more_pos_topk``-th smallest loss,
    ``more_pos_thresh``) become positives, on assigned levels or not. These positives replace
    those of :func:`heatmap_positive_indices`.

    Args:
        box_reg: ``[R, 4]`` predicted (l, t, r, b) in strides, flattened level-first.
        gt_boxes, gt_classes, shapes, strides, sizes_of_interest: as in
            :func:`heatmap_positive_indices`.
        more_pos_thresh: the loss threshold.
        more_pos_topk: at most this many candidates per object (ties aside), <= 9 L.
        loc_loss_type: the IoU loss type.

    Returns:
        ``(pos_inds [P], labels [P])``, ordered by object, level, window cell.
    """
    num_levels = len(strides)
    if not 1 <= more_pos_topk <= 9 * num_levels:
        raise ValueError(
            f"MODEL.CENTERNET.MORE_POS_TOPK must be in [1, 9 * {num_levels} levels]; "
            f"got {more_pos_topk}"
        )
    device = box_reg.device
    num_images = len(gt_boxes)
    starts = torch.tensor(_level_starts(shapes, num_images), device=device)
    h = torch.tensor([hw[0] for hw in shapes], device=device)
    w = torch.tensor([hw[1] for hw in shapes], device=device)
    s = torch.tensor(strides, dtype=torch.float32, device=device)
    dx = torch.tensor(_WINDOW_DX, device=device)
    dy = torch.tensor(_WINDOW_DY, device=device)
    # the cell (dx, dy) strides away from the peak sees (l + dx, t + dy, r - dx, b - dy)
    shift = torch.stack([dx, dy, -dx, -dy], dim=1).float()  # [9, 4]

    all_inds, all_labels, all_valid, all_regs, all_assigned = [], [], [], [], []
    for b, (boxes, classes) in enumerate(zip(gt_boxes, gt_classes)):
        if boxes.shape[0] == 0:
            continue
        boxes = boxes.float()
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        cells = torch.floor(centers[:, None, :] / s[None, :, None]).long()  # [N, L, 2]
        peaks = _peak_locations(centers[:, None, :], s[None, :])  # [N, L, 2]
        reg = boxes_to_ltrb(peaks, boxes[:, None, :]) / s[None, :, None]  # [N, L, 4]
        assigned = (reg.min(dim=2).values >= 0) & assign_fpn_levels(boxes, sizes_of_interest)
        cx = cells[..., 0, None] + dx  # [N, L, 9]
        cy = cells[..., 1, None] + dy
        in_map = (cx >= 0) & (cx < w[:, None]) & (cy >= 0) & (cy < h[:, None])
        regs = reg[:, :, None, :] + shift  # [N, L, 9, 4]
        valid = in_map & (regs.min(dim=3).values >= 0)
        inds = (starts + b * h * w)[:, None] + cy * w[:, None] + cx
        all_inds.append(torch.where(valid, inds, torch.zeros_like(inds)))
        all_labels.append(classes)
        all_valid.append(valid)
        all_regs.append(regs)
        all_assigned.append(assigned & in_map[..., 4])
    if not all_inds:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone()

    inds = torch.cat(all_inds)  # [N, L, 9]
    labels = torch.cat(all_labels).long()  # [N]
    valid = torch.cat(all_valid)
    regs = torch.cat(all_regs)
    assigned = torch.cat(all_assigned)  # [N, L]
    num_objects = inds.shape[0]
    loss = smoothed_ltrb_iou_loss(
        box_reg.detach()[inds.reshape(-1)], regs.reshape(-1, 4).clamp(min=0), loc_loss_type
    ).reshape(inds.shape)
    loss = loss.masked_fill(~valid, INF)
    loss[..., 4] = loss[..., 4].masked_fill(assigned, 0.0)
    flat = loss.reshape(num_objects, -1)
    thresh = torch.kthvalue(flat, more_pos_topk, dim=1).values.clamp(max=more_pos_thresh)
    new_pos = loss < thresh[:, None, None]
    pos_inds = inds[new_pos]
    pos_labels = labels[:, None, None].expand_as(inds)[new_pos]
    return pos_inds, pos_labels
