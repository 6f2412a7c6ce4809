"""FCOS-PSS and ATSS-PSS: one-stage detectors without NMS (Zhou et al., "Object Detection Made
Simpler by Eliminating Heuristic NMS", 2022).

A positive sample selector (PSS) branch on the regression tower scores every location; the joint
score P = sigma(pss) * sigma(cls) * sigma(ctr) is trained towards one positive per object (the
base detector's one-to-many positive with the best P^(1 - alpha) * IoU^alpha), with a focal loss
and a ranking loss, while the base detector keeps its own losses. At test time the 100 best
(location, class) pairs by P are the detections, with no NMS.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from assigndet.config import CfgNode, configurable
from assigndet.modeling import META_ARCH_REGISTRY
from assigndet.modeling.box_ops import ltrb_to_boxes
from assigndet.modeling.meta_arch.fcos import FCOS, flatten_levels
from assigndet.structures import ImageList, Instances, clip_boxes_
from assigndet.utils.comm import all_reduce_mean

from .atss import ATSS
from .losses import pss_focal_loss, pss_log_score, pss_ranking_loss
from .one_to_one import pss_one_to_one_labels
from .pss_head import PSSHead

__all__ = ["ATSS_PSS", "FCOS_PSS", "PSSMixin", "top_detections"]


def top_detections(
    points: Tensor,
    strides: Tensor,
    box_reg: Tensor,
    log_scores: Tensor,
    num_detections: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``num_detections`` best (location, class) pairs of each image, with no NMS.

    Only fixed-size tensor ops, so the function traces and exports as it is.

    Args:
        points: ``[R, 2]`` locations (x, y) in input pixels, all levels concatenated.
        strides: ``[R]`` stride of each location (the unit of ``box_reg``).
        box_reg: ``[N, R, 4]`` predicted (l, t, r, b) in strides.
        log_scores: ``[N, R, K]`` log of the joint score P.
        num_detections: D, at most R * K.

    Returns:
        ``boxes [N, D, 4]`` XYXY (not clipped), ``scores [N, D]`` (P, descending) and
        ``classes [N, D]`` int64.
    """
    num_classes = log_scores.shape[-1]
    top_log, top_idx = log_scores.flatten(1).topk(num_detections, dim=1)
    locs = torch.div(top_idx, num_classes, rounding_mode="floor")
    classes = top_idx - locs * num_classes
    ltrb = torch.gather(box_reg, 1, locs[..., None].expand(-1, -1, 4)) * strides[locs][..., None]
    return ltrb_to_boxes(points[locs], ltrb), top_log.exp(), classes


class PSSMixin:
    """The PSS branch, its losses and NMS-free inference, over a one-stage base detector.

    The base class (FCOS or ATSS) gives ``predict``, ``label_locations`` (the one-to-many
    assignment whose positives are the candidates), ``losses`` and its NMS ``inference``.
    Training returns the base losses plus ``loss_pss`` (lambda1 * focal loss of P against the
    one-to-one labels, normalised by the number of matched objects averaged over ranks) and
    ``loss_pss_rank`` (lambda2 * ranking loss).
    """

    @configurable
    def __init__(
        self,
        *,
        pss_head: PSSHead,
        pss_loss_weight: float = 1.0,
        rank_loss_weight: float = 0.25,
        rank_margin: float = 0.5,
        rank_num_negatives: int = 100,
        alpha: float = 0.8,
        matcher: str = "top_one",
        use_centerness: bool = True,
        detach_score_factors: bool = False,
        use_nms: bool = False,
        pss_score_threshold: float = 0.0,
        train_only_pss: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            pss_head: the PSS branch.
            pss_loss_weight, rank_loss_weight: lambda1 and lambda2.
            rank_margin, rank_num_negatives: margin and hardest negatives per image of the
                ranking loss.
            alpha: matching quality P^(1 - alpha) * IoU^alpha.
            matcher: "top_one" (per-object best candidate) or "hungarian".
            use_centerness: include sigma(ctr) in P.
            detach_score_factors: stop the PSS losses reaching sigma(cls) and sigma(ctr) too.
            use_nms: test as the base detector with NMS (one-to-many mode), ignoring the branch.
            pss_score_threshold: minimum P of a detection in end-to-end mode.
            train_only_pss: two-step training; every parameter but the branch's is frozen, the
                base losses are skipped and the base modules stay in eval mode.
            kwargs: the base detector's arguments.
        """
        super().__init__(**kwargs)
        self.pss_head = pss_head
        self.pss_loss_weight = pss_loss_weight
        self.rank_loss_weight = rank_loss_weight
        self.rank_margin = rank_margin
        self.rank_num_negatives = rank_num_negatives
        self.alpha = alpha
        self.matcher = matcher
        self.use_centerness = use_centerness
        self.detach_score_factors = detach_score_factors
        self.use_nms = use_nms
        self.pss_score_threshold = pss_score_threshold
        self.train_only_pss = train_only_pss
        if train_only_pss:
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith("pss_head."))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        args = super().from_config(cfg)
        pss = cfg.MODEL.PSS
        channels = args["backbone"].output_shape()[cfg.MODEL.FCOS.IN_FEATURES[0]].channels
        args["pss_head"] = PSSHead(
            channels,
            num_convs=pss.NUM_CONVS,
            norm=pss.NORM,
            prior_prob=pss.PRIOR_PROB,
            stop_gradient=pss.STOP_GRADIENT,
        )
        args.update(
            pss_loss_weight=pss.LOSS_WEIGHT,
            rank_loss_weight=pss.RANK_LOSS_WEIGHT,
            rank_margin=pss.RANK_MARGIN,
            rank_num_negatives=pss.RANK_NUM_NEGATIVES,
            alpha=pss.ALPHA,
            matcher=pss.MATCHER,
            use_centerness=pss.USE_CENTERNESS,
            detach_score_factors=pss.DETACH_SCORE_FACTORS,
            use_nms=pss.USE_NMS,
            pss_score_threshold=pss.SCORE_THRESH_TEST,
            train_only_pss=pss.TRAIN_ONLY_PSS,
        )
        return args

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.train_only_pss:
            for name, module in self.named_children():
                if name != "pss_head":
                    module.train(False)  # frozen BN statistics stay as loaded
        return self

    def predict(self, images: ImageList) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
        """The base detector's predictions with the PSS branch's logits ``[N, R]`` in place of
        the box tower's features (which only the branch reads):
        ``(locations, cls_logits, box_reg, ctr_logits, pss_logits)``."""
        locations, cls_logits, box_reg, ctr_logits, box_features = super().predict(images)
        pss_logits = flatten_levels(self.pss_head(box_features))[..., 0]
        return locations, cls_logits, box_reg, ctr_logits, pss_logits

    def forward(self, batched_inputs: list[dict[str, Any]]):
        images = self.preprocess_image(batched_inputs)
        predictions = self.predict(images)
        if not self.training:
            return self.postprocess_predictions(predictions, images, batched_inputs)
        locations, cls_logits, box_reg, ctr_logits, pss_logits = predictions
        gt_instances = self.gt_instances(batched_inputs)
        targets = self.label_locations(locations, gt_instances)
        losses = {}
        if not self.train_only_pss:
            losses.update(self.losses(cls_logits, box_reg, ctr_logits, targets))
        losses.update(
            self.pss_losses(
                locations, cls_logits, box_reg, ctr_logits, pss_logits, targets.matched_idxs,
                gt_instances,
            )
        )
        return losses

    def postprocess_predictions(
        self,
        predictions: tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor],
        images: ImageList,
        batched_inputs: list[dict[str, Any]],
    ) -> list[dict[str, Instances]]:
        """End-to-end top detections by P (no NMS), or with ``MODEL.PSS.USE_NMS`` the base
        detector's NMS inference with the PSS logits ignored; then rescaled to output size."""
        locations, cls_logits, box_reg, ctr_logits, pss_logits = predictions
        if self.use_nms:
            results = self.inference(locations, cls_logits, box_reg, ctr_logits, images)
        else:
            results = self.inference_end_to_end(
                locations, cls_logits, box_reg, ctr_logits, pss_logits, images
            )
        return self.postprocess(results, batched_inputs, images)

    def log_joint_scores(
        self, cls_logits: Tensor, ctr_logits: Tensor, pss_logits: Tensor
    ) -> Tensor:
        """log P ``[N, R, K]`` from ``[N, R, K]``, ``[N, R]`` and ``[N, R]`` logits."""
        if self.detach_score_factors:
            cls_logits, ctr_logits = cls_logits.detach(), ctr_logits.detach()
        return pss_log_score(pss_logits, cls_logits, ctr_logits if self.use_centerness else None)

    def pss_losses(
        self,
        locations: list[Tensor],
        cls_logits: Tensor,
        box_reg: Tensor,
        ctr_logits: Tensor,
        pss_logits: Tensor,
        matched_idxs: Tensor,
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        """``loss_pss`` and ``loss_pss_rank`` of the batch.

        Args:
            locations: L tensors ``[R_l, 2]``.
            cls_logits: ``[N, R, K]``; box_reg: ``[N, R, 4]``; ctr_logits, pss_logits: ``[N, R]``.
            matched_idxs: ``[N, R]`` the base assignment's object index per location (-1: none).
            gt_instances: the N images' ground truth.
        """
        log_p = self.log_joint_scores(cls_logits, ctr_logits, pss_logits)
        with torch.no_grad():
            points, strides, _ = self._per_location(locations)
            pred_boxes = ltrb_to_boxes(points, box_reg.detach().float() * strides[:, None])
            labels = pss_one_to_one_labels(
                pred_boxes,
                log_p.detach().exp(),
                matched_idxs,
                [inst.gt_boxes for inst in gt_instances],
                [inst.gt_classes for inst in gt_instances],
                self.num_classes,
                alpha=self.alpha,
                matcher=self.matcher,
            )
        targets = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].float()
        num_matched = all_reduce_mean(targets.sum().detach()).clamp(min=1.0)
        loss_pss = pss_focal_loss(
            log_p, targets, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma
        ).sum()
        loss_rank = pss_ranking_loss(
            log_p.exp(), labels, margin=self.rank_margin, num_negatives=self.rank_num_negatives
        )
        return {
            "loss_pss": self.pss_loss_weight * loss_pss / num_matched,
            "loss_pss_rank": self.rank_loss_weight * loss_rank,
        }

    def detect(
        self,
        locations: list[Tensor],
        cls_logits: Tensor,
        box_reg: Tensor,
        ctr_logits: Tensor,
        pss_logits: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """End-to-end detections of the batch (see :func:`top_detections`)."""
        points, strides, _ = self._per_location(locations)
        log_p = self.log_joint_scores(cls_logits, ctr_logits, pss_logits)
        num_detections = min(self.max_detections_per_image, log_p.shape[1] * log_p.shape[2])
        return top_detections(points, strides, box_reg.float(), log_p, num_detections)

    @torch.no_grad()
    def inference_end_to_end(
        self,
        locations: list[Tensor],
        cls_logits: Tensor,
        box_reg: Tensor,
        ctr_logits: Tensor,
        pss_logits: Tensor,
        images: ImageList,
    ) -> list[Instances]:
        """The top detections by P of every image at its input size, no NMS."""
        boxes, scores, classes = self.detect(locations, cls_logits, box_reg, ctr_logits, pss_logits)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            keep = scores[i] > self.pss_score_threshold
            result = Instances(
                image_size,
                pred_boxes=clip_boxes_(boxes[i][keep], image_size),
                scores=scores[i][keep],
            )
            result.pred_classes = classes[i][keep]
            results.append(result)
        return results

    def export_forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The deployable graph: raw images ``[N, 3, H, W]`` (pixel values in INPUT.FORMAT, H and
        W multiples of the backbone's size divisibility) -> ``boxes [N, D, 4]`` clipped to the
        image, ``scores [N, D]`` and ``classes [N, D]``; D = TEST.DETECTIONS_PER_IMAGE. No NMS."""
        normalized = (images.float() - self.pixel_mean) / self.pixel_std
        batch = ImageList(normalized, [tuple(normalized.shape[-2:])] * normalized.shape[0])
        locations, cls_logits, box_reg, ctr_logits, pss_logits = self.predict(batch)
        boxes, scores, classes = self.detect(locations, cls_logits, box_reg, ctr_logits, pss_logits)
        height, width = images.shape[-2:]
        limits = boxes.new_tensor([width, height, width, height])
        return torch.minimum(boxes.clamp(min=0), limits), scores, classes


@META_ARCH_REGISTRY.register()
class FCOS_PSS(PSSMixin, FCOS):  # noqa: N801  (the meta-architecture's config name)
    """FCOS with a positive sample selector (``MODEL.META_ARCHITECTURE: "FCOS_PSS"``)."""


@META_ARCH_REGISTRY.register()
class ATSS_PSS(PSSMixin, ATSS):  # noqa: N801
    """ATSS with a positive sample selector (``MODEL.META_ARCHITECTURE: "ATSS_PSS"``)."""

