"""CenterNet targets on hand-built cases: levels, gaussians, positives, box targets, MORE_POS."""

from __future__ import annotations

import math

import pytest
import torch

from assigndet.projects.centernet2.centernet_targets import (
    INF,
    assign_fpn_levels,
    flatten_level_first,
    gaussian_heatmaps,
    heatmap_distances,
    heatmap_positive_indices,
    more_positive_indices,
    regression_targets,
)

SOI = torch.tensor([[0, 80], [64, 160], [128, 320], [256, 640], [512, 1e7]])
DELTA = (1 - 0.8) / (1 + 0.8)


def _grid(height: int, width: int, stride: int) -> torch.Tensor:
    """``[H * W, 2]`` locations (j * s + s // 2, i * s + s // 2), row-major."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).float() * stride + stride // 2


def test_levels_by_half_diagonal_inclusive_and_overlapping():
    # half-diagonals 70 (two levels), 80 and 320 (upper bounds, inclusive), 160, 30, 600
    boxes = torch.tensor(
        [
            [0.0, 0.0, 84.0, 112.0],
            [0.0, 0.0, 96.0, 128.0],
            [10.0, 20.0, 394.0, 532.0],
            [0.0, 0.0, 192.0, 256.0],
            [0.0, 0.0, 36.0, 48.0],
            [0.0, 0.0, 720.0, 960.0],
        ]
    )
    levels = assign_fpn_levels(boxes, SOI)
    assert levels.tolist() == [
        [True, True, False, False, False],
        [True, True, False, False, False],
        [False, False, True, True, False],
        [False, True, True, False, False],
        [True, False, False, False, False],
        [False, False, False, True, True],
    ]
    # lower bounds are inclusive too: half-diagonal 50
    two = torch.tensor([[0.0, 50.0], [50.0, 100.0]])
    assert assign_fpn_levels(torch.tensor([[0.0, 0.0, 60.0, 80.0]]), two).tolist() == [[True, True]]


def test_gaussian_peak_radius_floor_and_cutoff():
    # centre (20, 25), area 600: 2 delta^2 A = 14.8 < 16, so r^2 = MIN_RADIUS^2 = 16
    box = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    points = _grid(8, 8, 8)
    strides = torch.full((64,), 8.0)
    dist = heatmap_distances(points, strides, box, DELTA, 4)
    hm = gaussian_heatmaps(dist, torch.tensor([1]), num_classes=2)
    assert hm.shape == (64, 2) and (hm[:, 0] == 0).all()
    at = {(int(x), int(y)): v for (x, y), v in zip(points.tolist(), hm[:, 1].tolist())}
    assert at[(20, 28)] == 1.0  # the peak cell floor(c / 8) is forced to distance 0
    assert at[(12, 28)] == pytest.approx(math.exp(-(64 + 9) / 16))
    assert at[(20, 20)] == pytest.approx(math.exp(-25 / 16))
    assert at[(60, 60)] == 0.0  # exp(-(40^2 + 35^2) / 16) < 1e-4


def test_gaussian_radius_from_area_and_peak_on_coarser_level():
    # area 8100: r^2 = 2 * 8100 / 81 = 200; centre (45, 45)
    box = torch.tensor([[0.0, 0.0, 90.0, 90.0]])
    points = torch.tensor([[44.0, 44.0], [40.0, 40.0], [40.0, 40.0], [56.0, 40.0]])
    strides = torch.tensor([8.0, 16.0, 8.0, 16.0])
    dist = heatmap_distances(points, strides, box, DELTA, 4)
    # the peak is (44, 44) at stride 8 and (40, 40) at stride 16, though the centre is (45, 45)
    assert dist[:, 0].tolist() == pytest.approx([0.0, 0.0, 50 / 200, 146 / 200])


def test_heatmaps_per_class_min_and_agnostic():
    dist = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.5, 20.0]])  # [M=2, N=3]
    classes = torch.tensor([0, 0, 2])
    hm = gaussian_heatmaps(dist, classes, num_classes=3)
    expected = [[1.0, 0.0, math.exp(-1.0)], [math.exp(-0.5), 0.0, 0.0]]  # exp(-20) < 1e-4
    assert hm.tolist() == [pytest.approx(row) for row in expected]
    agn = gaussian_heatmaps(dist, None, num_classes=1)
    assert agn[:, 0].tolist() == pytest.approx([1.0, math.exp(-0.5)])
    assert gaussian_heatmaps(dist[:, :0], classes[:0], 3).abs().sum() == 0


def test_regression_window_conditions_and_tie_break():
    points = _grid(6, 6, 8)
    strides = torch.full((36,), 8.0)
    ranges = torch.tensor([[0.0, 80.0]]).expand(36, 2)
    # A: centre (20, 20), peak cell (20, 20); B: centre (28, 20), peak (28, 20).
    boxes = torch.tensor([[8.0, 8.0, 32.0, 32.0], [14.0, 10.0, 42.0, 30.0]])
    dist = heatmap_distances(points, strides, boxes, DELTA, 4)
    targets = regression_targets(points, strides, ranges, boxes, dist)
    by_point = {(int(x), int(y)): t for (x, y), t in zip(points.tolist(), targets)}
    # only B's window reaches x = 36; it is inside B: (36-14, 20-10, 42-36, 30-20) / 8
    assert by_point[(36, 20)].tolist() == pytest.approx([22 / 8, 10 / 8, 6 / 8, 10 / 8])
    # (20, 20) is in both windows: A's peak (distance 0) beats B
    assert by_point[(20, 20)].tolist() == pytest.approx([12 / 8, 12 / 8, 12 / 8, 12 / 8])
    # (28, 20) is B's peak: B wins there
    assert by_point[(28, 20)].tolist() == pytest.approx([14 / 8, 10 / 8, 14 / 8, 10 / 8])
    # (12, 12) is in A's window and strictly inside A only
    assert by_point[(12, 12)].tolist() == pytest.approx([0.5, 0.5, 2.5, 2.5])
    # outside every window, or on a box edge (x = 44 > 42 is outside B)
    assert (by_point[(44, 20)] == -INF).all() and (by_point[(4, 4)] == -INF).all()
    assert (by_point[(20, 44)] == -INF).all()
    # the level's range must contain the half-diagonal (A: 16.97, B: 17.2)
    far = torch.tensor([[20.0, 80.0]]).expand(36, 2)
    assert (regression_targets(points, strides, far, boxes, dist) == -INF).all()
    assert (regression_targets(points, strides, ranges, boxes[:0], dist[:, :0]) == -INF).all()


def test_positive_indices_level_first_layout():
    shapes, strides = [(4, 4), (2, 2)], [8, 16]
    soi = torch.tensor([[0.0, 30.0], [10.0, 100.0]])
    boxes = [
        torch.tensor([[0.0, 0.0, 6.0, 6.0]]),  # image 0: half-diagonal 4.2 -> level 0 only
        torch.tensor([[8.0, 0.0, 32.0, 24.0], [4.0, 4.0, 12.0, 12.0]]),  # 17.0: levels 0 and 1
    ]
    classes = [torch.tensor([2]), torch.tensor([0, 1])]
    pos, labels = heatmap_positive_indices(boxes, classes, shapes, strides, soi)
    # level 0 rows: image b cell (i, j) at b * 16 + 4 i + j; level 1 starts at 2 * 16 = 32
    # image 1, object 0: centre (20, 12) -> cell (1, 2) on level 0, cell (0, 1) on level 1
    assert pos.tolist() == [0, 16 + 4 * 1 + 2, 32 + 4 + 1, 16 + 4 * 1 + 1]
    assert labels.tolist() == [2, 0, 0, 1]


def test_flatten_level_first():
    a = torch.arange(5).float()[:, None]  # image 0: 4 rows of level 0, 1 of level 1
    b = 10 + torch.arange(5).float()[:, None]
    out = flatten_level_first([a, b], [4, 1])
    assert out.flatten().tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 4, 14]


def _ltrb(point, box):
    x, y = point
    return [x - box[0], y - box[1], box[2] - x, box[3] - y]


def test_more_pos_low_loss_window_cells():
    # one level, stride 8, 4 x 4 map; box centre (16, 16) -> peak cell (2, 2) at (20, 20)
    box = [4.0, 4.0, 28.0, 28.0]
    points = _grid(4, 4, 8)
    box_reg = torch.full((16, 4), 10.0)  # far from every target: loss > 0.2
    exact = [5, 7, 11]  # window cells (1, 1), (1, 3), (2, 3): predicted exactly
    for r in exact:
        box_reg[r] = torch.tensor(_ltrb(points[r].tolist(), box)) / 8
    args = ([torch.tensor([box])], [torch.tensor([2])], [(4, 4)], [8])
    pos, labels = more_positive_indices(box_reg, *args, torch.tensor([[0.0, 1e7]]))
    # 9 valid candidates, the 9th loss > 0.2 -> threshold 0.2; the peak (row 10) is forced to 0
    assert sorted(pos.tolist()) == [5, 7, 10, 11] and labels.tolist() == [2, 2, 2, 2]
    # not assigned to the level: the peak keeps its real (large) loss
    pos, _ = more_positive_indices(box_reg, *args, torch.tensor([[100.0, 1e7]]))
    assert sorted(pos.tolist()) == [5, 7, 11]
    # threshold = the 3rd smallest loss = 0: no loss is strictly below it
    pos, _ = more_positive_indices(box_reg, *args, torch.tensor([[0.0, 1e7]]), more_pos_topk=3)
    assert pos.numel() == 0


def test_more_pos_invalid_candidates_outside_map_or_box():
    # box centre (6, 6) -> peak cell (0, 0); row and column -1 are off the map, and the
    # cells at x or y = 12 see r = b = 0.5 - 1 < 0 (the box ends at x = 10)
    box = [2.0, 2.0, 10.0, 10.0]
    box_reg = torch.zeros(16, 4)  # every valid cell would then have a loss < 1
    pos, _ = more_positive_indices(
        box_reg, [torch.tensor([box])], [torch.tensor([0])], [(4, 4)], [8], torch.tensor([[0, 1e7]])
    )
    assert pos.tolist() == [0]  # only the peak is valid (loss 0.5, forced to 0)
    empty, _ = more_positive_indices(
        box_reg, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], [(4, 4)], [8], SOI[:1]
    )
    assert empty.numel() == 0
    with pytest.raises(ValueError, match="MORE_POS_TOPK"):
        more_positive_indices(
            box_reg,
            [torch.tensor([box])],
            [torch.tensor([0])],
            [(4, 4)],
            [8],
            SOI[:1],
            more_pos_topk=10,
        )
