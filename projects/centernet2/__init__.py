"""CenterNet2 (Zhou et al., "Probabilistic two-stage detection", 2021) and CenterNet*.

Importing this package registers the ``MODEL.CENTERNET`` config keys (and the CenterNet2
``MODEL.ROI_BOX_HEAD`` extras), the ``build_p67_resnet_fpn_backbone`` backbone, the ``CenterNet``
proposal generator and the ``CenterNetDetector`` meta-architecture (the one-stage CenterNet*).
"""

from . import config  # noqa: F401  (registers add_centernet_config)
from .backbone import build_p67_resnet_fpn_backbone
from .centernet import CenterNet
from .centernet_detector import CenterNetDetector
from .centernet_head import CenterNetHead

__all__ = [
    "CenterNet",
    "CenterNetDetector",
    "CenterNetHead",
    "build_p67_resnet_fpn_backbone",
]
