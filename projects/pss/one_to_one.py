"""One-to-one labels of the positive sample selector: one location per ground-truth box.

The candidates of gt j are its one-to-many positives, Omega_j = {i : matched_idxs[i] == j}, taken
after the base assigner's tie-break, so the sets are disjoint. Among them gt j keeps the location
with the largest quality

    Q_ij = P_i(c_j) ** (1 - alpha) * IoU(pred_i, gt_j) ** alpha

(`assigndet.ops.matcher`). Only the candidate pairs are ever scored, so a location outside Omega_j
can never be chosen for gt j, even when every candidate has IoU 0, and a gt with an empty Omega_j
gets no positive. With disjoint sets the greedy top-one and the Hungarian matching coincide.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assigndet.ops import match_hungarian, match_top_one_batched

__all__ = ["pss_one_to_one_labels"]

MATCHERS = ("top_one", "hungarian")


@torch.no_grad()
def pss_one_to_one_labels(
    pred_boxes: Tensor,
    probs: Tensor,
    matched_idxs: Tensor,
    gt_boxes: list[Tensor],
    gt_classes: list[Tensor],
    num_classes: int,
    alpha: float = 0.8,
    matcher: str = "top_one",
) -> Tensor:
    """Class labels of the one-to-one positives, ``num_classes`` everywhere else.

    Args:
        pred_boxes: ``[N, R, 4]`` decoded predicted boxes (x1, y1, x2, y2) in input pixels, the
            frame of ``gt_boxes``; read detached.
        probs: ``[N, R, K]`` the joint score P of every location and class; read detached.
        matched_idxs: ``[N, R]`` int64 one-to-many assignment: the gt index within the image of
            each location, -1 for background.
        gt_boxes: N tensors ``[G_n, 4]``, the gt boxes of each image.
        gt_classes: N tensors ``[G_n]`` int64 in ``[0, K)``.
        num_classes: K, also the label of negatives.
        alpha: exponent of the IoU in Q; P gets ``1 - alpha``.
        matcher: ``"top_one"`` (one batched call on the input's device) or ``"hungarian"``
            (scipy, per image, on the CPU).

    Returns:
        ``[N, R]`` int64: ``gt_classes[n][j]`` at the location selected for gt j of image n,
        ``num_classes`` elsewhere.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"MODEL.PSS.MATCHER must be one of {', '.join(MATCHERS)}; got {matcher!r}")
    n, r = matched_idxs.shape
    if pred_boxes.shape[:2] != (n, r) or probs.shape[:2] != (n, r):
        raise ValueError(
            f"pss_one_to_one_labels: pred_boxes {tuple(pred_boxes.shape)} and probs "
            f"{tuple(probs.shape)} must start with matched_idxs' shape {(n, r)}"
        )
    if len(gt_boxes) != n or len(gt_classes) != n:
        raise ValueError(
            f"pss_one_to_one_labels: expected {n} gt_boxes and gt_classes, got {len(gt_boxes)} "
            f"and {len(gt_classes)}"
        )
    device = matched_idxs.device
    labels = torch.full((n, r), num_classes, dtype=torch.int64, device=device)
    pair_img, pair_loc = torch.nonzero(matched_idxs >= 0, as_tuple=True)
    if pair_loc.numel() == 0:
        return labels
    pair_gt = matched_idxs[pair_img, pair_loc].long()
    pred_boxes, probs = pred_boxes.detach(), probs.detach()

    if matcher == "top_one":
        num_gts = [len(g) for g in gt_classes]
        all_boxes = torch.cat([g.reshape(-1, 4) for g in gt_boxes]).to(pred_boxes.device)
        all_classes = torch.cat(list(gt_classes)).to(device=device, dtype=torch.int64)
        matched_loc, _ = match_top_one_batched(
            pred_boxes, probs, all_boxes, all_classes, num_gts, pair_img, pair_loc, pair_gt, alpha
        )
        gt_img = torch.repeat_interleave(
            torch.arange(n, device=device), torch.as_tensor(num_gts, device=device)
        )
        keep = matched_loc >= 0
        labels[gt_img[keep], matched_loc[keep]] = all_classes[keep]
        return labels

    for img in range(n):
        in_img = pair_img == img
        if not bool(in_img.any()):
            continue
        classes = gt_classes[img].to(device=device, dtype=torch.int64)
        matched_loc, _ = match_hungarian(
            pred_boxes[img],
            probs[img],
            gt_boxes[img].to(pred_boxes.device),
            classes,
            pair_loc[in_img],
            pair_gt[in_img],
            alpha,
        )
        keep = matched_loc >= 0
        labels[img, matched_loc[keep]] = classes[keep]
    return labels
