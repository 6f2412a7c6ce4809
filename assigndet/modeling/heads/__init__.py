"""Dense prediction heads."""

from .fcos_head import FCOSHead, Scale, conv_tower

__all__ = ["FCOSHead", "Scale", "conv_tower"]
