import math

import pytest
import torch

from assigndet.modeling.assigners.fcos import fcos_assign, fcos_size_ranges

NUM_CLASSES = 3
RANGES = fcos_size_ranges([64, 128, 256, 512])


def _assign(points, levels, boxes, classes, **kwargs):
    """Locations given as (x, y) with their level index into P3..P7."""
    strides = torch.tensor([8.0 * 2**lvl for lvl in levels])
    ranges = torch.tensor([RANGES[lvl] for lvl in levels])
    return fcos_assign(
        torch.tensor(points, dtype=torch.float32),
        strides,
        ranges,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(classes, dtype=torch.int64),
        NUM_CLASSES,
        **kwargs,
    )


def test_size_ranges_from_sizes_of_interest():
    assert RANGES == [(0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf)]
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST"):
        fcos_size_ranges([64, 32])


def test_size_ranges_pick_one_level_per_box():
    # max distance 50 -> P3 only; 100 -> P4 only; the same centre point on P3..P5
    points = [[50, 20], [50, 20], [50, 20], [100, 20], [100, 20], [100, 20]]
    levels = [0, 1, 2, 0, 1, 2]
    small = _assign(points[:3], levels[:3], [[0, 0, 100, 40]], [2])
    assert small.labels.tolist() == [2, NUM_CLASSES, NUM_CLASSES]
    large = _assign(points[3:], levels[3:], [[0, 0, 200, 40]], [1])
    assert large.labels.tolist() == [NUM_CLASSES, 1, NUM_CLASSES]


def test_size_range_bounds_are_half_open():
    # max distance exactly 64 belongs to P4 ([64, 128)), not to P3 ([0, 64))
    out = _assign([[64, 10], [64, 10]], [0, 1], [[0, 0, 128, 20]], [0])
    assert out.labels.tolist() == [NUM_CLASSES, 0]


def test_centre_sampling():
    # box 60x60 centred at (30, 30); stride 8, radius 1.5 -> centre square [18, 42]^2
    box = [[0, 0, 60, 60]]
    inside_square, outside_square = [20, 20], [12, 30]
    out = _assign([inside_square, outside_square], [0, 0], box, [1])
    assert out.labels.tolist() == [1, NUM_CLASSES]
    assert out.matched_idxs.tolist() == [0, -1]
    # without centre sampling every in-box location is a candidate
    out = _assign([inside_square, outside_square], [0, 0], box, [1], center_sampling_radius=0)
    assert out.labels.tolist() == [1, 1]
    # a larger radius widens the square
    out = _assign([outside_square], [0], box, [1], center_sampling_radius=2.5)
    assert out.labels.tolist() == [1]


def test_centre_square_is_clipped_to_the_box():
    # thin box: the square (stride 8, radius 3) spans x in [-19, 29] but is clipped to [0, 10]
    box = [[0, 0, 10, 60]]
    out = _assign([[8, 30], [12, 30], [-2, 30]], [0, 0, 0], box, [0], center_sampling_radius=3.0)
    assert out.labels.tolist() == [0, NUM_CLASSES, NUM_CLASSES]


def test_ambiguous_location_goes_to_smallest_box():
    big, small = [0, 0, 100, 100], [20, 20, 80, 80]
    out = _assign([[50, 50]], [0], [big, small], [0, 1])
    assert out.labels.tolist() == [1] and out.matched_idxs.tolist() == [1]
    out = _assign([[50, 50]], [0], [small, big], [1, 0])
    assert out.labels.tolist() == [1] and out.matched_idxs.tolist() == [0]
    # the targets are the small box's
    assert torch.allclose(out.reg_targets[0], torch.tensor([30.0, 30.0, 30.0, 30.0]) / 8)


def test_location_outside_all_boxes_is_background():
    out = _assign([[150, 150], [50, 20]], [0, 0], [[0, 0, 100, 40], [200, 200, 260, 260]], [0, 2])
    assert out.labels.tolist() == [NUM_CLASSES, 0]
    assert out.matched_idxs.tolist() == [-1, 0]
    assert torch.equal(out.reg_targets[0], torch.zeros(4))
    assert out.centerness_targets[0].item() == 0.0


def test_regression_and_centerness_targets():
    # location (40, 20) in box [0, 0, 100, 40]: l, t, r, b = 40, 20, 60, 20
    out = _assign([[40, 20]], [0], [[0, 0, 100, 40]], [2])
    assert torch.allclose(out.reg_targets[0], torch.tensor([40.0, 20.0, 60.0, 20.0]) / 8)
    assert out.centerness_targets[0].item() == pytest.approx((40 / 60) ** 0.5)
    raw = _assign([[40, 20]], [0], [[0, 0, 100, 40]], [2], normalize_by_stride=False)
    assert torch.allclose(raw.reg_targets[0], torch.tensor([40.0, 20.0, 60.0, 20.0]))
    assert raw.centerness_targets[0].item() == pytest.approx((40 / 60) ** 0.5)


def test_no_ground_truth():
    out = _assign([[1, 1], [30, 30]], [0, 1], [], [])
    assert out.labels.tolist() == [NUM_CLASSES, NUM_CLASSES]
    assert out.matched_idxs.tolist() == [-1, -1]
    assert out.reg_targets.shape == (2, 4) and not out.reg_targets.any()
    assert out.centerness_targets.shape == (2,)


def test_vectorised_grid_matches_the_definition():
    # a full P3 grid against random boxes, checked location by location against the rules
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(12) * 8 + 4, torch.arange(16) * 8 + 4, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=1).float()
    xy = torch.rand(5, 2) * 100
    boxes = torch.cat([xy, xy + torch.rand(5, 2) * 60 + 4], dim=1)
    classes = torch.tensor([0, 1, 2, 0, 1])
    strides = torch.full((len(points),), 8.0)
    ranges = torch.tensor([RANGES[0]] * len(points))
    out = fcos_assign(points, strides, ranges, boxes, classes, NUM_CLASSES, 1.5)
    for i, (x, y) in enumerate(points.tolist()):
        best, best_area = -1, math.inf
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            sx0, sy0 = max(cx - 12, x0), max(cy - 12, y0)
            sx1, sy1 = min(cx + 12, x1), min(cy + 12, y1)
            m = max(x - x0, y - y0, x1 - x, y1 - y)
            if sx0 < x < sx1 and sy0 < y < sy1 and m < 64:
                area = (x1 - x0) * (y1 - y0)
                if area < best_area:
                    best, best_area = j, area
        assert out.matched_idxs[i].item() == best
    assert (out.labels < NUM_CLASSES).sum() > 0
