"""Dense prediction heads."""

from .fcos_head import FCOSHead, Scale

__all__ = ["FCOSHead", "Scale"]
