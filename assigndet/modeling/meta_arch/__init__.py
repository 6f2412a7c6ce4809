"""Meta-architectures: whole detectors, registered by name for MODEL.META_ARCHITECTURE."""

from .build import META_ARCH_REGISTRY, build_model
from .fcos import FCOS
from .rcnn import GeneralizedRCNN

__all__ = ["FCOS", "META_ARCH_REGISTRY", "GeneralizedRCNN", "build_model"]
