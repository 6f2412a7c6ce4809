"""CenterNet losses: the heatmap focal loss and the (l, t, r, b) IoU losses with +1 smoothing.

Pure functions on flattened predictions: R rows, one per location of every level of every image.
With Sampling-Free (``sampling_free=True``) the heatmaps are trained by sigmoid cross-entropy
against the soft gaussian targets instead of the focal loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assigndet.modeling.losses.sampling_free import sigmoid_ce_loss
from assigndet.utils.comm import all_reduce_mean

__all__ = [
    "SMOOTHED_IOU_LOSS_TYPES",
    "binary_heatmap_focal_loss",
    "centernet_losses",
    "heatmap_focal_loss",
    "sampling_free_heatmap_targets",
    "smoothed_ltrb_iou_loss",
]

SMOOTHED_IOU_LOSS_TYPES = ("giou", "iou", "linear_iou")


def heatmap_focal_loss(
    logits: Tensor,
    targets: Tensor,
    pos_inds: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    beta: float = 4.0,
    gamma: float = 2.0,
    sigmoid_clamp: float = 1e-4,
    ignore_high_fp: float = -1.0,
) -> tuple[Tensor, Tensor]:
    """The CenterNet focal loss against gaussian heatmap targets, unnormalised.

    With p = clamp(sigmoid(logits), sigmoid_clamp, 1 - sigmoid_clamp):
    pos = -alpha * sum over the listed positives of (1 - p)^gamma log p (a row listed twice
    counts twice); neg = -(1 - alpha) * sum over every entry of (1 - Y)^beta p^gamma log(1 - p),
    where entries with p >= ``ignore_high_fp`` are dropped when ``ignore_high_fp`` > 0.
    Positives are not taken out of the negative sum: their target Y = 1 gives them weight 0.
    A negative ``alpha`` turns the alpha weighting off.

    Args:
        logits: ``[R, C]`` heatmap logits.
        targets: ``[R, C]`` heatmap targets Y in [0, 1].
        pos_inds: ``[P]`` int64 rows of the positives.
        labels: ``[P]`` int64 class (column) of each positive.
        alpha, beta, gamma, sigmoid_clamp, ignore_high_fp: as above.

    Returns:
        ``(pos_loss, neg_loss)``: scalar float32 sums, both >= 0.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            "heatmap_focal_loss needs logits and targets of the same shape [R, C]; got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if pos_inds.shape != labels.shape:
        raise ValueError(
            f"heatmap_focal_loss: pos_inds {tuple(pos_inds.shape)} and labels "
            f"{tuple(labels.shape)} must have the same shape"
        )
    pred = logits.float().sigmoid().clamp(min=sigmoid_clamp, max=1 - sigmoid_clamp)
    pos_pred = pred[pos_inds, labels]
    pos_loss = -(pos_pred.log() * (1 - pos_pred).pow(gamma)).sum()
    neg_loss = (1 - pred).log() * pred.pow(gamma) * (1 - targets.float()).pow(beta)
    if ignore_high_fp > 0:
        neg_loss = neg_loss * (pred < ignore_high_fp).float()
    neg_loss = -neg_loss.sum()
    if alpha >= 0:
        pos_loss = alpha * pos_loss
        neg_loss = (1 - alpha) * neg_loss
    return pos_loss, neg_loss


def binary_heatmap_focal_loss(
    logits: Tensor,
    targets: Tensor,
    pos_inds: Tensor,
    alpha: float = 0.25,
    beta: float = 4.0,
    gamma: float = 2.0,
    sigmoid_clamp: float = 1e-4,
    ignore_high_fp: float = -1.0,
) -> tuple[Tensor, Tensor]:
    """:func:`heatmap_focal_loss` of a single-channel (class-agnostic) heatmap.

    Args:
        logits: ``[R]`` agnostic heatmap logits.
        targets: ``[R]`` agnostic targets.
        pos_inds: ``[P]`` rows of the positives.

    Returns:
        ``(pos_loss, neg_loss)`` scalar sums.
    """
    return heatmap_focal_loss(
        logits.reshape(-1, 1),
        targets.reshape(-1, 1),
        pos_inds,
        torch.zeros_like(pos_inds),
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        sigmoid_clamp=sigmoid_clamp,
        ignore_high_fp=ignore_high_fp,
    )


def smoothed_ltrb_iou_loss(pred: Tensor, target: Tensor, loss_type: str = "giou") -> Tensor:
    """IoU losses of (l, t, r, b) boxes around a common point, with +1 in the IoU.

    Unlike ``assigndet.modeling.losses.ltrb_iou_loss`` (exact IoU), the IoU here is
    (I + 1) / (U + 1), as in the official CenterNet ``IOULoss``; so it depends on the units
    (CenterNet uses strides). GIoU = IoU - (E - U) / E with E the enclosing box's area.

    Args:
        pred: ``[N, 4]`` predicted distances, >= 0.
        target: ``[N, 4]`` target distances.
        loss_type: "giou" (1 - GIoU), "iou" (-log IoU) or "linear_iou" (1 - IoU).

    Returns:
        ``[N]`` float32 losses.
    """
    if loss_type not in SMOOTHED_IOU_LOSS_TYPES:
        raise ValueError(
            f"MODEL.CENTERNET.LOC_LOSS_TYPE must be one of {SMOOTHED_IOU_LOSS_TYPES}; got "
            f"{loss_type!r}"
        )
    pred, target = pred.float(), target.float()
    pl, pt, pr, pb = pred.unbind(dim=1)
    tl, tt, tr, tb = target.unbind(dim=1)
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    union = target_area + pred_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    if loss_type == "iou":
        return -iou.log()
    if loss_type == "linear_iou":
        return 1 - iou
    enclosing = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
    return 1 - (iou - (enclosing - union) / enclosing)


def sampling_free_heatmap_targets(
    heatmaps: Tensor, pos_inds: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Soft cross-entropy targets of the class and agnostic heatmaps.

    The gaussian heatmaps, with every listed positive raised to 1: a peak cell already is 1,
    so this only changes the extra ``MORE_POS`` positives, which the focal loss pulls to 1 too.

    Args:
        heatmaps: ``[R, C]`` gaussian targets in [0, 1].
        pos_inds: ``[P]`` rows of the positives; labels: ``[P]`` their classes (ignored for an
            agnostic heatmap, C = 1).

    Returns:
        ``(class_targets [R, C], agnostic_targets [R])``, float32; the agnostic target is the
        maximum over classes.
    """
    targets = heatmaps.float().clone()
    if pos_inds.numel():
        targets[pos_inds, labels if targets.shape[1] > 1 else 0] = 1.0
    return targets, targets.max(dim=1).values


def _mean_over_ranks(value: Tensor, no_reduce: bool) -> Tensor:
    return value if no_reduce else all_reduce_mean(value)


def centernet_losses(
    box_reg: Tensor,
    reg_targets: Tensor,
    heatmaps: Tensor,
    pos_inds: Tensor,
    labels: Tensor,
    cls_logits: Tensor | None = None,
    agn_hm_logits: Tensor | None = None,
    *,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    reg_weight: float = 2.0,
    alpha: float = 0.25,
    beta: float = 4.0,
    gamma: float = 2.0,
    sigmoid_clamp: float = 1e-4,
    ignore_high_fp: float = -1.0,
    loc_loss_type: str = "giou",
    not_norm_reg: bool = True,
    no_reduce: bool = False,
    sampling_free: bool = False,
) -> dict[str, Tensor]:
    """The CenterNet training losses of a batch, computed in float32.

    The focal losses are divided by N_pos = max(positives averaged over ranks, 1), the box loss
    by max(sum of the cell weights averaged over ranks, 1); the weights are 1 with
    ``not_norm_reg``, else the cell's agnostic heatmap target. ``no_reduce`` uses this rank's
    counts instead of the averages.

    With ``sampling_free`` each heatmap's loss is instead the sigmoid cross-entropy against the
    soft targets of :func:`sampling_free_heatmap_targets`, summed over every location (and
    class) and divided by the same N_pos; the focal parameters, the clamp, ``ignore_high_fp``
    and ``pos_weight`` / ``neg_weight`` are not used. The caller applies the guidance.

    Args:
        box_reg: ``[R, 4]`` predicted (l, t, r, b) in strides.
        reg_targets: ``[R, 4]`` targets in strides; rows with a negative maximum are ignored.
        heatmaps: ``[R, C]`` class heatmap targets (C = 1 for the agnostic-only first stage).
        pos_inds: ``[P]`` rows of the heatmap positives; labels: ``[P]`` their classes.
        cls_logits: ``[R, C]`` class heatmap logits, or None (first stage of CenterNet2).
        agn_hm_logits: ``[R]`` agnostic heatmap logits, or None; its target is the maximum of
            ``heatmaps`` over classes.

    Returns:
        ``loss_centernet_pos`` / ``loss_centernet_neg`` (with ``cls_logits``),
        ``loss_centernet_loc``, and ``loss_centernet_agn_pos`` / ``loss_centernet_agn_neg``
        (with ``agn_hm_logits``): scalars. With ``sampling_free``, ``loss_centernet_cls`` and
        ``loss_centernet_agn`` replace the pos / neg pairs.
    """
    focal = {
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "sigmoid_clamp": sigmoid_clamp,
        "ignore_high_fp": ignore_high_fp,
    }
    num_pos = _mean_over_ranks(box_reg.new_tensor(float(pos_inds.numel())), no_reduce)
    num_pos = num_pos.clamp(min=1.0)
    losses = {}
    if sampling_free:
        cls_targets, agn_targets = sampling_free_heatmap_targets(heatmaps, pos_inds, labels)
        if cls_logits is not None:
            losses["loss_centernet_cls"] = sigmoid_ce_loss(cls_logits, cls_targets) / num_pos
    elif cls_logits is not None:
        pos_loss, neg_loss = heatmap_focal_loss(cls_logits, heatmaps, pos_inds, labels, **focal)
        losses["loss_centernet_pos"] = pos_weight * pos_loss / num_pos
        losses["loss_centernet_neg"] = neg_weight * neg_loss / num_pos

    agn_heatmap = heatmaps.float().max(dim=1).values  # [R]
    reg_rows = torch.nonzero(reg_targets.max(dim=1).values >= 0).squeeze(1)
    weights = torch.ones_like(agn_heatmap[reg_rows]) if not_norm_reg else agn_heatmap[reg_rows]
    reg_norm = _mean_over_ranks(weights.sum().detach(), no_reduce).clamp(min=1.0)
    loc = smoothed_ltrb_iou_loss(box_reg[reg_rows], reg_targets[reg_rows], loc_loss_type)
    losses["loss_centernet_loc"] = reg_weight * (loc * weights).sum() / reg_norm

    if agn_hm_logits is not None and sampling_free:
        losses["loss_centernet_agn"] = (
            sigmoid_ce_loss(agn_hm_logits[:, None], agn_targets[:, None]) / num_pos
        )
    elif agn_hm_logits is not None:
        pos_loss, neg_loss = binary_heatmap_focal_loss(
            agn_hm_logits, agn_heatmap, pos_inds, **focal
        )
        losses["loss_centernet_agn_pos"] = pos_weight * pos_loss / num_pos
        losses["loss_centernet_agn_neg"] = neg_weight * neg_loss / num_pos
    return losses
