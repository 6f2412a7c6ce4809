"""One-to-one (top-one) assignment on candidate pairs, as in PSS / DeFCN's POTO.

Given K candidate pairs (location i, gt j), typically a detector's one-to-many positives, the
quality of a pair is

    Q_ij = P_i(c_j) ** (1 - alpha) * IoU(pred_i, gt_j) ** alpha

with P_i(c_j) the location's probability at the gt's class and IoU clamped to [0, 1] (0 for two
zero-area boxes). Only the K pairs are ever evaluated: memory is O(N + M + K), never N x M.

Matching: the pairs are taken in decreasing Q, and a pair is accepted when neither its gt nor its
location is taken yet (greedy one-to-one). Ties in Q go to the lower gt index, then to the lower
location index, so the result does not depend on the order of the pairs. When candidate sets are
disjoint this is exactly the per-gt argmax ("top-one"); when they overlap, a contested location goes
to the gt with the larger Q and the other gt falls back to its best free candidate, or to none.
A gt without a free candidate gets location -1 and Q 0.

Q is computed in fp32 whatever the input dtypes. NaN or inf in the values the pairs read raises
ValueError. Nothing here is differentiable: the outputs are indices and detached values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ._extension import compiled_op

__all__ = [
    "match_hungarian",
    "match_top_one",
    "match_top_one_batched",
    "match_top_one_reference",
    "pair_quality",
]


def _check_inputs(
    fn: str,
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float,
) -> None:
    def shape(t: object) -> object:
        return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__

    if not isinstance(pred_boxes, Tensor) or pred_boxes.dim() != 2 or pred_boxes.shape[1] != 4:
        raise ValueError(f"{fn}: pred_boxes must be a [N, 4] tensor, got {shape(pred_boxes)}")
    n = pred_boxes.shape[0]
    if not isinstance(probs, Tensor) or probs.dim() != 2 or probs.shape[0] != n:
        raise ValueError(f"{fn}: probs must be a [N, C] tensor with N = {n}, got {shape(probs)}")
    if not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"{fn}: gt_boxes must be a [M, 4] tensor, got {shape(gt_boxes)}")
    m = gt_boxes.shape[0]
    if not isinstance(gt_classes, Tensor) or gt_classes.shape != (m,):
        raise ValueError(
            f"{fn}: gt_classes must be a [M] tensor with M = {m}, got {shape(gt_classes)}"
        )
    if (
        not isinstance(pair_loc, Tensor)
        or not isinstance(pair_gt, Tensor)
        or pair_loc.dim() != 1
        or pair_loc.shape != pair_gt.shape
    ):
        raise ValueError(
            f"{fn}: pair_loc and pair_gt must both be [K] tensors, got {shape(pair_loc)} and "
            f"{shape(pair_gt)}"
        )
    for name, t in (("pred_boxes", pred_boxes), ("probs", probs), ("gt_boxes", gt_boxes)):
        if not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a floating tensor, got {t.dtype}")
    for name, t in (("gt_classes", gt_classes), ("pair_loc", pair_loc), ("pair_gt", pair_gt)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{fn}: {name} must be an integer tensor, got {t.dtype}")
    for name, t in (
        ("probs", probs),
        ("gt_boxes", gt_boxes),
        ("gt_classes", gt_classes),
        ("pair_loc", pair_loc),
        ("pair_gt", pair_gt),
    ):
        if t.device != pred_boxes.device:
            raise ValueError(
                f"{fn}: {name} must be on {pred_boxes.device} like pred_boxes, got {t.device}"
            )
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be a number in [0, 1], got {alpha!r}")


def match_top_one(
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """Greedy one-to-one matching of candidate pairs by decreasing quality (module docstring).

    Args:
        pred_boxes: Tensor[N, 4] float, predicted boxes (x1, y1, x2, y2) of the N locations.
        probs: Tensor[N, C] float, per-location class probabilities (e.g. the PSS product score).
        gt_boxes: Tensor[M, 4] float, ground-truth boxes in the same frame as pred_boxes.
        gt_classes: Tensor[M] int64 in [0, C).
        pair_loc: Tensor[K] int64 in [0, N), location of each candidate pair.
        pair_gt: Tensor[K] int64 in [0, M), gt of each candidate pair.
        alpha: the IoU exponent; the probability gets 1 - alpha.

    Returns:
        matched_loc: Tensor[M] int64, the location given to each gt, -1 when none.
        matched_q: Tensor[M] float32, the quality of that pair, 0 when none.
    """
    _check_inputs(
        "match_top_one", pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt, alpha
    )
    kernel = compiled_op("match_top_one", pred_boxes.device)
    if kernel is None:
        return match_top_one_reference(
            pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt, alpha
        )
    matched_loc, matched_q = kernel(
        pred_boxes.detach(),
        probs.detach(),
        gt_boxes.detach(),
        gt_classes,
        pair_loc,
        pair_gt,
        float(alpha),
    )
    return matched_loc, matched_q


def match_top_one_batched(
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    num_gts: Sequence[int] | Tensor,
    pair_img: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """`match_top_one` for a batch of B images in one call.

    Images share no location and no gt, so this is a single matching problem over the flattened
    batch; each image's result equals a separate `match_top_one` call.

    Args:
        pred_boxes: Tensor[B, N, 4] float, predicted boxes of the N locations of each image.
        probs: Tensor[B, N, C] float.
        gt_boxes: Tensor[M, 4] float, the gts of all images concatenated image after image.
        gt_classes: Tensor[M] int64.
        num_gts: B ints (list or Tensor[B]) summing to M, the number of gts of each image.
        pair_img: Tensor[K] int64 in [0, B), image of each candidate pair.
        pair_loc: Tensor[K] int64 in [0, N), location within its image.
        pair_gt: Tensor[K] int64, gt index within its image, in [0, num_gts[image]).
        alpha: the IoU exponent.

    Returns:
        matched_loc: Tensor[M] int64, location within the gt's image, -1 when none.
        matched_q: Tensor[M] float32, 0 when none.
        Split both with `num_gts` to get per-image results.
    """
    fn = "match_top_one_batched"
    if not isinstance(pred_boxes, Tensor) or pred_boxes.dim() != 3 or pred_boxes.shape[2] != 4:
        shape = tuple(pred_boxes.shape) if isinstance(pred_boxes, Tensor) else type(pred_boxes)
        raise ValueError(f"{fn}: pred_boxes must be a [B, N, 4] tensor, got {shape}")
    b, n = pred_boxes.shape[:2]
    if not isinstance(probs, Tensor) or probs.dim() != 3 or probs.shape[:2] != (b, n):
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs)
        raise ValueError(
            f"{fn}: probs must be a [B, N, C] tensor with B, N = {b}, {n}, got {shape}"
        )
    device = pred_boxes.device
    counts = torch.as_tensor(num_gts, dtype=torch.int64, device=device)
    if counts.shape != (b,) or bool((counts < 0).any()) or int(counts.sum()) != gt_boxes.shape[0]:
        raise ValueError(
            f"{fn}: num_gts must be {b} counts >= 0 summing to M = {gt_boxes.shape[0]}, "
            f"got {counts.tolist()}"
        )
    if not isinstance(pair_img, Tensor) or pair_img.shape != pair_loc.shape:
        shape = tuple(pair_img.shape) if isinstance(pair_img, Tensor) else type(pair_img)
        raise ValueError(f"{fn}: pair_img must be a [K] tensor like pair_loc, got {shape}")
    pair_img = pair_img.to(device=device, dtype=torch.int64)
    if pair_img.numel() > 0:
        bad = (pair_img < 0) | (pair_img >= b)
        if bool(bad.any()):
            raise IndexError(f"{fn}: pair_img holds {pair_img[bad][0].item()}, outside [0, {b})")
        bad = (pair_gt < 0) | (pair_gt >= counts[pair_img])
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise IndexError(
                f"{fn}: pair_gt[{k}] = {int(pair_gt[k])} is out of range for image "
                f"{int(pair_img[k])} with {int(counts[pair_img[k]])} gts"
            )
        bad = (pair_loc < 0) | (pair_loc >= n)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise IndexError(f"{fn}: pair_loc[{k}] = {int(pair_loc[k])} is outside [0, {n})")
    gt_offsets = torch.cumsum(counts, 0) - counts
    matched_loc, matched_q = match_top_one(
        pred_boxes.reshape(b * n, 4),
        probs.reshape(b * n, probs.shape[2]),
        gt_boxes,
        gt_classes,
        pair_img * n + pair_loc,
        gt_offsets[pair_img] + pair_gt,
        alpha,
    )
    gt_img = torch.repeat_interleave(torch.arange(b, device=device), counts)
    matched_loc = torch.where(matched_loc >= 0, matched_loc - gt_img * n, matched_loc)
    return matched_loc, matched_q


def pair_quality(
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float = 0.8,
) -> Tensor:
    """Q of each candidate pair (module docstring), in PyTorch. Returns Tensor[K] float32."""
    _check_inputs("pair_quality", pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt, alpha)
    if not bool(torch.isfinite(gt_boxes).all()):
        raise ValueError("match_top_one: gt_boxes must be finite, got a NaN or inf")
    pred = pred_boxes.detach()[pair_loc].float()
    gt = gt_boxes.detach()[pair_gt].float()
    prob = probs.detach()[pair_loc, gt_classes[pair_gt]].float()
    if not (bool(torch.isfinite(pred).all()) and bool(torch.isfinite(prob).all())):
        raise ValueError("match_top_one: pred_boxes and probs must be finite, got a NaN or inf")
    w = (torch.minimum(pred[:, 2], gt[:, 2]) - torch.maximum(pred[:, 0], gt[:, 0])).clamp(min=0)
    h = (torch.minimum(pred[:, 3], gt[:, 3]) - torch.maximum(pred[:, 1], gt[:, 1])).clamp(min=0)
    inter = w * h
    union = (
        (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
        + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        - inter
    )
    iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
    return prob.pow(1.0 - alpha) * iou.pow(alpha)


def match_top_one_reference(
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch `match_top_one`: same signature and results, one Python step per pair."""
    q = pair_quality(pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt, alpha)
    m, device = gt_boxes.shape[0], pred_boxes.device
    # Decreasing Q, then increasing gt, then increasing location: stable sorts from the last key.
    order = torch.sort(pair_loc, stable=True).indices
    order = order[torch.sort(pair_gt[order], stable=True).indices]
    order = order[torch.sort(q[order], descending=True, stable=True).indices]
    matched_loc = [-1] * m
    matched_q = [0.0] * m
    taken: set[int] = set()
    for loc, gt, value in zip(pair_loc[order].tolist(), pair_gt[order].tolist(), q[order].tolist()):
        if matched_loc[gt] < 0 and loc not in taken:
            matched_loc[gt], matched_q[gt] = loc, value
            taken.add(loc)
    return (
        torch.tensor(matched_loc, dtype=torch.int64, device=device),
        torch.tensor(matched_q, dtype=torch.float32, device=device),
    )


def match_hungarian(
    pred_boxes: Tensor,
    probs: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pair_loc: Tensor,
    pair_gt: Tensor,
    alpha: float = 0.8,
) -> tuple[Tensor, Tensor]:
    """Maximum-total-Q one-to-one matching (scipy's Hungarian) on the candidate pairs.

    Same arguments and outputs as `match_top_one`. The problem is the M x R matrix of Q over the
    R distinct candidate locations, non-candidates set to a large negative value; after solving,
    pairs that landed on a non-candidate are dropped, so a gt without candidates gets -1. Runs on
    the CPU (scipy); the results are moved back to the input device.
    """
    q = pair_quality(pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt, alpha)
    m, device = gt_boxes.shape[0], pred_boxes.device
    matched_loc = np.full(m, -1, dtype=np.int64)
    matched_q = np.zeros(m, dtype=np.float32)
    if q.numel() > 0:
        locs, col = torch.unique(pair_loc, return_inverse=True)
        invalid = -1.0e6  # Q lies in [0, 1]; one invalid entry outweighs any sum of valid ones
        cost = np.full((m, locs.numel()), invalid, dtype=np.float64)
        # Duplicated pairs carry the same Q, so the assignment order does not matter.
        cost[pair_gt.cpu().numpy(), col.cpu().numpy()] = q.cpu().double().numpy()
        rows, cols = linear_sum_assignment(cost, maximize=True)
        valid = cost[rows, cols] > invalid
        rows, cols = rows[valid], cols[valid]
        matched_loc[rows] = locs.cpu().numpy()[cols]
        matched_q[rows] = cost[rows, cols]
    return torch.from_numpy(matched_loc).to(device), torch.from_numpy(matched_q).to(device)
