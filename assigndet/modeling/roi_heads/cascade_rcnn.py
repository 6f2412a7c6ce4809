"""Cascade R-CNN RoI heads (Cai & Vasconcelos, CVPR 2018) with detectron2's names and keys.

Stage k has its own box head, predictor (``box_head.{k}.*``, ``box_predictor.{k}.*``), box coder
weights and foreground IoU. Training samples the proposals once (stage 0, GT appended); each
later stage re-matches the previous stage's regressed boxes (detached, clipped, empty ones
dropped) at its own IoU, without re-sampling. Every stage's pooled features pass their gradient
back scaled by 1 / num_stages. Losses are ``loss_cls_stage{k}`` and ``loss_box_reg_stage{k}``.
Inference averages the stages' class probabilities and takes the last stage's boxes.

With Sampling-Free the first stage keeps every labelled proposal (no sampling) and each stage's
predictor guides its own classification loss by its own box loss (logged as
``sf_roi_stage{k}_ratio`` / ``sf_roi_stage{k}_cls_raw``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import Function

from ...config import CfgNode, configurable
from ...layers import ShapeSpec
from ...structures import Instances, clip_boxes_, nonempty_boxes
from ...utils.events import current_event_storage
from ..box_regression import Box2BoxTransform
from ..matcher import Matcher
from ..poolers import ROIPooler
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, log_sampling_free_stats
from .roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, pairwise_iou

__all__ = ["CascadeROIHeads"]


class _ScaleGradient(Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward."""

    @staticmethod
    def forward(ctx, input: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return input

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """Multi-stage box branch (see the module docstring).

    Hooks for subclasses (detectron2's names): ``_init_box_head``, ``_forward_box(features,
    proposals, targets=None)``, ``_run_stage(features, proposals, stage)``,
    ``_match_and_label_boxes(proposals, stage, targets)``, ``_create_proposals_from_boxes(boxes,
    image_sizes)``; plus ``_build_box_predictor(cfg, input_shape, box2box_transform)``, which
    builds one stage's predictor, and ``combine_stage_scores``, which turns the stages'
    probabilities into the test-time scores.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: list[str],
        box_pooler: ROIPooler,
        box_heads: list[nn.Module],
        box_predictors: list[nn.Module],
        proposal_matchers: list[Matcher],
        **kwargs: Any,
    ) -> None:
        """
        Args:
            box_in_features, box_pooler: as in ``StandardROIHeads``; one pooler for all stages.
            box_heads, box_predictors, proposal_matchers: one per stage; the predictors must
                regress class-agnostic boxes. Stage 0's matcher also samples the proposals.
            **kwargs: the other arguments of ``ROIHeads`` (not ``proposal_matcher``).
        """
        if "proposal_matcher" in kwargs:
            raise ValueError(
                "CascadeROIHeads takes proposal_matchers (one per stage), not proposal_matcher"
            )
        if not len(box_heads) == len(box_predictors) == len(proposal_matchers) > 0:
            raise ValueError(
                "CascadeROIHeads needs as many box heads, predictors and matchers (>= 1); got "
                f"{len(box_heads)}, {len(box_predictors)} and {len(proposal_matchers)}"
            )
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            **kwargs,
        )
        self.num_cascade_stages = len(box_heads)
        self.proposal_matchers = list(proposal_matchers)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super().from_config(cfg, input_shape)
        ret.pop("proposal_matcher")
        return ret

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        ious = list(cascade.IOUS)
        reg_weights = [tuple(w) for w in cascade.BBOX_REG_WEIGHTS]
        if len(ious) != len(reg_weights) or not ious:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS {ious} and BBOX_REG_WEIGHTS {reg_weights} must "
                "give one entry per stage (at least one)"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "CascadeROIHeads supports class-agnostic box regression only: set "
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True"
            )
        first_iou = cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]
        if ious[0] != first_iou:
            raise ValueError(
                f"MODEL.ROI_HEADS.IOU_THRESHOLDS[0] = {first_iou} must equal the first cascade "
                f"IoU MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] = {ious[0]} (stage 0 samples with it)"
            )
        in_features, box_pooler, pooled_shape = cls._box_pooler_and_shape(cfg, input_shape)
        box_heads, box_predictors, proposal_matchers = [], [], []
        for match_iou, weights in zip(ious, reg_weights):
            box_head = build_box_head(cfg, pooled_shape)
            box_heads.append(box_head)
            box_predictors.append(
                cls._build_box_predictor(
                    cfg, box_head.output_shape, Box2BoxTransform(weights=weights)
                )
            )
            proposal_matchers.append(Matcher([match_iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": proposal_matchers,
        }

    @classmethod
    def _build_box_predictor(
        cls, cfg: CfgNode, input_shape: ShapeSpec, box2box_transform: Box2BoxTransform
    ) -> nn.Module:
        """One stage's predictor: ``FastRCNNOutputLayers`` from the config, with this stage's
        box coder."""
        args = FastRCNNOutputLayers.from_config(cfg, input_shape)
        args["box2box_transform"] = box2box_transform
        return FastRCNNOutputLayers(**args)

    def _forward_box(
        self,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> dict[str, Tensor] | list[Instances]:
        """Run the stages; losses in training (``proposals`` already sampled), detections at
        test time."""
        if not self.training:
            return self.detect_from_box_outputs(self.predict_box_outputs(features, proposals))
        losses = {}
        storage = current_event_storage()
        head_outputs = self._run_stages(features, proposals, targets)
        for stage, (predictor, predictions, stage_proposals) in enumerate(head_outputs):
            scope = (
                storage.name_scope(f"stage{stage}")
                if storage is not None
                else contextlib.nullcontext()
            )
            with scope:
                stage_losses = predictor.losses(predictions, stage_proposals)
            log_sampling_free_stats(predictor, f"roi_stage{stage}")
            losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
        return losses

    def _run_stages(
        self,
        features: dict[str, Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None,
    ) -> list[tuple[nn.Module, tuple[Tensor, Tensor], list[Instances]]]:
        """``(predictor, predictions, proposals)`` of each stage; each stage after the first
        starts from the previous one's boxes (re-matched to ``targets`` in training)."""
        features = [features[f] for f in self.box_in_features]
        head_outputs = []
        prev_pred_boxes = None
        image_sizes = [p.image_size for p in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        return head_outputs

    def predict_box_outputs(
        self, features: dict[str, Tensor], proposals: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Every stage at test time: per image the last stage's boxes, the stage-combined class
        probabilities (:meth:`combine_stage_scores`), and the image sizes."""
        if self.training:
            raise RuntimeError("predict_box_outputs is for inference only")
        head_outputs = self._run_stages(features, proposals, None)
        scores_per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        scores = self.combine_stage_scores(scores_per_stage, head_outputs[0][2])
        predictor, predictions, last_proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, last_proposals)
        return boxes, scores, [p.image_size for p in proposals]

    def detect_from_box_outputs(
        self, box_outputs: tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]
    ) -> list[Instances]:
        """The last stage's score threshold, per-class NMS and top-k."""
        boxes, scores, image_sizes = box_outputs
        pred_instances, _ = self.box_predictor[-1].detect(boxes, scores, image_sizes)
        return pred_instances

    def combine_stage_scores(
        self, scores_per_stage: list[list[Tensor]], proposals: list[Instances]
    ) -> list[Tensor]:
        """Test-time class probabilities per image: the mean over stages of each stage's
        ``[R_i, K + 1]`` probabilities (rows aligned with the first stage's ``proposals``)."""
        del proposals
        return [sum(per_image) / self.num_cascade_stages for per_image in zip(*scores_per_stage)]

    @torch.no_grad()
    def _match_and_label_boxes(
        self, proposals: list[Instances], stage: int, targets: list[Instances]
    ) -> list[Instances]:
        """Label a later stage's input boxes with its matcher: ``gt_classes`` (background = K)
        and ``gt_boxes`` (zeros for an image without GT); no sampling."""
        num_fg_samples, num_bg_samples = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            match_quality_matrix = pairwise_iou(
                targets_per_image.gt_boxes, proposals_per_image.proposal_boxes
            )
            matched_idxs, proposal_labels = self.proposal_matchers[stage](match_quality_matrix)
            if len(targets_per_image) > 0:
                gt_classes = targets_per_image.gt_classes[matched_idxs]
                gt_classes[proposal_labels == 0] = self.num_classes
                gt_boxes = targets_per_image.gt_boxes[matched_idxs]
            else:
                gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = proposals_per_image.proposal_boxes.new_zeros(
                    (len(proposals_per_image), 4)
                )
            proposals_per_image.gt_classes = gt_classes
            proposals_per_image.gt_boxes = gt_boxes
            num_fg_samples.append(int((proposal_labels == 1).sum()))
            num_bg_samples.append(proposal_labels.numel() - num_fg_samples[-1])

        storage = current_event_storage()
        if storage is not None and num_fg_samples:
            storage.put_scalar(
                f"stage{stage}/roi_head/num_fg_samples", sum(num_fg_samples) / len(num_fg_samples)
            )
            storage.put_scalar(
                f"stage{stage}/roi_head/num_bg_samples", sum(num_bg_samples) / len(num_bg_samples)
            )
        return proposals

    def _run_stage(
        self, features: list[Tensor], proposals: list[Instances], stage: int
    ) -> tuple[Tensor, Tensor]:
        """Pool (gradient scaled by 1 / num_stages in training), box head and predictor of one
        stage: ``(scores [R, K + 1], deltas [R, 4])``."""
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _create_proposals_from_boxes(
        self, boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Instances]:
        """Per image, the detached boxes ``[R_i, 4]`` clipped to the image as ``proposal_boxes``;
        empty ones are dropped in training only (at test time rows stay aligned with the first
        stage's proposals)."""
        proposals = []
        for boxes_per_image, image_size in zip(boxes, image_sizes):
            boxes_per_image = clip_boxes_(boxes_per_image.detach().clone(), image_size)
            if self.training:
                boxes_per_image = boxes_per_image[nonempty_boxes(boxes_per_image)]
            proposals.append(Instances(image_size, proposal_boxes=boxes_per_image))
        return proposals
