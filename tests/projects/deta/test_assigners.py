"""DETA's assigners on hand-built boxes.

Most boxes are horizontal strips sharing the rows y in [0.25, 0.75], so that their IoU and GIoU
are those of their x intervals and can be worked out by hand.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from assigndet.projects.deta.assigners import (
    balance_topk_per_gt,
    hungarian_cost,
    hungarian_match,
    stage1_assign,
    stage2_assign,
)

FAR = (0.9, 0.95)  # a strip overlapping none of the others


def strips(*intervals: tuple[float, float]) -> torch.Tensor:
    """(cx, cy, w, h) boxes spanning x in [x0, x1] and y in [0.25, 0.75]."""
    return torch.tensor(
        [[(x0 + x1) / 2, 0.5, x1 - x0, 0.5] for x0, x1 in intervals], dtype=torch.float64
    ).reshape(-1, 4)


def centred(iou: float, gt: tuple[float, float]) -> tuple[float, float]:
    """The strip centred on `gt` whose IoU with it is `iou` (a narrower copy)."""
    half = (gt[1] - gt[0]) * iou / 2
    centre = (gt[0] + gt[1]) / 2
    return centre - half, centre + half


def pairs(result) -> list[tuple[int, int]]:
    query_idx, gt_idx = result
    assert query_idx.dtype == gt_idx.dtype == torch.int64
    return list(zip(query_idx.tolist(), gt_idx.tolist()))


ASSIGNERS = {"stage1": stage1_assign, "stage2": stage2_assign}


@pytest.mark.parametrize("stage", sorted(ASSIGNERS))
def test_image_without_gt_has_no_pairs(stage):
    candidates = strips((0.1, 0.3), (0.4, 0.6))
    assert pairs(ASSIGNERS[stage](candidates, strips())) == []
    logits = torch.zeros(2, 3, dtype=torch.float64)
    no_classes = torch.zeros(0, dtype=torch.int64)
    assert pairs(hungarian_match(logits, candidates, no_classes, strips())) == []


@pytest.mark.parametrize("stage", sorted(ASSIGNERS))
def test_low_quality_match_gives_a_gt_its_best_candidate(stage):
    gt = strips((0.2, 0.4))
    # IoUs 1/7, 1/3, 0, 0: all below both stages' thresholds; for stage 1, 1/3 is in the
    # "ignore" band and 1/7 negative.
    candidates = strips((0.35, 0.55), (0.3, 0.5), (0.7, 0.9), (0.6, 0.8))
    assert pairs(ASSIGNERS[stage](candidates, gt, batch_size_per_image=100)) == [(1, 0)]


def test_stage1_ignore_band_is_not_positive():
    gt = (0.2, 0.6)
    anchors = strips(centred(0.5, gt), centred(0.8, gt), centred(0.2, gt), FAR)
    assert pairs(stage1_assign(anchors, strips(gt))) == [(1, 0)]
    # Stage 2 has no band: 0.8 is positive, and 0.5 is not at its threshold of 0.6 either.
    assert pairs(stage2_assign(anchors, strips(gt), batch_size_per_image=100)) == [(1, 0)]


@pytest.mark.parametrize("stage", sorted(ASSIGNERS))
def test_gt_overlapping_no_candidate_makes_zero_iou_candidates_positive(stage):
    # GT 1 overlaps nothing: q* = 0, so every candidate with IoU 0 to it (all five) becomes
    # positive, credited to its own argmax GT, GT 0 here (IoUs 1, 0.818, then ties at 0).
    # Balancing then gives GT 0 its top 4 by IoU (index order among the zeros); GT 1 gets none.
    gts = strips((0.1, 0.3), (0.8, 0.9))
    candidates = strips((0.1, 0.3), (0.12, 0.32), (0.4, 0.6), (0.5, 0.7), (0.0, 0.05))
    result = ASSIGNERS[stage](candidates, gts, batch_size_per_image=100)
    assert pairs(result) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    # Alone in its image, that GT gets four positives of IoU 0 (fact sheet's zero-IoU quirk).
    result = ASSIGNERS[stage](candidates, gts[1:], batch_size_per_image=100)
    assert pairs(result) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_balancing_keeps_the_candidates_above_the_dynamic_threshold():
    gt_a, gt_b = (0.25, 0.75), (0.0, 0.2)
    ious_a = [0.7, 0.95, 0.62, 0.85, 0.9, 0.8, 0.75]  # all >= 0.6: c_a = 7 positives for A
    ious_b = [0.9, 0.65]  # c_b = 2
    intervals = [centred(v, gt_a) for v in ious_a] + [centred(v, gt_b) for v in ious_b]
    candidates = strips(*intervals, *[FAR] * 31)  # 40 queries: up to 10 positives are sampled
    gts = strips(gt_a, gt_b)
    k = 4
    # By hand: tau_g = max(0.6, K-th highest IoU of g). A: the 4th highest is 0.8, so A keeps
    # IoU >= 0.8 (0.95, 0.9, 0.85, 0.8 at indices 1, 4, 3, 5). B: only 2 candidates overlap it,
    # its 4th highest IoU is 0, tau_b = 0.6, so both stay (indices 7, 8).
    tau_a = max(0.6, sorted(ious_a)[-k])
    assert tau_a == 0.8
    kept_a = sorted((i for i, v in enumerate(ious_a) if v >= tau_a), key=lambda i: -ious_a[i])
    assert kept_a == [1, 4, 3, 5]
    expected = [(i, 0) for i in kept_a] + [(7, 1), (8, 1)]
    assert pairs(stage2_assign(candidates, gts, max_k=k)) == expected
    # Stage 1 (threshold 0.7): A has 6 positives, the same 4 survive; B keeps its 0.9 only, as
    # 0.65 lies in the ignore band.
    assert pairs(stage1_assign(candidates, gts, max_k=k)) == expected[:5]
    # K = 1 keeps each GT's best; no balancing keeps every positive (by GT, then index).
    assert pairs(stage2_assign(candidates, gts, max_k=1)) == [(1, 0), (7, 1)]
    unbalanced = [(i, 0) for i in range(7)] + [(7, 1), (8, 1)]
    assert pairs(stage2_assign(candidates, gts, max_k=None)) == unbalanced


def test_two_gts_competing_for_one_proposal():
    # P is the best candidate of both GTs and below both thresholds: the low-quality rule makes
    # it positive, credited to its argmax GT B (IoU 0.263 vs 0.2); A gets nothing.
    gts = strips((0.0, 0.2), (0.3, 0.5))
    candidates = strips((0.12, 0.4), FAR, (0.6, 0.8))
    assert pairs(stage2_assign(candidates, gts, batch_size_per_image=100)) == [(0, 1)]
    # Both GTs well covered: P (index 0) has IoU 0.975 with A and 0.928 with B, Q (index 1) has
    # 0.818 with A and 0.905 with B. Each GT is credited one positive (P to A, Q to B), but
    # balancing ranks all candidates, so B's top 1 is P as well: P is paired with both GTs.
    gts = strips((0.20, 0.60), (0.22, 0.62))
    candidates = strips((0.205, 0.605), (0.24, 0.64), FAR)
    result = stage2_assign(candidates, gts, batch_size_per_image=100)
    assert pairs(result) == [(0, 0), (0, 1)]


def _jittered_copies(gts: torch.Tensor, n: int) -> torch.Tensor:
    """n candidates, each a GT shifted by < 0.01 (IoU > 0.9 with it)."""
    which = torch.arange(n) % gts.shape[0]
    shift = torch.rand(n, 1, dtype=torch.float64) * 0.01
    return gts[which] + torch.cat([shift, torch.zeros(n, 3, dtype=torch.float64)], dim=1)


def test_sampling_fractions_are_honoured():
    gts = strips((0.0, 0.2), (0.4, 0.6), (0.8, 1.0))
    candidates = _jittered_copies(gts, 300)  # all 300 positive, 100 per GT
    for kwargs, expected in (
        ({}, 128),  # 256 * 0.5
        ({"batch_size_per_image": 100, "positive_fraction": 0.25}, 25),
    ):
        query_idx, gt_idx = stage1_assign(candidates, gts, max_k=None, **kwargs)
        assert len(query_idx) == expected == len(set(query_idx.tolist()))
        assert torch.equal(gt_idx, query_idx % 3)  # each credited to its own GT
    query_idx, _ = stage2_assign(candidates, gts, max_k=None)
    assert len(query_idx) == 75  # 300 queries * 0.25
    # Seeded: the same seed draws the same positives, another seed others.
    torch.manual_seed(1)
    first = stage1_assign(candidates, gts, max_k=None)
    torch.manual_seed(1)
    again = stage1_assign(candidates, gts, max_k=None)
    torch.manual_seed(2)
    other = stage1_assign(candidates, gts, max_k=None)
    assert pairs(first) == pairs(again) != pairs(other)
    # With balancing each GT ends with exactly K = 4 (it had ~43 sampled positives).
    _, gt_idx = stage1_assign(candidates, gts)
    assert gt_idx.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_sampling_caps_then_balancing_picks_the_best():
    # 8 queries all positive for one GT; stage 2 draws int(8 * 0.25) = 2 of them at random, and
    # balancing replaces them by the GT's 2 best whatever was drawn.
    gt = (0.2, 0.6)
    ious = [0.61, 0.9, 0.7, 0.99, 0.8, 0.65, 0.75, 0.85]
    candidates = strips(*[centred(v, gt) for v in ious])
    for seed in range(5):
        torch.manual_seed(seed)
        assert pairs(stage2_assign(candidates, strips(gt))) == [(3, 0), (1, 0)]


def test_balance_topk_per_gt_directly():
    iou = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.8, 0.0, 0.7, 0.2]])
    # GT 0 appears 3 times, GT 1 once; ties (0.9, 0.9) go to the lower index.
    query_idx, gt_idx = balance_topk_per_gt(
        torch.tensor([0, 2, 3, 1]), torch.tensor([0, 0, 1, 0]), iou, k=2
    )
    assert query_idx.tolist() == [1, 3, 0] and gt_idx.tolist() == [0, 0, 1]
    empty = torch.empty(0, dtype=torch.int64)
    assert pairs(balance_topk_per_gt(empty, empty, iou, k=4)) == []
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        balance_topk_per_gt(empty, empty, iou, k=0)


def test_hungarian_on_a_hand_built_2x3_case():
    # Strips: GT 0 = [0, 0.2], GT 1 = [0.2, 0.4]; q0 = [0, 0.2], q1 = [0.1, 0.3], q2 = [0.6, 0.8].
    gts = strips((0.0, 0.2), (0.2, 0.4))
    preds = strips((0.0, 0.2), (0.1, 0.3), (0.6, 0.8))
    gt_classes = torch.tensor([0, 1])
    # L1 of (cx, w) and GIoU = IoU - (hull - union) / hull of the x intervals, by hand.
    l1 = torch.tensor([[0.0, 0.2], [0.1, 0.1], [0.6, 0.4]], dtype=torch.float64)
    giou = torch.tensor([[1.0, 0.0], [1 / 3, 1 / 3], [-0.5, -1 / 3]], dtype=torch.float64)
    logits = torch.zeros(3, 2, dtype=torch.float64)
    logits[0, 1] = 4.0  # q0 is confident in class 1, GT 1's class

    def focal_cost(z: float) -> float:
        p = 1 / (1 + math.exp(-z))
        pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
        neg = 0.75 * p**2 * -math.log(1 - p + 1e-8)
        return pos - neg

    cls = torch.tensor([[focal_cost(logits[q, c].item()) for c in (0, 1)] for q in range(3)])
    assert cls[1, 0] == pytest.approx(-0.125 * math.log(2), abs=1e-7)  # p = 0.5
    expected = 2 * cls.double() + 5 * l1 - 2 * giou
    cost = hungarian_cost(logits, preds, gt_classes, gts)
    torch.testing.assert_close(cost, expected)
    # q0 is the cheapest query for both GTs (GT 0: -2.17, GT 1: -4.81); a greedy GT-by-GT pick
    # would give it to GT 0, but the optimum sends it to GT 1 and q1 to GT 0.
    def total(queries: tuple[int, ...]) -> float:
        return sum(expected[q, g].item() for g, q in enumerate(queries))

    assert min(itertools.permutations(range(3), 2), key=total) == (1, 0)
    assert pairs(hungarian_match(logits, preds, gt_classes, gts)) == [(0, 1), (1, 0)]
    # Without the class term, q0 matches GT 0 exactly and q1 takes GT 1.
    assert pairs(hungarian_match(logits, preds, gt_classes, gts, cost_class=0.0)) == [
        (0, 0),
        (1, 1),
    ]


def test_hungarian_with_more_gts_than_queries_matches_every_query():
    gts = strips((0.0, 0.2), (0.4, 0.6), (0.7, 0.8))
    preds = strips((0.41, 0.6), (0.7, 0.79))
    classes = torch.zeros(3, dtype=torch.int64)
    result = hungarian_match(torch.zeros(2, 1), preds.float(), classes, gts)
    assert pairs(result) == [(0, 1), (1, 2)]


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"gt_boxes must be a \[N, 4\] tensor .*got \(2, 3\)"):
        stage2_assign(strips((0.1, 0.2)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"iou_thresholds must be \(low, high\), got \(0.5,\)"):
        stage1_assign(strips((0.1, 0.2)), strips((0.1, 0.2)), iou_thresholds=(0.5,))
    with pytest.raises(ValueError, match=r"gt_classes must lie in \[0, 2\), got \[0, 5\]"):
        hungarian_cost(
            torch.zeros(1, 2), strips((0.1, 0.2)), torch.tensor([0, 5]), strips(FAR, FAR)
        )
    with pytest.raises(ValueError, match=r"pred_boxes must be \[Q, 4\] with Q = 2"):
        hungarian_cost(torch.zeros(2, 2), strips((0.1, 0.2)), torch.tensor([0]), strips(FAR))
    with pytest.raises(ValueError, match=r"max_k must be None or an int >= 1, got 0"):
        stage2_assign(strips((0.1, 0.2)), strips((0.1, 0.2)), max_k=0)
