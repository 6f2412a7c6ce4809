"""CenterNet2's RoI heads: detectron2's Fast R-CNN (``CustomROIHeads``, CenterNet2-F) and
Cascade R-CNN (``CustomCascadeROIHeads``) heads with ``CustomFastRCNNOutputLayers`` predictors.

At test time the cascade averages its stages' class probabilities and, with
``MODEL.ROI_BOX_HEAD.MULT_PROPOSAL_SCORE``, multiplies in the first-stage score of each original
proposal: score = sqrt(mean probability * sqrt(sigmoid(heatmap))).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from assigndet.config import CfgNode
from assigndet.layers import ShapeSpec
from assigndet.modeling.box_regression import Box2BoxTransform
from assigndet.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from assigndet.structures import Instances

from .custom_fast_rcnn import CustomFastRCNNOutputLayers, multiply_proposal_scores

__all__ = ["CustomCascadeROIHeads", "CustomROIHeads"]


@ROI_HEADS_REGISTRY.register()
class CustomROIHeads(StandardROIHeads):
    """One Fast R-CNN stage with CenterNet2's predictor (``MODEL.ROI_HEADS.NAME:
    CustomROIHeads``, the CenterNet2-F model)."""

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = CustomFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class CustomCascadeROIHeads(CascadeROIHeads):
    """Cascade R-CNN with CenterNet2's predictors and score (``MODEL.ROI_HEADS.NAME:
    CustomCascadeROIHeads``)."""

    @classmethod
    def _build_box_predictor(
        cls, cfg: CfgNode, input_shape: ShapeSpec, box2box_transform: Box2BoxTransform
    ) -> nn.Module:
        args = CustomFastRCNNOutputLayers.from_config(cfg, input_shape)
        args["box2box_transform"] = box2box_transform
        return CustomFastRCNNOutputLayers(**args)

    def combine_stage_scores(
        self, scores_per_stage: list[list[Tensor]], proposals: list[Instances]
    ) -> list[Tensor]:
        scores = super().combine_stage_scores(scores_per_stage, proposals)
        if self.box_predictor[0].mult_proposal_score:
            scores = multiply_proposal_scores(scores, proposals)
        return scores
