"""PSS losses: log score, focal loss on a probability given by its log, ranking loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from assigndet.projects.pss.losses import pss_focal_loss, pss_log_score, pss_ranking_loss

LN2 = math.log(2.0)


def test_log_score_hand_computed():
    pss = torch.zeros(1, 1, dtype=torch.float16)
    cls = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float16)  # sigmoids 0.5, 0.75
    ctr = torch.zeros(1, 1, dtype=torch.float16)
    log_p = pss_log_score(pss, cls, ctr)
    assert log_p.dtype == torch.float32 and log_p.shape == (1, 1, 2)
    assert log_p.exp().flatten().tolist() == pytest.approx([0.125, 0.1875], rel=1e-3)
    no_ctr = pss_log_score(pss, cls, None)
    assert no_ctr.exp().flatten().tolist() == pytest.approx([0.25, 0.375], rel=1e-3)


def test_focal_loss_hand_computed():
    p = torch.tensor([0.5, 0.5, 0.9, 1e-8])
    t = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = pss_focal_loss(p.log(), t)
    expected = [
        0.25 * 0.5**2 * LN2,  # positive at p = 0.5
        0.75 * 0.5**2 * LN2,  # negative at p = 0.5
        0.75 * 0.9**2 * math.log(10.0),  # negative at p = 0.9: -(1 - a) p^2 log(0.1)
        0.25 * (1 - 1e-8) ** 2 * 8 * math.log(10.0),  # positive at p = 1e-8
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_parameters():
    p = torch.tensor([0.5, 0.2])
    t = torch.tensor([1.0, 0.0])
    # alpha 0.5, gamma 0: half the binary cross-entropy
    loss = pss_focal_loss(p.log(), t, alpha=0.5, gamma=0.0)
    assert loss.tolist() == pytest.approx([0.5 * LN2, -0.5 * math.log(0.8)], rel=1e-6)


def test_focal_loss_of_one_sigmoid_matches_the_logit_focal_loss():
    logits = torch.randn(2, 5, 3) * 4
    targets = (torch.rand(2, 5, 3) > 0.7).float()
    ours = pss_focal_loss(F.logsigmoid(logits), targets)
    assert ours.shape == (2, 5, 3)
    torch.testing.assert_close(ours, sigmoid_focal_loss(logits, targets), rtol=1e-4, atol=1e-6)


def test_focal_loss_is_finite_at_extreme_probabilities():
    # p = sigmoid(-30)^3 ~ 1e-39 and p = sigmoid(30)^3, which rounds to 1 in float32
    logits = torch.tensor([-30.0, 30.0], dtype=torch.float16).requires_grad_()
    log_p = pss_log_score(logits[:, None], logits[:, None, None], logits[:, None])[:, 0, 0]
    for t in (0.0, 1.0):
        logits.grad = None
        loss = pss_focal_loss(log_p, torch.full((2,), t))
        assert torch.isfinite(loss).all()
        loss.sum().backward(retain_graph=True)
        assert torch.isfinite(logits.grad).all()
    # positive at p ~ 1e-39: alpha * -log p = 0.25 * 90
    pos = pss_focal_loss(log_p, torch.ones(2))
    assert pos[0].item() == pytest.approx(0.25 * 90.0, rel=1e-3)
    # negative at p = 1: capped at (1 - alpha) * -log(1e-6)
    neg = pss_focal_loss(log_p, torch.zeros(2))
    assert neg[1].item() == pytest.approx(0.75 * 6 * math.log(10.0), rel=1e-2)


def _ranking_case():
    """K = 2, 4 locations per image.

    Image 0: positives loc 0 (class 0, s 0.9) and loc 1 (class 1, s 0.7); negatives scored by
        their max class: loc 2 -> 0.6, loc 3 -> 0.1.
    Image 1: positive loc 0 (class 1, s 0.4); negatives 0.25, 0.0, 0.2.
    Image 2: no positive.
    """
    scores = torch.tensor(
        [
            [[0.9, 0.1], [0.2, 0.7], [0.6, 0.3], [0.1, 0.05]],
            [[0.3, 0.4], [0.1, 0.25], [0.0, 0.0], [0.2, 0.1]],
            [[0.9, 0.9], [0.8, 0.1], [0.1, 0.1], [0.0, 0.3]],
        ],
        requires_grad=True,
    )
    labels = torch.tensor([[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2]])
    return scores, labels


def test_ranking_loss_hand_computed():
    scores, labels = _ranking_case()
    # one negative: image 0 pairs relu(0.5 - 0.9 + 0.6) = 0.2, relu(0.5 - 0.7 + 0.6) = 0.4,
    # mean 0.3; image 1: relu(0.5 - 0.4 + 0.25) = 0.35; mean over the 2 images with positives
    loss = pss_ranking_loss(scores, labels, margin=0.5, num_negatives=1)
    assert loss.item() == pytest.approx((0.3 + 0.35) / 2, rel=1e-6)
    loss.backward()
    grad = torch.zeros(3, 4, 2)
    grad[0, 0, 0] = grad[0, 1, 1] = -0.5 / 2  # each positive: -1 / (2 x 1) per image, / 2 images
    grad[0, 2, 0] = 2 * 0.5 / 2  # the hardest negative, in both pairs, at its max class
    grad[1, 0, 1], grad[1, 1, 1] = -0.5, 0.5
    torch.testing.assert_close(scores.grad, grad)


def test_ranking_loss_with_fewer_negatives_than_asked():
    scores, labels = _ranking_case()
    # image 0 has 2 negatives: pairs 0.2, 0, 0.4, 0 -> 0.6 / 4; image 1 has 3: relu(0.35),
    # relu(0.1), relu(0.3) -> 0.75 / 3
    loss = pss_ranking_loss(scores, labels, margin=0.5, num_negatives=100)
    assert loss.item() == pytest.approx((0.6 / 4 + 0.75 / 3) / 2, rel=1e-6)


def test_ranking_loss_without_positives_is_zero_and_differentiable():
    scores, labels = _ranking_case()
    loss = pss_ranking_loss(scores, torch.full_like(labels, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_ranking_loss_without_negatives_is_zero():
    scores = torch.rand(1, 3, 2, requires_grad=True)
    loss = pss_ranking_loss(scores, torch.tensor([[0, 1, 0]]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(scores.grad).all()
