"""Second stages of two-stage detectors: R-CNN RoI heads, box heads and predictors."""

from .box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead, build_box_head
from .cascade_rcnn import CascadeROIHeads
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    ROIHeads,
    StandardROIHeads,
    add_ground_truth_to_proposals,
    build_roi_heads,
)

__all__ = [
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "CascadeROIHeads",
    "FastRCNNConvFCHead",
    "FastRCNNOutputLayers",
    "ROIHeads",
    "StandardROIHeads",
    "add_ground_truth_to_proposals",
    "build_box_head",
    "build_roi_heads",
    "fast_rcnn_inference",
]
