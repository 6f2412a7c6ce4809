"""CenterNet2 (Zhou et al., "Probabilistic two-stage detection", 2021) and CenterNet*.

Importing this package registers the ``MODEL.CENTERNET`` config keys (and the CenterNet2
``MODEL.ROI_BOX_HEAD`` extras), the ``build_p67_resnet_fpn_backbone`` backbone, the ``CenterNet``
proposal generator, the ``CenterNetDetector`` meta-architecture (the one-stage CenterNet*) and
the ``CustomROIHeads`` / ``CustomCascadeROIHeads`` RoI heads of CenterNet2 (whose
meta-architecture is the core ``GeneralizedRCNN``).
"""

from . import config  # noqa: F401  (registers add_centernet_config)
from .backbone import build_p67_resnet_fpn_backbone
from .centernet import CenterNet
from .centernet_detector import CenterNetDetector
from .centernet_head import CenterNetHead
from .custom_fast_rcnn import CustomFastRCNNOutputLayers
from .custom_roi_heads import CustomCascadeROIHeads, CustomROIHeads

__all__ = [
    "CenterNet",
    "CenterNetDetector",
    "CenterNetHead",
    "CustomCascadeROIHeads",
    "CustomFastRCNNOutputLayers",
    "CustomROIHeads",
    "build_p67_resnet_fpn_backbone",
]
