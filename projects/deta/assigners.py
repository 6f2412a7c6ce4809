"""DETA's label assignment: IoU assignment with object balancing in both stages, and the
Hungarian (DETR) matcher of the baseline that replaces it when the assignment flags are off.

Boxes are normalised (cx, cy, w, h), as the model predicts them and as the targets are stored.
Every function handles one image and returns ``(query_idx, gt_idx)``: two int64 ``[K]`` tensors
on the input device, the K (query, GT) pairs that the losses use. Pairs rather than a label per
query, because the loss adds one L1 and one GIoU term per pair (a duplicated pair counts twice)
and object balancing may pair one query with two GTs, which a per-query label cannot express.
Queries in no pair are background for the classification loss; nothing is ignored.

IoU assignment (Faster R-CNN style, then balancing):
1. the IoU matrix ``[G, N]`` of GTs and candidates labels each candidate from its best IoU with the
   core ``Matcher`` (low-quality matches on: each GT's best candidates, ties included, become
   positive and stay credited to their own best GT);
2. ``subsample_labels`` draws at most ``int(batch_size_per_image * positive_fraction)`` positives
   at random; the negatives it draws are discarded;
3. object balancing: a GT credited c_g sampled positives gets instead its top min(c_g, K)
   candidates by IoU among all N (see ``balance_topk_per_gt``).

A GT with IoU 0 to every candidate makes every zero-IoU candidate positive through the
low-quality rule; they are credited to their own argmax GT (GT 0 on ties), which balancing then
caps at K. This quirk of the official code is kept.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from assigndet.modeling.matcher import Matcher
from assigndet.modeling.sampling import subsample_labels

__all__ = [
    "balance_topk_per_gt",
    "hungarian_cost",
    "hungarian_match",
    "iou_assign",
    "stage1_assign",
    "stage2_assign",
]


def _check_boxes(fn: str, name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{fn}: {name} must be a [N, 4] tensor of (cx, cy, w, h), got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a floating tensor, got {boxes.dtype}")


def _empty_pairs(device: torch.device) -> tuple[Tensor, Tensor]:
    empty = torch.empty(0, dtype=torch.int64, device=device)
    return empty, empty.clone()


def _pairwise_iou(gt_boxes: Tensor, candidates: Tensor) -> Tensor:
    """``[G, N]`` IoU of (cx, cy, w, h) boxes; 0 instead of NaN for two empty boxes."""
    gt = box_convert(gt_boxes, "cxcywh", "xyxy")
    return box_iou(gt, box_convert(candidates, "cxcywh", "xyxy")).nan_to_num(0.0)


def balance_topk_per_gt(
    query_idx: Tensor, gt_idx: Tensor, iou: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Object balancing: each GT keeps as many positives as it had, at most k, chosen anew as its
    highest-IoU candidates.

    A GT g appearing c_g times in ``gt_idx`` gets the first min(c_g, k) of all N candidates ranked
    by decreasing IoU with g (ties by increasing index). When g is credited with every candidate
    at or above the IoU threshold, this keeps those with IoU >= max(threshold, mu_g^k), mu_g^k
    being g's k-th highest IoU (barring ties): the paper's dynamic threshold. Unlike it, a kept
    candidate may have another GT as its best match (and so be paired with two GTs), and a GT
    without sampled positives keeps none.

    Args:
        query_idx: Tensor[P] int64, candidate of each positive pair.
        gt_idx: Tensor[P] int64, GT of each positive pair.
        iou: Tensor[G, N] IoU of every GT with every candidate.
        k: the cap K per GT, >= 1.

    Returns:
        (query_idx, gt_idx): Tensor[K'] int64 each, by increasing GT, then decreasing IoU.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"balance_topk_per_gt: k must be an int >= 1, got {k!r}")
    if query_idx.shape != gt_idx.shape or query_idx.dim() != 1:
        raise ValueError(
            "balance_topk_per_gt: query_idx and gt_idx must both be [P] tensors, got "
            f"{tuple(query_idx.shape)} and {tuple(gt_idx.shape)}"
        )
    if gt_idx.numel() == 0:
        return _empty_pairs(iou.device)
    gts, counts = torch.unique(gt_idx, return_counts=True)
    kk = min(k, iou.shape[1])
    ranked = torch.sort(iou[gts], dim=1, descending=True, stable=True).indices[:, :kk]  # [U, kk]
    keep = torch.arange(kk, device=iou.device)[None, :] < counts[:, None]
    return ranked[keep], gts[:, None].expand_as(ranked)[keep]


def iou_assign(
    candidates: Tensor,
    gt_boxes: Tensor,
    matcher: Matcher,
    batch_size_per_image: int,
    positive_fraction: float,
    max_k: int | None = 4,
) -> tuple[Tensor, Tensor]:
    """IoU assignment with positive sampling and object balancing (module docstring).

    Args:
        candidates: Tensor[N, 4] normalised (cx, cy, w, h) anchors or proposals (detached here).
        gt_boxes: Tensor[G, 4] normalised (cx, cy, w, h).
        matcher: labels candidates from the ``[G, N]`` IoU matrix (1 positive, 0 negative,
            -1 ignored).
        batch_size_per_image, positive_fraction: at most
            ``int(batch_size_per_image * positive_fraction)`` positives are drawn at random.
        max_k: the cap K of object balancing, or None for none.

    Returns:
        (query_idx, gt_idx): Tensor[K] int64 each; by increasing GT, then decreasing IoU with
        balancing, then increasing candidate index without it. Empty when G = 0.
    """
    _check_boxes("iou_assign", "candidates", candidates)
    _check_boxes("iou_assign", "gt_boxes", gt_boxes)
    if max_k is not None and (isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 1):
        raise ValueError(f"iou_assign: max_k must be None or an int >= 1, got {max_k!r}")
    if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int) or (
        batch_size_per_image < 0
    ):
        raise ValueError(
            f"iou_assign: batch_size_per_image must be an int >= 0, got {batch_size_per_image!r}"
        )
    if gt_boxes.shape[0] == 0 or candidates.shape[0] == 0:
        return _empty_pairs(candidates.device)
    with torch.no_grad():
        iou = _pairwise_iou(gt_boxes.detach(), candidates.detach())
        matches, labels = matcher(iou)
        positives, _ = subsample_labels(labels, batch_size_per_image, positive_fraction, 0)
        if max_k is not None:
            return balance_topk_per_gt(positives, matches[positives], iou, max_k)
        positives = torch.sort(positives).values
        gts = matches[positives]
        order = torch.sort(gts, stable=True).indices
        return positives[order], gts[order]


def stage1_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    iou_thresholds: tuple[float, float] = (0.3, 0.7),
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    max_k: int | None = 4,
) -> tuple[Tensor, Tensor]:
    """First stage (encoder proposals): the S fixed anchors against the GTs of one image.

    IoU < 0.3 is negative, [0.3, 0.7) ignored, >= 0.7 positive, plus low-quality matches; at most
    256 * 0.5 = 128 random positives, then at most ``max_k`` per GT. The class target of every
    pair is the single objectness channel (binary), which the caller sets.

    Args:
        anchors: Tensor[S, 4] normalised (cx, cy, w, h) (``enc_outputs['anchors']``; invalid
            tokens are the unit box centred at (1, 1)).
        gt_boxes: Tensor[G, 4] normalised (cx, cy, w, h).

    Returns:
        (query_idx, gt_idx): Tensor[K] int64 each, indices into the S tokens and the G GTs.
    """
    if len(iou_thresholds) != 2:
        raise ValueError(
            f"stage1_assign: iou_thresholds must be (low, high), got {tuple(iou_thresholds)}"
        )
    low, high = iou_thresholds
    matcher = Matcher([low, high], [0, -1, 1], allow_low_quality_matches=True)
    return iou_assign(
        anchors, gt_boxes, matcher, batch_size_per_image, positive_fraction, max_k=max_k
    )


def stage2_assign(
    proposals: Tensor,
    gt_boxes: Tensor,
    *,
    iou_threshold: float = 0.6,
    batch_size_per_image: int | None = None,
    positive_fraction: float = 0.25,
    max_k: int | None = 4,
) -> tuple[Tensor, Tensor]:
    """Second stage (decoder): the Q selected proposals against the GTs of one image.

    IoU >= 0.6 is positive, anything else negative, plus low-quality matches; at most
    Q * 0.25 random positives (225 for 900 queries), then at most ``max_k`` per GT. The pairs are
    computed once from the detached proposals (``init_reference``) and serve every decoder layer.

    Args:
        proposals: Tensor[Q, 4] normalised (cx, cy, w, h).
        gt_boxes: Tensor[G, 4] normalised (cx, cy, w, h).
        batch_size_per_image: None for Q (the number of queries, as in the official code).

    Returns:
        (query_idx, gt_idx): Tensor[K] int64 each, indices into the Q queries and the G GTs.
    """
    _check_boxes("stage2_assign", "proposals", proposals)
    if batch_size_per_image is None:
        batch_size_per_image = proposals.shape[0]
    matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=True)
    return iou_assign(
        proposals, gt_boxes, matcher, batch_size_per_image, positive_fraction, max_k=max_k
    )


def hungarian_cost(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    gt_classes: Tensor,
    gt_boxes: Tensor,
    *,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """DETR matching cost with Deformable-DETR's focal class term.

    With p = sigmoid(logit) at the GT's class:
    class = alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8)),
    bbox = L1 distance of the (cx, cy, w, h) boxes, giou = -GIoU, and
    cost = cost_class * class + cost_bbox * bbox + cost_giou * giou.

    Args:
        pred_logits: Tensor[Q, C] class logits (sigmoid, no background class).
        pred_boxes: Tensor[Q, 4] normalised (cx, cy, w, h).
        gt_classes: Tensor[G] int64 in [0, C) (all 0 for the binary encoder targets).
        gt_boxes: Tensor[G, 4] normalised (cx, cy, w, h).

    Returns:
        Tensor[Q, G], detached.
    """
    fn = "hungarian_cost"
    if not isinstance(pred_logits, Tensor) or pred_logits.dim() != 2:
        shape = tuple(pred_logits.shape) if isinstance(pred_logits, Tensor) else type(pred_logits)
        raise ValueError(f"{fn}: pred_logits must be a [Q, C] tensor, got {shape}")
    _check_boxes(fn, "pred_boxes", pred_boxes)
    _check_boxes(fn, "gt_boxes", gt_boxes)
    q, c = pred_logits.shape
    if pred_boxes.shape[0] != q:
        raise ValueError(
            f"{fn}: pred_boxes must be [Q, 4] with Q = {q} like pred_logits, got "
            f"{tuple(pred_boxes.shape)}"
        )
    g = gt_boxes.shape[0]
    if not isinstance(gt_classes, Tensor) or gt_classes.shape != (g,) or (
        gt_classes.is_floating_point() or gt_classes.dtype == torch.bool
    ):
        shape = tuple(gt_classes.shape) if isinstance(gt_classes, Tensor) else type(gt_classes)
        raise ValueError(f"{fn}: gt_classes must be a [G] integer tensor with G = {g}, got {shape}")
    if g and (int(gt_classes.min()) < 0 or int(gt_classes.max()) >= c):
        raise ValueError(
            f"{fn}: gt_classes must lie in [0, {c}), got {sorted(set(gt_classes.tolist()))}"
        )
    with torch.no_grad():
        prob = pred_logits.detach().sigmoid()[:, gt_classes]  # [Q, G]
        positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pred, gt = pred_boxes.detach(), gt_boxes.detach().to(pred_boxes.dtype)
        l1 = torch.cdist(pred, gt, p=1)
        giou = generalized_box_iou(
            box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")
        )
        return cost_class * (positive - negative) + cost_bbox * l1 - cost_giou * giou


def hungarian_match(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    gt_classes: Tensor,
    gt_boxes: Tensor,
    **cost_weights: float,
) -> tuple[Tensor, Tensor]:
    """One-to-one matching of minimum total ``hungarian_cost`` (scipy's
    ``linear_sum_assignment``, on the CPU).

    Args:
        pred_logits, pred_boxes, gt_classes, gt_boxes: as in ``hungarian_cost``.
        cost_weights: ``cost_class``, ``cost_bbox``, ``cost_giou``, ``alpha``, ``gamma`` of
            ``hungarian_cost`` (official defaults 2, 5, 2, 0.25, 2).

    Returns:
        (query_idx, gt_idx): Tensor[min(Q, G)] int64 each, by increasing query index.
    """
    cost = hungarian_cost(pred_logits, pred_boxes, gt_classes, gt_boxes, **cost_weights)
    if cost.numel() == 0:
        return _empty_pairs(pred_boxes.device)
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("hungarian_match: the cost matrix has NaN or inf; check the inputs")
    rows, cols = linear_sum_assignment(cost.cpu().double().numpy())
    device = pred_boxes.device
    return (
        torch.as_tensor(rows, dtype=torch.int64, device=device),
        torch.as_tensor(cols, dtype=torch.int64, device=device),
    )
