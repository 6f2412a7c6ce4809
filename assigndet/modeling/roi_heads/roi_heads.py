"""R-CNN RoI heads: proposal labelling and sampling (``ROIHeads``) and the box branch on pooled
FPN features (``StandardROIHeads``), with detectron2's names, behaviour and state-dict keys.

Module call (all RoI heads): ``(images, features, proposals, targets=None)`` ->
``(results, losses)``. In training ``targets`` (per image ``Instances`` with ``gt_boxes`` and
``gt_classes``) are required, ``results`` are the sampled proposals and ``losses`` a dict of
scalars; at test time ``results`` are per-image detections (``pred_boxes``, ``scores``,
``pred_classes``) at the proposals' image size and ``losses`` is empty.

With ``MODEL.SAMPLING_FREE.ENABLED`` (``sampling_free``) nothing is sampled: every proposal with
a label >= 0 (GT boxes appended) enters the losses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from fvcore.common.registry import Registry
from torch import Tensor, nn
from torchvision.ops import box_iou

from ...config import CfgNode, configurable
from ...data.num_classes import checked_num_classes
from ...layers import ShapeSpec
from ...structures import ImageList, Instances
from ...utils.events import current_event_storage
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..sampling import subsample_labels
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, log_sampling_free_stats

__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "StandardROIHeads",
    "add_ground_truth_to_proposals",
    "build_roi_heads",
    "pairwise_iou",
]

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
RoI heads of two-stage models, named by MODEL.ROI_HEADS.NAME; each is called as
``cls(cfg, input_shape)`` with the backbone's ``{feature name: ShapeSpec}``.
"""


def build_roi_heads(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """Build ``cfg.MODEL.ROI_HEADS.NAME`` on features of shapes ``input_shape``."""
    name = cfg.MODEL.ROI_HEADS.NAME
    registered = sorted(n for n, _ in ROI_HEADS_REGISTRY)
    if name not in registered:
        raise KeyError(
            f"MODEL.ROI_HEADS.NAME = {name!r} is not registered RoI heads; registered: {registered}"
        )
    return ROI_HEADS_REGISTRY.get(name)(cfg, input_shape)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[N, M]`` IoU of XYXY boxes ``[N, 4]`` x ``[M, 4]``; 0 where boxes do not overlap (also
    for two empty boxes, where torchvision's ``box_iou`` gives 0 / 0)."""
    return box_iou(boxes1, boxes2).nan_to_num(0.0)


# The objectness of a GT box added to the proposals: the logit of a probability of 1 - 1e-10.
_GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def add_ground_truth_to_proposals(
    targets: list[Instances], proposals: list[Instances]
) -> list[Instances]:
    """Append each image's GT boxes to its proposals.

    The added rows get ``proposal_boxes`` = ``gt_boxes`` and ``objectness_logits`` ~ 23 (a
    probability of 1 - 1e-10); any other proposal field is taken from the targets' field of the
    same name, and a field the targets lack is an error.
    """
    if len(targets) != len(proposals):
        raise ValueError(
            f"add_ground_truth_to_proposals: {len(targets)} targets for {len(proposals)} images"
        )
    out = []
    for gt, props in zip(targets, proposals):
        if not props.has("proposal_boxes"):
            raise ValueError(f"proposals need a 'proposal_boxes' field; got {props}")
        gt_proposal = Instances(props.image_size)
        for name, value in props.get_fields().items():
            if name == "proposal_boxes":
                gt_proposal.set(name, gt.gt_boxes.to(value.dtype))
            elif name == "objectness_logits":
                gt_proposal.set(name, value.new_full((len(gt),), _GT_PROPOSAL_LOGIT))
            elif gt.has(name):
                gt_proposal.set(name, gt.get(name))
            else:
                raise ValueError(
                    f"proposals have a field '{name}' that the targets lack, so GT boxes cannot "
                    "be appended to them (MODEL.ROI_HEADS.PROPOSAL_APPEND_GT)"
                )
        out.append(Instances.cat([props, gt_proposal]))
    return out


class ROIHeads(nn.Module):
    """Base of RoI heads: labels proposals against the ground truth and samples them.

    Subclasses implement ``forward(images, features, proposals, targets=None)``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
        sampling_free: bool = False,
    ) -> None:
        """
        Args:
            num_classes: foreground classes K (background is label K).
            batch_size_per_image: RoIs sampled per image for the losses.
            positive_fraction: maximum fraction of foreground among them.
            proposal_matcher: labels proposals by IoU with the ground truth.
            proposal_append_gt: add the GT boxes to the proposals before sampling.
            sampling_free: no sampling: every proposal labelled >= 0 is kept (Sampling-Free).
        """
        super().__init__()
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt
        self.sampling_free = sampling_free

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        heads = cfg.MODEL.ROI_HEADS
        return {
            "num_classes": checked_num_classes(cfg, "MODEL.ROI_HEADS.NUM_CLASSES"),
            "batch_size_per_image": heads.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": heads.POSITIVE_FRACTION,
            "proposal_append_gt": heads.PROPOSAL_APPEND_GT,
            "sampling_free": cfg.MODEL.SAMPLING_FREE.ENABLED,
            "proposal_matcher": Matcher(
                heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False
            ),
        }

    def _sample_proposals(
        self, matched_idxs: Tensor, matched_labels: Tensor, gt_classes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Class of every proposal (K for background, -1 ignored), then a random sample (all
        proposals labelled >= 0 with ``sampling_free``).

        Args:
            matched_idxs: ``[R]`` matched GT of each proposal; matched_labels: ``[R]`` its
                Matcher label; gt_classes: ``[G]`` classes of the image's GT.

        Returns:
            ``(sampled_idxs, gt_classes)``: indices into the R proposals (foreground first) and
            the class of each.
        """
        if gt_classes.numel() > 0:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        if self.sampling_free:
            fg = (gt_classes >= 0) & (gt_classes != self.num_classes)
            fg_idxs = torch.nonzero(fg).squeeze(1)
            bg_idxs = torch.nonzero(gt_classes == self.num_classes).squeeze(1)
            sampled_idxs = torch.cat([fg_idxs, bg_idxs], dim=0)
            return sampled_idxs, gt_classes[sampled_idxs]
        fg_idxs, bg_idxs = subsample_labels(
            gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled_idxs = torch.cat([fg_idxs, bg_idxs], dim=0)
        return sampled_idxs, gt_classes[sampled_idxs]

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        """Match proposals to the GT (GT boxes appended first if ``proposal_append_gt``) and
        draw ``batch_size_per_image`` of them, at most ``positive_fraction`` foreground (with
        ``sampling_free``, keep every proposal labelled >= 0, foreground first).

        Returns:
            Per image, the sampled proposals with ``gt_classes`` (background = K) and every
            ``gt_*`` field of the targets at the matched GT. An image without GT gets
            ``gt_boxes`` of zeros (all its proposals are background).
        """
        if targets is None or len(targets) != len(proposals):
            raise ValueError(
                "label_and_sample_proposals needs one targets Instances per image; got "
                f"{None if targets is None else len(targets)} for {len(proposals)} images"
            )
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)

        proposals_with_gt = []
        num_fg_samples, num_bg_samples = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            has_gt = len(targets_per_image) > 0
            match_quality_matrix = pairwise_iou(
                targets_per_image.gt_boxes, proposals_per_image.proposal_boxes
            )
            matched_idxs, matched_labels = self.proposal_matcher(match_quality_matrix)
            sampled_idxs, gt_classes = self._sample_proposals(
                matched_idxs, matched_labels, targets_per_image.gt_classes
            )
            proposals_per_image = proposals_per_image[sampled_idxs]
            proposals_per_image.gt_classes = gt_classes
            if has_gt:
                sampled_targets = matched_idxs[sampled_idxs]
                for name, value in targets_per_image.get_fields().items():
                    if name.startswith("gt_") and not proposals_per_image.has(name):
                        proposals_per_image.set(name, value[sampled_targets])
            else:
                proposals_per_image.gt_boxes = proposals_per_image.proposal_boxes.new_zeros(
                    (len(sampled_idxs), 4)
                )
            num_bg_samples.append(int((gt_classes == self.num_classes).sum()))
            num_fg_samples.append(gt_classes.numel() - num_bg_samples[-1])
            proposals_with_gt.append(proposals_per_image)

        storage = current_event_storage()
        if storage is not None:
            storage.put_scalar("roi_head/num_fg_samples", float(np.mean(num_fg_samples)))
            storage.put_scalar("roi_head/num_bg_samples", float(np.mean(num_bg_samples)))
        return proposals_with_gt

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        raise NotImplementedError


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """Fast R-CNN box branch on pooled pyramid features: ``box_pooler`` (ROI_HEADS.IN_FEATURES,
    ROI_BOX_HEAD.POOLER_*), ``box_head`` and ``box_predictor`` (state-dict keys
    ``box_head.fc1.*``, ``box_predictor.cls_score.*``...). Masks and keypoints are not built.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            box_in_features: feature maps pooled, finest first.
            box_pooler: pools them for each RoI.
            box_head: pooled features -> per-RoI feature.
            box_predictor: per-RoI feature -> class scores and box deltas.
            **kwargs: the arguments of ``ROIHeads``.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super().from_config(cfg)
        ret.update(cls._init_box_head(cfg, input_shape))
        return ret

    @classmethod
    def _box_pooler_and_shape(
        cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]
    ) -> tuple[list[str], ROIPooler, ShapeSpec]:
        """The pooled features, their pooler and the ``ShapeSpec`` of one pooled RoI."""
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {in_features} names {missing}, which the backbone "
                f"does not give; it gives {list(input_shape)}"
            )
        in_channels = {input_shape[f].channels for f in in_features}
        if len(in_channels) != 1:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {in_features} must all have the same channels; got "
                f"{[input_shape[f].channels for f in in_features]}"
            )
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        pooled_shape = ShapeSpec(channels=in_channels.pop(), height=resolution, width=resolution)
        return in_features, pooler, pooled_shape

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        in_features, box_pooler, pooled_shape = cls._box_pooler_and_shape(cfg, input_shape)
        box_head = build_box_head(cfg, pooled_shape)
        box_predictor = FastRCNNOutputLayers(cfg, box_head.output_shape)
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": box_predictor,
        }

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        del images
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__} needs targets in training")
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self._forward_box(features, proposals, targets)
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: dict[str, Tensor], instances: list[Instances]
    ) -> list[Instances]:
        """Run the non-box branches on given detections; there are none here, so the
        detections come back unchanged (test time only)."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference only")
        return instances

    def _forward_box(
        self,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Losses ``{"loss_cls", "loss_box_reg"}`` in training (``proposals`` already sampled
        and labelled, so ``targets`` is unused here; multi-stage heads re-match with it),
        detections at test time."""
        del targets
        if not self.training:
            return self.detect_from_box_outputs(self.predict_box_outputs(features, proposals))
        losses = self.box_predictor.losses(self._box_predictions(features, proposals), proposals)
        log_sampling_free_stats(self.box_predictor, "roi")
        return losses

    def _box_predictions(
        self, features: dict[str, Tensor], proposals: list[Instances]
    ) -> tuple[Tensor, Tensor]:
        """Pooled features -> box head -> (class scores, box deltas) of every proposal."""
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        return self.box_predictor(self.box_head(box_features))

    def predict_box_outputs(
        self, features: dict[str, Tensor], proposals: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """The box branch's network at test time: per image the decoded boxes and the class
        probabilities of the proposals, and the image sizes (the input of
        :meth:`detect_from_box_outputs`)."""
        if self.training:
            raise RuntimeError("predict_box_outputs is for inference only")
        predictions = self._box_predictions(features, proposals)
        boxes, scores = self.box_predictor.predict_boxes_and_scores(predictions, proposals)
        return boxes, scores, [p.image_size for p in proposals]

    def detect_from_box_outputs(
        self, box_outputs: tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]
    ) -> list[Instances]:
        """Score threshold, per-class NMS and top-k of :meth:`predict_box_outputs`'s result."""
        boxes, scores, image_sizes = box_outputs
        pred_instances, _ = self.box_predictor.detect(boxes, scores, image_sizes)
        return pred_instances
