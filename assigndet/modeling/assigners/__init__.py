"""Label assignment: pure functions from locations, predictions and ground truth to targets."""

from .fcos import FCOSTargets, fcos_assign, fcos_size_ranges

__all__ = ["FCOSTargets", "fcos_assign", "fcos_size_ranges"]
