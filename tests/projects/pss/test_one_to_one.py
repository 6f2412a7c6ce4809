"""PSS one-to-one labels: per-gt argmax of Q inside Omega_j, empty Omega_j, alpha, Hungarian."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from assigndet.projects.pss.one_to_one import pss_one_to_one_labels

K = 3  # classes; also the label of negatives


def _case():
    """One image, 7 locations, 4 gts.

    gt0 (class 1): Omega = {0, 1}. loc 0 has IoU 1 and P = 0.1 at class 1 (1e-4 at the others);
        loc 1 has IoU 0.5 and P = 0.9. alpha 0.8: Q0 = 0.1^0.2 = 0.631 > Q1 = 0.9^0.2 0.5^0.8
        = 0.562, so loc 0. alpha 0.2: Q0 = 0.1^0.8 = 0.158 < Q1 = 0.9^0.8 0.5^0.2 = 0.800, loc 1.
        Reading P at another class would give loc 0 Q = 1e-4^0.2 = 0.158 and pick loc 1.
    gt1 (class 2): Omega = {2, 3}. loc 2 has IoU 0 (Q 0), loc 3 has IoU 0.5 and P = 0.01: loc 3.
    gt2 (class 0): no candidate. loc 4 predicts it exactly with P = 1 but is background.
    gt3 (class 0): Omega = {5}, IoU 0: still selected, since Q is masked, not multiplied by 0.
        loc 6 predicts it exactly with P = 1 but is background.
    """
    gt_boxes = torch.tensor(
        [[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [70, 70, 80, 80]]
    )
    gt_classes = torch.tensor([1, 2, 0, 0])
    pred = torch.tensor(
        [
            [0.0, 0, 10, 10],
            [0, 0, 10, 5],
            [100, 100, 110, 110],
            [20, 20, 40, 30],
            [50, 50, 60, 60],
            [0, 0, 5, 5],
            [70, 70, 80, 80],
        ]
    )
    probs = torch.tensor(
        [
            [1e-4, 0.1, 1e-4],
            [0.9, 0.9, 0.9],
            [0.5, 0.5, 0.5],
            [0.01, 0.01, 0.01],
            [1.0, 1.0, 1.0],
            [0.3, 0.3, 0.3],
            [1.0, 1.0, 1.0],
        ]
    )
    matched = torch.tensor([0, 0, 1, 1, -1, 3, -1])
    return pred[None], probs[None], matched[None], [gt_boxes], [gt_classes]


@pytest.mark.parametrize("matcher", ["top_one", "hungarian"])
def test_each_gt_takes_its_best_candidate(matcher):
    labels = pss_one_to_one_labels(*_case(), num_classes=K, matcher=matcher)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[1, K, K, 2, K, 0, K]]


@pytest.mark.parametrize("matcher", ["top_one", "hungarian"])
def test_alpha_moves_the_choice_to_the_more_confident_location(matcher):
    labels = pss_one_to_one_labels(*_case(), num_classes=K, alpha=0.2, matcher=matcher)
    assert labels.tolist() == [[K, 1, K, 2, K, 0, K]]


@pytest.mark.parametrize("matcher", ["top_one", "hungarian"])
def test_batch_with_empty_images(matcher):
    pred, probs, matched, gt_boxes, gt_classes = _case()
    # image 1: no gt at all; image 2: two gts, neither with a candidate
    pred = torch.cat([pred, pred, pred])
    probs = torch.cat([probs, probs, probs])
    matched = torch.cat([matched, torch.full_like(matched, -1), torch.full_like(matched, -1)])
    gt_boxes = gt_boxes + [torch.zeros(0, 4), gt_boxes[0][:2]]
    gt_classes = gt_classes + [torch.zeros(0, dtype=torch.int64), gt_classes[0][:2]]
    labels = pss_one_to_one_labels(
        pred, probs, matched, gt_boxes, gt_classes, num_classes=K, matcher=matcher
    )
    assert labels.tolist() == [[1, K, K, 2, K, 0, K], [K] * 7, [K] * 7]


def test_no_gt_in_the_batch():
    labels = pss_one_to_one_labels(
        torch.zeros(2, 5, 4),
        torch.rand(2, 5, K),
        torch.full((2, 5), -1),
        [torch.zeros(0, 4)] * 2,
        [torch.zeros(0, dtype=torch.int64)] * 2,
        num_classes=K,
    )
    assert labels.tolist() == [[K] * 5] * 2


def _random_batch(n: int, r: int, max_gts: int):
    """Random disjoint candidate sets; candidates predict a jittered copy of their gt (IoU > 0)."""
    pred = torch.rand(n, r, 2) * 200
    pred = torch.cat([pred, pred + 10 + torch.rand(n, r, 2) * 50], dim=2)
    probs = torch.rand(n, r, K)
    matched = torch.full((n, r), -1)
    gt_boxes, gt_classes = [], []
    for img in range(n):
        g = int(torch.randint(0, max_gts + 1, ()))
        xy = torch.rand(g, 2) * 200
        boxes = torch.cat([xy, xy + 20 + torch.rand(g, 2) * 60], dim=1)
        gt_boxes.append(boxes)
        gt_classes.append(torch.randint(0, K, (g,)))
        if g > 0:
            matched[img] = torch.randint(-1, g, (r,))
            cand = matched[img] >= 0
            pred[img, cand] = boxes[matched[img, cand]] + torch.randn(int(cand.sum()), 4) * 3
    return pred, probs, matched, gt_boxes, gt_classes


def test_top_one_is_the_argmax_of_q_and_equals_hungarian():
    alpha = 0.8
    batch = _random_batch(n=4, r=60, max_gts=6)
    top_one = pss_one_to_one_labels(*batch, num_classes=K, alpha=alpha)
    hungarian = pss_one_to_one_labels(*batch, num_classes=K, alpha=alpha, matcher="hungarian")
    assert torch.equal(top_one, hungarian)

    pred, probs, matched, gt_boxes, gt_classes = batch
    for img in range(len(gt_boxes)):
        expected = torch.full((pred.shape[1],), K)
        for j in range(len(gt_boxes[img])):
            cand = torch.nonzero(matched[img] == j).flatten()
            if cand.numel() == 0:
                continue
            c = int(gt_classes[img][j])
            iou = box_iou(pred[img, cand], gt_boxes[img][j : j + 1])[:, 0]
            q = probs[img, cand, c] ** (1 - alpha) * iou**alpha
            expected[cand[q.argmax()]] = c
        assert top_one[img].tolist() == expected.tolist()


def test_unknown_matcher_names_the_config_key():
    with pytest.raises(ValueError, match="MODEL.PSS.MATCHER"):
        pss_one_to_one_labels(*_case(), num_classes=K, matcher="greedy")
