"""Losses of the positive sample selector on the joint score P = s(pss) * s(cls) * s(ctr).

P is a product of sigmoids, not the sigmoid of one logit, so a logit-based focal loss does not
apply. Everything here works in float32 from log P, which is exact as a sum of log-sigmoids: at
initialisation P is about 0.01 * 0.5 * 0.5, near the bottom of float16's normal range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pss_focal_loss", "pss_log_score", "pss_ranking_loss"]

# P is clamped to at most 1 - _EPS inside log(1 - P): a negative whose P rounds to 1 in float32
# costs at most (1 - alpha) * -log(_EPS) instead of inf.
_EPS = 1e-6


def pss_log_score(pss_logits: Tensor, cls_logits: Tensor, ctr_logits: Tensor | None) -> Tensor:
    """log P = logsigmoid(pss) + logsigmoid(cls) + logsigmoid(ctr), in float32.

    Args:
        pss_logits: ``[N, R]`` selector logits.
        cls_logits: ``[N, R, K]`` class logits.
        ctr_logits: ``[N, R]`` centerness logits, or None to leave centerness out of P.

    Returns:
        ``[N, R, K]`` float32 log P; differentiable in every input.
    """
    log_p = F.logsigmoid(pss_logits.float())[..., None] + F.logsigmoid(cls_logits.float())
    if ctr_logits is not None:
        log_p = log_p + F.logsigmoid(ctr_logits.float())[..., None]
    return log_p


def pss_focal_loss(
    log_p: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Per-element focal loss of a probability given by its log, in float32.

    FL = -alpha * t * (1 - p)^gamma * log p - (1 - alpha) * (1 - t) * p^gamma * log(1 - p),
    with log p taken as given and log(1 - p) = log1p(-min(p, 1 - 1e-6)).

    Args:
        log_p: ``[M]`` or ``[N, R, K]`` (any shape) float, log of the probability, <= 0.
        targets: same shape, 0 or 1.
        alpha: weight of the positive term; the negative term gets ``1 - alpha``.
        gamma: focusing exponent.

    Returns:
        float32 tensor of ``log_p``'s shape, the unreduced losses.
    """
    log_p = log_p.float()
    t = targets.to(torch.float32)
    p = log_p.exp()
    log_1mp = torch.log1p(-p.clamp(max=1.0 - _EPS))
    pos = -alpha * t * (1.0 - p).pow(gamma) * log_p
    neg = -(1.0 - alpha) * (1.0 - t) * p.pow(gamma) * log_1mp
    return pos + neg


def pss_ranking_loss(
    scores: Tensor, labels: Tensor, margin: float = 0.5, num_negatives: int = 100
) -> Tensor:
    """Hinge ranking loss between the one-to-one positives and the hardest negatives (Eq. 2).

    Per image, with n+ positives scored at their label and the n- highest-scoring negative
    locations (a negative is scored by its max over classes; n- = min(num_negatives, number of
    negatives)):

        loss_img = 1 / (n+ * n-) * sum_{pos, neg} relu(margin - s_pos + s_neg)

    The result is the mean of loss_img over the images with at least one positive and one
    negative; when there is none it is ``0 * scores.sum()``, still part of the graph.

    Args:
        scores: ``[N, R, K]`` float, P of every location and class; gradients flow to the
            positive entries and to each selected negative's max class.
        labels: ``[N, R]`` int64 one-to-one labels in ``[0, K]``; K marks a negative.
        margin: the hinge margin.
        num_negatives: negatives per image, the highest-scoring first.

    Returns:
        float32 scalar.
    """
    scores = scores.float()
    n, r, k = scores.shape
    pos = (labels >= 0) & (labels < k)
    pos_img, pos_loc = torch.nonzero(pos, as_tuple=True)
    if pos_img.numel() == 0 or num_negatives <= 0:
        return scores.sum() * 0.0

    s_pos = scores[pos_img, pos_loc, labels[pos_img, pos_loc]]  # [P]
    neg_scores = scores.max(dim=2).values.masked_fill(pos, float("-inf"))
    top = min(num_negatives, r)
    s_neg, neg_loc = neg_scores.topk(top, dim=1)  # [N, top]
    # When an image has fewer than `top` negatives, topk also returns (masked) positives.
    neg_valid = ~pos.gather(1, neg_loc)
    s_neg = torch.where(neg_valid, s_neg, torch.zeros_like(s_neg))

    num_pos = pos.sum(dim=1).float()  # [N]
    num_neg = neg_valid.sum(dim=1).float()  # [N]
    used = (num_pos > 0) & (num_neg > 0)
    if not bool(used.any()):
        return scores.sum() * 0.0

    hinge = F.relu(margin - s_pos[:, None] + s_neg[pos_img]) * neg_valid[pos_img]  # [P, top]
    per_pair = 1.0 / (num_pos * num_neg).clamp(min=1.0)  # [N]
    per_img = torch.zeros(n, dtype=scores.dtype, device=scores.device)
    per_img = per_img.index_add(0, pos_img, hinge.sum(dim=1) * per_pair[pos_img])
    return per_img[used].sum() / used.sum()
