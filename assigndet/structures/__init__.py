"""Shared vocabulary between data, models and evaluation."""

from .boxes import BoxMode, clip_boxes_, nonempty_boxes
from .image_list import ImageList
from .instances import Instances

__all__ = ["BoxMode", "ImageList", "Instances", "clip_boxes_", "nonempty_boxes"]
