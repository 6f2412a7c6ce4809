import math
import statistics

import pytest
import torch

from assigndet.modeling.meta_arch.fcos import compute_locations
from assigndet.projects.pss.atss_assign import atss_anchors, atss_assign, atss_candidates

NUM_CLASSES = 3
BG = NUM_CLASSES
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _assign(points, boxes, classes, stride=8.0, per_level=None, **kwargs):
    """One level (unless ``per_level`` is given) of points with the same stride."""
    points = torch.tensor(points, dtype=torch.float32)
    return atss_assign(
        points,
        torch.full((len(points),), stride),
        per_level or [len(points)],
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(classes, dtype=torch.int64),
        NUM_CLASSES,
        **kwargs,
    )


def test_anchors_are_squares_of_anchor_scale_strides():
    anchors = atss_anchors(torch.tensor([[4.0, 4.0], [24.0, 8.0]]), torch.tensor([8.0, 16.0]))
    assert anchors.tolist() == [[-28, -28, 36, 36], [-40, -56, 88, 72]]
    anchors = atss_anchors(torch.tensor([[8.0, 8.0]]), torch.tensor([8.0]), anchor_scale=2.0)
    assert anchors.tolist() == [[0, 0, 16, 16]]


def test_candidates_are_the_topk_nearest_per_level():
    # level 0: stride 8, x = 4, 12, ..., 60; level 1: stride 16, x = 8, 24, 40, 56; level 2: one
    p0 = [[4.0 + 8 * i, 4.0] for i in range(8)]
    p1 = [[8.0 + 16 * i, 8.0] for i in range(4)]
    points = torch.tensor(p0 + p1 + [[16.0, 16.0]])
    # centre x = 26: level 0 nearest x = 28, 20, 36 (idx 3, 2, 4); level 1 x = 24, 40, 8
    # (idx 8 + 1, 8 + 2, 8 + 0); level 2 has a single location, fewer than k = 3: idx 12
    out = atss_candidates(points, [8, 4, 1], torch.tensor([[26.0, 4.0], [60.0, 4.0]]), topk=3)
    assert out.shape == (7, 2) and out.dtype == torch.int64
    assert out[:, 0].tolist() == [3, 2, 4, 9, 10, 8, 12]
    # centre x = 60: x = 60, 52, 44 on level 0; x = 56, 40, 24 on level 1
    assert out[:, 1].tolist() == [7, 6, 5, 11, 10, 9, 12]


def test_candidate_ties_go_to_the_lower_location_index():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    # centre x = 16: x = 12 and 20 are both 4 away, as are 4 and 28 at 12
    out = atss_candidates(points, [4], torch.tensor([[16.0, 4.0]]), topk=3)
    assert out[:, 0].tolist() == [1, 2, 0]


def test_threshold_is_mean_plus_unbiased_std_of_candidate_ious():
    # anchor side 16 (stride 8, scale 2), box [0, 0, 16, 16]: a point shifted by d from the box
    # centre along x has IoU (16 - d) / (16 + d): d = 0, 2, 4, 6 give 1, 7/9, 3/5, 5/11, all
    # inside the box; five points at x >= 48 have IoU 0. One level of 9 points, k = 9.
    points = [[8.0 + d, 8.0] for d in (0, 2, 4, 6)] + [[48.0 + 16 * i, 8.0] for i in range(5)]
    ious = [1, 7 / 9, 3 / 5, 5 / 11, 0, 0, 0, 0, 0]
    threshold = statistics.mean(ious) + statistics.stdev(ious)  # 0.3147 + 0.4000
    assert 3 / 5 < threshold < 7 / 9
    out = _assign(points, [[0, 0, 16, 16]], [1], anchor_scale=2.0)
    # d = 4 and 6 are inside the box but below the threshold
    assert out.labels.tolist() == [1, 1] + [BG] * 7
    assert out.matched_idxs.tolist() == [0, 0] + [-1] * 7


def test_std_is_unbiased_so_two_candidates_give_no_positive():
    # IoUs 1 and 3/5: mean 0.8, unbiased std 0.2 * sqrt(2), threshold 1.083 > 1. (The biased
    # std 0.2 would give threshold 1 and make the first point positive.)
    out = _assign([[8.0, 8.0], [12.0, 8.0]], [[0, 0, 16, 16]], [2], anchor_scale=2.0)
    assert out.labels.tolist() == [BG, BG]
    assert out.matched_idxs.tolist() == [-1, -1]
    assert out.reg_targets.abs().sum() == 0 and out.centerness_targets.abs().sum() == 0


def test_anchor_centre_must_be_inside_the_box_by_more_than_0_01():
    # anchor side 32 (stride 8, scale 4) around (x, 5) contains the box [0, 0, 10, 10] for all x
    # below: every IoU is 100 / 1024, so the threshold is 100 / 1024 and only the centre test
    # decides. Distances to the right side: 5, 1/64 (> 0.01), 1/128 (< 0.01), -2.
    xs = [5.0, 10 - 1 / 64, 10 - 1 / 128, 12.0]
    out = _assign([[x, 5.0] for x in xs], [[0, 0, 10, 10]], [0], anchor_scale=4.0)
    assert out.labels.tolist() == [0, 0, BG, BG]


def test_location_claimed_by_two_boxes_goes_to_the_higher_iou():
    # one location (8, 8) with anchor [0, 0, 16, 16]; a single candidate is its own threshold
    tall, square = [0, 0, 16, 32], [0, 0, 16, 16]  # IoU 1/2 and 1
    out = _assign([[8.0, 8.0]], [tall, square], [0, 1], anchor_scale=2.0)
    assert out.labels.tolist() == [1] and out.matched_idxs.tolist() == [1]
    assert out.reg_targets.tolist() == [[1, 1, 1, 1]]  # (8, 8, 8, 8) / 8
    assert out.centerness_targets.tolist() == [1.0]
    out = _assign([[8.0, 8.0]], [square, tall], [1, 0], anchor_scale=2.0)
    assert out.matched_idxs.tolist() == [0]


def test_equal_ious_go_to_the_lower_box_index():
    tall, up = [0, 0, 16, 32], [0, -16, 16, 16]  # both IoU 1/2 with [0, 0, 16, 16]
    out = _assign([[8.0, 8.0]], [tall, up], [0, 2], anchor_scale=2.0)
    assert out.labels.tolist() == [0] and out.matched_idxs.tolist() == [0]
    # (8, 8, 8, 24) / 8; centerness sqrt(1 * 8 / 24)
    assert out.reg_targets.tolist() == [[1, 1, 1, 3]]
    assert out.centerness_targets.item() == pytest.approx(math.sqrt(1 / 3))
    out = _assign([[8.0, 8.0]], [up, tall], [2, 0], anchor_scale=2.0)
    assert out.labels.tolist() == [2] and out.matched_idxs.tolist() == [0]
    assert out.reg_targets.tolist() == [[1, 3, 1, 1]]


def test_regression_targets_in_pixels_without_normalisation():
    out = _assign([[8.0, 8.0]], [[0, 0, 16, 32]], [0], anchor_scale=2.0, normalize_by_stride=False)
    assert out.reg_targets.tolist() == [[8, 8, 8, 24]]


def test_no_boxes_gives_background():
    out = _assign([[8.0, 8.0], [24.0, 8.0]], [], [])
    assert out.labels.tolist() == [BG, BG] and out.matched_idxs.tolist() == [-1, -1]
    assert out.reg_targets.shape == (2, 4) and out.reg_targets.abs().sum() == 0
    assert out.centerness_targets.tolist() == [0, 0]
    assert out.labels.dtype == out.matched_idxs.dtype == torch.int64


def test_argument_errors():
    with pytest.raises(ValueError, match=r"num_points_per_level \[3\] sums to 3"):
        _assign([[8.0, 8.0]], [[0, 0, 16, 16]], [0], per_level=[3])
    with pytest.raises(ValueError, match="MODEL.ATSS.TOPK"):
        _assign([[8.0, 8.0]], [[0, 0, 16, 16]], [0], topk=0)
    with pytest.raises(ValueError, match="MODEL.ATSS.ANCHOR_SCALE"):
        _assign([[8.0, 8.0]], [[0, 0, 16, 16]], [0], anchor_scale=0.0)


def _grid_problem(device="cpu"):
    """A 128 x 160 image on P3-P5 with three boxes, two of them overlapping."""
    strides = [8, 16, 32]
    locations = compute_locations([(16, 20), (8, 10), (4, 5)], strides, torch.device(device))
    points = torch.cat(locations)
    point_strides = torch.cat([p.new_full((len(p),), float(s)) for p, s in zip(locations, strides)])
    boxes = torch.tensor(
        [[10.0, 12.0, 70.0, 60.0], [40.0, 30.0, 150.0, 120.0], [100.0, 8.0, 124.0, 28.0]],
        device=device,
    )
    classes = torch.tensor([0, 1, 2], device=device)
    return points, point_strides, [len(p) for p in locations], boxes, classes


def test_targets_on_a_pyramid_grid():
    points, strides, per_level, boxes, classes = _grid_problem()
    out = atss_assign(points, strides, per_level, boxes, classes, NUM_CLASSES)
    pos = out.matched_idxs >= 0
    # every box gets positives, at most k = 9 per level, and all of them are inside it
    counts = torch.bincount(out.matched_idxs[pos], minlength=3)
    assert (counts >= 1).all() and (counts <= 27).all()
    assert torch.equal(out.labels[pos], classes[out.matched_idxs[pos]])
    assert (out.labels[~pos] == BG).all()
    ltrb = out.reg_targets[pos] * strides[pos, None]
    box = boxes[out.matched_idxs[pos]]
    assert torch.allclose(points[pos, 0] - ltrb[:, 0], box[:, 0])
    assert torch.allclose(points[pos, 1] + ltrb[:, 3], box[:, 3])
    assert (ltrb > 0.01).all()
    ctr = out.centerness_targets[pos]
    assert ((ctr > 0) & (ctr <= 1)).all() and (out.centerness_targets[~pos] == 0).all()


@pytest.mark.cuda
@needs_cuda
def test_cuda_matches_cpu():
    cpu = atss_assign(*_grid_problem(), NUM_CLASSES)
    gpu = atss_assign(*_grid_problem("cuda"), NUM_CLASSES)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c)
