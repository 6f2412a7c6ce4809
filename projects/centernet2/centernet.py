"""CenterNet as a proposal generator (CenterNet2's first stage) or a one-stage detector.

With ``ONLY_PROPOSAL`` (CenterNet2) the head predicts a class-agnostic heatmap and boxes; the
proposals are its peaks, scored sqrt(sigmoid(agn)), after a class-agnostic NMS, in training and
at test time. Without it (CenterNet*, run by ``CenterNetDetector``) the head predicts a class
heatmap and the outputs are class detections scored sigmoid(cls) after per-class NMS.

With ``MODEL.SAMPLING_FREE.ENABLED`` the heatmaps are trained by sigmoid cross-entropy against
the soft gaussian targets over every location (no focal loss), each guided by the box loss
(one ``GuidedLossScaling`` per heatmap), and their initial bias follows the foreground prior
(:meth:`CenterNet.sampling_free_prior_counts` / :meth:`CenterNet.set_sampling_free_prior`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.config import CfgNode, configurable
from assigndet.data.num_classes import checked_num_classes
from assigndet.layers import ShapeSpec
from assigndet.modeling.box_ops import ltrb_to_boxes
from assigndet.modeling.losses.sampling_free import GuidedLossScaling
from assigndet.modeling.meta_arch.fcos import compute_locations, padded_feature_sizes
from assigndet.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from assigndet.ops import batched_nms
from assigndet.structures import ImageList, Instances

from .centernet_head import CenterNetHead
from .centernet_losses import (
    SMOOTHED_IOU_LOSS_TYPES,
    centernet_losses,
    sampling_free_heatmap_targets,
)
from .centernet_targets import (
    flatten_level_first,
    gaussian_heatmaps,
    heatmap_distances,
    heatmap_positive_indices,
    more_positive_indices,
    regression_targets,
)

__all__ = ["CenterNet", "decode_level", "nms_and_topk"]


def decode_level(
    points: Tensor,
    heatmap: Tensor,
    box_reg: Tensor,
    agn_heatmap: Tensor | None,
    score_thresh: float,
    pre_nms_topk: int,
    sqrt_score: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidates of one level of one image.

    (location, class) pairs whose heatmap probability exceeds ``score_thresh`` are candidates;
    when there are more than ``pre_nms_topk``, the best by score are kept (unsorted). The score
    is the probability, times ``agn_heatmap`` when given, square-rooted when ``sqrt_score``. Boxes
    are (x - l, y - t, x + r, y + b) with x2 >= x1 + 0.01 and y2 >= y1 + 0.01, not clipped.

    Args:
        points: ``[M, 2]`` locations (x, y).
        heatmap: ``[M, C]`` probabilities.
        box_reg: ``[M, 4]`` (l, t, r, b) in pixels.
        agn_heatmap: ``[M]`` agnostic probabilities, or None.
        score_thresh: candidate threshold on ``heatmap`` (before the agnostic factor).
        pre_nms_topk: most candidates kept.
        sqrt_score: take the square root of the score.

    Returns:
        ``(boxes [D, 4], scores [D], classes [D] int64)``.
    """
    candidates = heatmap > score_thresh
    if agn_heatmap is not None:
        heatmap = heatmap * agn_heatmap[:, None]
    locs, classes = candidates.nonzero(as_tuple=True)
    scores = heatmap[locs, classes]
    if scores.numel() > pre_nms_topk:
        scores, top = scores.topk(pre_nms_topk, sorted=False)
        locs, classes = locs[top], classes[top]
    boxes = ltrb_to_boxes(points[locs], box_reg[locs])
    boxes[:, 2] = torch.max(boxes[:, 2], boxes[:, 0] + 0.01)
    boxes[:, 3] = torch.max(boxes[:, 3], boxes[:, 1] + 0.01)
    return boxes, scores.sqrt() if sqrt_score else scores, classes


def nms_and_topk(
    boxes: Tensor, scores: Tensor, classes: Tensor, nms_thresh: float, post_nms_topk: int
) -> Tensor:
    """Per-class NMS (none when ``nms_thresh`` <= 0), then keep every score >= the
    ``post_nms_topk``-th largest, so ties can keep a few more.

    Args:
        boxes: ``[D, 4]``; scores: ``[D]``; classes: ``[D]`` NMS groups.

    Returns:
        ``[K]`` int64 indices of the kept outputs.
    """
    if nms_thresh > 0:
        keep = batched_nms(boxes, scores, classes, nms_thresh)
    else:
        keep = torch.arange(len(scores), device=scores.device)
    if len(keep) > post_nms_topk:
        kept_scores = scores[keep]
        kth = torch.kthvalue(kept_scores.float(), len(keep) - post_nms_topk + 1).values
        keep = keep[kept_scores >= kth]
    return keep


def _flatten(maps: list[Tensor]) -> Tensor:
    """L maps ``[N, C, H_l, W_l]`` -> ``[sum_l N * H_l * W_l, C]``, level-first."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps], dim=0)


@PROPOSAL_GENERATOR_REGISTRY.register()
class CenterNet(nn.Module):
    """CenterNet (Zhou et al.) with the losses and outputs of the official CenterNet2 code.

    Called as ``(images, features, gt_instances)`` -> ``(outputs, losses)``.

    Training: losses ``loss_centernet_pos`` / ``_neg`` (class heatmap, unless
    ``only_proposal``), ``loss_centernet_agn_pos`` / ``_agn_neg`` (with ``with_agn_hm``) and
    ``loss_centernet_loc``. With ``only_proposal`` the outputs are the training proposals;
    otherwise they are None (a one-stage detector has nothing to hand on).

    Sampling-Free (``sampling_free``): ``loss_centernet_cls`` and ``loss_centernet_agn`` (sigmoid
    cross-entropy against the soft heatmap targets / N_pos, times the guidance g·δ of the
    modules ``sf_cls_guidance`` / ``sf_agn_guidance``, guided by ``loss_centernet_loc``) and
    ``loss_centernet_cls_delta`` / ``loss_centernet_agn_delta`` (-log δ) replace the focal
    pairs; with ``sf_guided`` off the raw cross-entropy / N_pos is the loss and there is no δ.

    Test: with ``only_proposal``, proposals ``Instances(proposal_boxes, objectness_logits,
    scores, pred_classes)`` where ``objectness_logits`` = ``scores`` = sqrt(sigmoid(agn)) (not a
    logit) and ``pred_classes`` is 0; otherwise detections ``Instances(pred_boxes, scores,
    pred_classes)``. All at the unpadded input size, not clipped, without gradient.
    """

    @configurable
    def __init__(
        self,
        *,
        centernet_head: CenterNetHead,
        in_features: list[str],
        strides: list[int],
        num_classes: int = 80,
        score_thresh: float = 0.05,
        hm_min_overlap: float = 0.8,
        loc_loss_type: str = "giou",
        min_radius: float = 4,
        hm_focal_alpha: float = 0.25,
        hm_focal_beta: float = 4,
        loss_gamma: float = 2.0,
        reg_weight: float = 2.0,
        not_norm_reg: bool = True,
        with_agn_hm: bool = False,
        only_proposal: bool = False,
        not_nms: bool = False,
        pos_weight: float = 1.0,
        neg_weight: float = 1.0,
        sigmoid_clamp: float = 1e-4,
        ignore_high_fp: float = -1.0,
        center_nms: bool = False,
        sizes_of_interest: list[list[float]] = (
            (0, 80),
            (64, 160),
            (128, 320),
            (256, 640),
            (512, 10000000),
        ),
        more_pos: bool = False,
        more_pos_thresh: float = 0.2,
        more_pos_topk: int = 9,
        pre_nms_topk_train: int = 1000,
        pre_nms_topk_test: int = 1000,
        post_nms_topk_train: int = 100,
        post_nms_topk_test: int = 100,
        nms_thresh_train: float = 0.6,
        nms_thresh_test: float = 0.6,
        no_reduce: bool = False,
        sampling_free: bool = False,
        sf_guided: bool = True,
        sf_guidance: str = "global",
        sf_delta_clamp: Sequence[float] = (1e-2, 1e2),
    ) -> None:
        """
        Args:
            centernet_head: the head (module name ``centernet_head``, as in the official code).
            in_features: levels read from the feature dict, fine to coarse.
            strides: stride of each of them.
            num_classes: K of the class heatmap.
            score_thresh: candidate threshold on the heatmap probability (train and test).
            hm_min_overlap: gaussian size, delta = (1 - it) / (1 + it).
            loc_loss_type: "giou", "iou" or "linear_iou" (with +1 smoothing).
            min_radius: floor of the gaussian radius, in pixels.
            hm_focal_alpha, hm_focal_beta, loss_gamma: heatmap focal loss parameters.
            reg_weight, pos_weight, neg_weight: loss weights.
            not_norm_reg: box loss averaged over cells (else weighted by the heatmap).
            with_agn_hm: the head has an agnostic heatmap, trained on the agnostic targets;
                with a class heatmap too, scores are sqrt(cls * agn).
            only_proposal: first stage of CenterNet2 (no class heatmap).
            not_nms: skip NMS. center_nms: keep 3x3 peaks of the heatmap (implies not_nms).
            pos_weight, neg_weight: focal loss weights.
            sigmoid_clamp, ignore_high_fp: focal loss clamp and high-probability negative cut.
            sizes_of_interest: per level, the inclusive half-diagonal range.
            more_pos, more_pos_thresh, more_pos_topk: extra positives (CenterNet*).
            pre_nms_topk_*: candidates kept per level and image; post_nms_topk_*: per image.
            nms_thresh_*: NMS IoU threshold; <= 0 skips NMS.
            no_reduce: loss normalisers of this rank only.
            sampling_free: Sampling-Free heatmap losses (see the class docstring).
            sf_guided: guide each heatmap loss by the box loss (with a learnable δ).
            sf_guidance, sf_delta_clamp: ``GuidedLossScaling``'s ``guidance`` and
                ``delta_clamp``.
        """
        super().__init__()
        num_levels = len(in_features)
        if len(strides) != num_levels or len(sizes_of_interest) != num_levels:
            raise ValueError(
                f"CenterNet needs one stride and one SOI range per level of {list(in_features)}; "
                f"got FPN_STRIDES {list(strides)} and SOI {[list(r) for r in sizes_of_interest]}"
            )
        if only_proposal and not with_agn_hm:
            raise ValueError("MODEL.CENTERNET.ONLY_PROPOSAL needs MODEL.CENTERNET.WITH_AGN_HM")
        if loc_loss_type not in SMOOTHED_IOU_LOSS_TYPES:
            raise ValueError(
                f"MODEL.CENTERNET.LOC_LOSS_TYPE must be one of {SMOOTHED_IOU_LOSS_TYPES}; got "
                f"{loc_loss_type!r}"
            )
        if more_pos and not 1 <= more_pos_topk <= 9 * num_levels:
            raise ValueError(
                f"MODEL.CENTERNET.MORE_POS_TOPK must be in [1, {9 * num_levels}] (9 cells per "
                f"level); got {more_pos_topk}"
            )
        if (
            getattr(centernet_head, "only_proposal", only_proposal) != only_proposal
            or getattr(centernet_head, "with_agn_hm", with_agn_hm) != with_agn_hm
        ):
            raise ValueError("the CenterNet head disagrees on only_proposal / with_agn_hm")
        self.centernet_head = centernet_head
        self.in_features = list(in_features)
        self.strides = [int(s) for s in strides]
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.delta = (1 - hm_min_overlap) / (1 + hm_min_overlap)
        self.loc_loss_type = loc_loss_type
        self.min_radius = min_radius
        self.hm_focal_alpha = hm_focal_alpha
        self.hm_focal_beta = hm_focal_beta
        self.loss_gamma = loss_gamma
        self.reg_weight = reg_weight
        self.not_norm_reg = not_norm_reg
        self.with_agn_hm = with_agn_hm
        self.only_proposal = only_proposal
        self.center_nms = center_nms
        self.not_nms = not_nms or center_nms
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.sigmoid_clamp = sigmoid_clamp
        self.ignore_high_fp = ignore_high_fp
        self.sizes_of_interest = [[float(lo), float(hi)] for lo, hi in sizes_of_interest]
        self.more_pos = more_pos
        self.more_pos_thresh = more_pos_thresh
        self.more_pos_topk = more_pos_topk
        self.pre_nms_topk_train = pre_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_train = post_nms_topk_train
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh_train = nms_thresh_train
        self.nms_thresh_test = nms_thresh_test
        self.no_reduce = no_reduce
        self.sampling_free = sampling_free
        if sampling_free and sf_guided:
            guided = {"guidance": sf_guidance, "delta_clamp": tuple(sf_delta_clamp)}
            if with_agn_hm:
                self.sf_agn_guidance = GuidedLossScaling(**guided, name="centernet_agn")
            if not only_proposal:
                self.sf_cls_guidance = GuidedLossScaling(**guided, name="centernet_cls")

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        c = cfg.MODEL.CENTERNET
        if c.AS_PROPOSAL:
            raise NotImplementedError(
                "MODEL.CENTERNET.AS_PROPOSAL = True (class x agnostic heatmap as proposals) is "
                "not implemented; set it to False"
            )
        missing = [f for f in c.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.CENTERNET.IN_FEATURES {list(c.IN_FEATURES)} names {missing}, which the "
                f"backbone does not give; it gives {list(input_shape)}"
            )
        shapes = [input_shape[f] for f in c.IN_FEATURES]
        backbone_strides = [s.stride for s in shapes]
        if backbone_strides != list(c.FPN_STRIDES):
            raise ValueError(
                f"MODEL.CENTERNET.FPN_STRIDES {list(c.FPN_STRIDES)} do not match the strides "
                f"{backbone_strides} of {list(c.IN_FEATURES)} given by the backbone"
            )
        sf = cfg.MODEL.SAMPLING_FREE
        score_thresh = c.INFERENCE_TH
        if sf.ENABLED:
            # cross-entropy scores sit lower than focal ones (fact sheet, section 5)
            score_thresh = min(score_thresh, sf.SCORE_THRESH_TEST)
        return {
            "centernet_head": CenterNetHead(cfg, shapes),
            "in_features": c.IN_FEATURES,
            "strides": c.FPN_STRIDES,
            "num_classes": (
                c.NUM_CLASSES if c.ONLY_PROPOSAL
                else checked_num_classes(cfg, "MODEL.CENTERNET.NUM_CLASSES")
            ),
            "score_thresh": score_thresh,
            "hm_min_overlap": c.HM_MIN_OVERLAP,
            "loc_loss_type": c.LOC_LOSS_TYPE,
            "min_radius": c.MIN_RADIUS,
            "hm_focal_alpha": c.HM_FOCAL_ALPHA,
            "hm_focal_beta": c.HM_FOCAL_BETA,
            "loss_gamma": c.LOSS_GAMMA,
            "reg_weight": c.REG_WEIGHT,
            "not_norm_reg": c.NOT_NORM_REG,
            "with_agn_hm": c.WITH_AGN_HM,
            "only_proposal": c.ONLY_PROPOSAL,
            "not_nms": c.NOT_NMS,
            "pos_weight": c.POS_WEIGHT,
            "neg_weight": c.NEG_WEIGHT,
            "sigmoid_clamp": c.SIGMOID_CLAMP,
            "ignore_high_fp": c.IGNORE_HIGH_FP,
            "center_nms": c.CENTER_NMS,
            "sizes_of_interest": c.SOI,
            "more_pos": c.MORE_POS,
            "more_pos_thresh": c.MORE_POS_THRESH,
            "more_pos_topk": c.MORE_POS_TOPK,
            "pre_nms_topk_train": c.PRE_NMS_TOPK_TRAIN,
            "pre_nms_topk_test": c.PRE_NMS_TOPK_TEST,
            "post_nms_topk_train": c.POST_NMS_TOPK_TRAIN,
            "post_nms_topk_test": c.POST_NMS_TOPK_TEST,
            "nms_thresh_train": c.NMS_TH_TRAIN,
            "nms_thresh_test": c.NMS_TH_TEST,
            "no_reduce": c.NO_REDUCE,
            "sampling_free": sf.ENABLED,
            "sf_guided": sf.GUIDED,
            "sf_guidance": sf.GUIDANCE,
            "sf_delta_clamp": tuple(sf.DELTA_CLAMP),
        }

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        gt_instances: list[Instances] | None = None,
    ) -> tuple[list[Instances] | None, dict[str, Tensor]]:
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"CenterNet reads {self.in_features}; the features lack {missing}")
        maps = [features[f] for f in self.in_features]
        cls_logits, box_reg, agn_hm_logits = self.centernet_head(maps)
        points = compute_locations([m.shape[-2:] for m in maps], self.strides, maps[0].device)
        if not self.training:
            return self.predict(points, cls_logits, box_reg, agn_hm_logits, images), {}
        if gt_instances is None:
            raise ValueError("CenterNet needs gt_instances in training")
        losses = self.losses(points, cls_logits, box_reg, agn_hm_logits, gt_instances)
        proposals = None
        if self.only_proposal:
            proposals = self.predict(points, cls_logits, box_reg, agn_hm_logits, images)
        return proposals, losses

    def losses(
        self,
        points: list[Tensor],
        cls_logits: list[Tensor | None],
        box_reg: list[Tensor],
        agn_hm_logits: list[Tensor | None],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        """Targets of the batch and the losses of the head's outputs (level lists of maps)."""
        shapes = [tuple(m.shape[-2:]) for m in box_reg]
        gt_boxes = [inst.gt_boxes.float() for inst in gt_instances]
        gt_classes = [inst.gt_classes.long() for inst in gt_instances]
        for classes in gt_classes:
            if classes.numel() and (classes.min() < 0 or classes.max() >= self.num_classes):
                raise ValueError(
                    f"gt_classes must be in [0, {self.num_classes}) (MODEL.CENTERNET.NUM_CLASSES); "
                    f"got {classes.tolist()}"
                )
        box_reg_flat = _flatten(box_reg)
        reg_targets, heatmaps = self.targets(points, gt_boxes, gt_classes)
        soi = box_reg_flat.new_tensor(self.sizes_of_interest)
        if self.more_pos:
            pos_inds, labels = more_positive_indices(
                box_reg_flat,
                gt_boxes,
                gt_classes,
                shapes,
                self.strides,
                soi,
                self.more_pos_thresh,
                self.more_pos_topk,
                self.loc_loss_type,
            )
        else:
            pos_inds, labels = heatmap_positive_indices(
                gt_boxes, gt_classes, shapes, self.strides, soi
            )
        losses = centernet_losses(
            box_reg_flat,
            reg_targets,
            heatmaps,
            pos_inds,
            labels,
            cls_logits=None if self.only_proposal else _flatten(cls_logits),
            agn_hm_logits=_flatten(agn_hm_logits)[:, 0] if self.with_agn_hm else None,
            pos_weight=self.pos_weight,
            neg_weight=self.neg_weight,
            reg_weight=self.reg_weight,
            alpha=self.hm_focal_alpha,
            beta=self.hm_focal_beta,
            gamma=self.loss_gamma,
            sigmoid_clamp=self.sigmoid_clamp,
            ignore_high_fp=self.ignore_high_fp,
            loc_loss_type=self.loc_loss_type,
            not_norm_reg=self.not_norm_reg,
            no_reduce=self.no_reduce,
            sampling_free=self.sampling_free,
        )
        if self.sampling_free:
            for key, guidance in (
                ("loss_centernet_cls", getattr(self, "sf_cls_guidance", None)),
                ("loss_centernet_agn", getattr(self, "sf_agn_guidance", None)),
            ):
                if key in losses and guidance is not None:
                    losses = guidance.apply_to(
                        losses, key, ["loss_centernet_loc"], f"{key}_delta"
                    )
        return losses

    @torch.no_grad()
    def sampling_free_prior_counts(
        self, images: ImageList, gt_instances: list[Instances]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Foreground and all binary outputs of each heatmap for a batch, without the network.

        The feature sizes come from the padded batch size; the targets are the Sampling-Free
        soft targets (gaussian heatmaps, each peak 1), counted as their sum. ``MORE_POS``'s
        extra positives depend on the predicted boxes and are not counted.

        Args:
            images: the padded batch (only its size is read).
            gt_instances: per image, ``gt_boxes`` and ``gt_classes``.

        Returns:
            ``{"centernet_agn": (N^f, N)}`` (with the agnostic heatmap) and
            ``{"centernet_cls": (N^f, N)}`` (with the class heatmap); N = locations x channels,
            float64 scalar tensors.
        """
        shapes = padded_feature_sizes(tuple(images.tensor.shape[-2:]), self.strides)
        device = images.tensor.device
        points = compute_locations(shapes, self.strides, device)
        gt_boxes = [inst.gt_boxes.float().to(device) for inst in gt_instances]
        gt_classes = [inst.gt_classes.long().to(device) for inst in gt_instances]
        _, heatmaps = self.targets(points, gt_boxes, gt_classes)
        soi = torch.tensor(self.sizes_of_interest, device=device)
        pos_inds, labels = heatmap_positive_indices(gt_boxes, gt_classes, shapes, self.strides, soi)
        cls_targets, agn_targets = sampling_free_heatmap_targets(heatmaps, pos_inds, labels)
        counts = {}
        if self.with_agn_hm:
            counts["centernet_agn"] = (
                agn_targets.double().sum(),
                torch.tensor(float(agn_targets.numel()), dtype=torch.float64, device=device),
            )
        if not self.only_proposal:
            counts["centernet_cls"] = (
                cls_targets.double().sum(),
                torch.tensor(float(cls_targets.numel()), dtype=torch.float64, device=device),
            )
        return counts

    def set_sampling_free_prior(self, priors: dict[str, float]) -> None:
        """Set the bias of each heatmap named in ``priors`` (``"centernet_agn"``,
        ``"centernet_cls"``) to -log((1 - p) / p); other names are left to other modules."""
        for name, heatmap in (("centernet_agn", "agn"), ("centernet_cls", "cls")):
            if name in priors:
                self.centernet_head.set_heatmap_prior(heatmap, float(priors[name]))

    @torch.no_grad()
    def targets(
        self, points: list[Tensor], gt_boxes: list[Tensor], gt_classes: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Box and heatmap targets of the batch, flattened level-first.

        Args:
            points: L tensors ``[M_l, 2]``, the locations of each level.
            gt_boxes: per image ``[N_b, 4]``; gt_classes: per image ``[N_b]``.

        Returns:
            ``reg_targets [B * M, 4]`` (strides, -INF where none) and ``heatmaps [B * M, C]``
            (C = 1, agnostic, with ``only_proposal``).
        """
        num_locations = [len(p) for p in points]
        all_points = torch.cat(points)
        strides = torch.cat([p.new_full((len(p),), float(s)) for p, s in zip(points, self.strides)])
        ranges = torch.cat(
            [p.new_tensor(r).expand(len(p), 2) for p, r in zip(points, self.sizes_of_interest)]
        )
        channels = 1 if self.only_proposal else self.num_classes
        reg_targets, heatmaps = [], []
        for boxes, classes in zip(gt_boxes, gt_classes):
            dist = heatmap_distances(all_points, strides, boxes, self.delta, self.min_radius)
            reg_targets.append(regression_targets(all_points, strides, ranges, boxes, dist))
            heatmaps.append(
                gaussian_heatmaps(dist, None if self.only_proposal else classes, channels)
            )
        return (
            flatten_level_first(reg_targets, num_locations),
            flatten_level_first(heatmaps, num_locations),
        )

    @torch.no_grad()
    def predict(
        self,
        points: list[Tensor],
        cls_logits: list[Tensor | None],
        box_reg: list[Tensor],
        agn_hm_logits: list[Tensor | None],
        images: ImageList,
    ) -> list[Instances]:
        """Proposals (``only_proposal``) or detections of every image; see the class docstring."""
        if self.only_proposal:
            heatmaps = [x.float().sigmoid() for x in agn_hm_logits]
            agn_maps: list[Tensor | None] = [None] * len(heatmaps)
        else:
            heatmaps = [x.float().sigmoid() for x in cls_logits]
            agn_maps = [x.float().sigmoid() if x is not None else None for x in agn_hm_logits]
        if self.center_nms:
            heatmaps = [h * (F.max_pool2d(h, 3, stride=1, padding=1) == h) for h in heatmaps]
        pre_nms_topk = self.pre_nms_topk_train if self.training else self.pre_nms_topk_test
        post_nms_topk = self.post_nms_topk_train if self.training else self.post_nms_topk_test
        nms_thresh = self.nms_thresh_train if self.training else self.nms_thresh_test
        if self.not_nms:
            nms_thresh = 0.0

        results = []
        for i, image_size in enumerate(images.image_sizes):
            boxes, scores, classes = [], [], []
            for level, stride in enumerate(self.strides):
                agn = agn_maps[level]
                level_boxes, level_scores, level_classes = decode_level(
                    points[level],
                    heatmaps[level][i].flatten(1).t(),
                    box_reg[level][i].detach().float().flatten(1).t() * stride,
                    agn[i, 0].flatten() if agn is not None else None,
                    self.score_thresh,
                    pre_nms_topk,
                    sqrt_score=self.with_agn_hm,
                )
                boxes.append(level_boxes)
                scores.append(level_scores)
                classes.append(level_classes)
            boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
            keep = nms_and_topk(boxes, scores, classes, nms_thresh, post_nms_topk)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            if self.only_proposal:
                result = Instances(image_size, proposal_boxes=boxes, objectness_logits=scores)
                if not self.training:
                    result.scores = scores
                    result.pred_classes = classes
            else:
                result = Instances(image_size, pred_boxes=boxes, scores=scores)
                result.pred_classes = classes
            results.append(result)
        return results
