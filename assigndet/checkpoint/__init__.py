"""Saving and loading checkpoints, including detectron2, Caffe2 and torchvision weights."""

from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

from .c2_model_loading import align_and_update_state_dicts, convert_c2_detectron_names
from .detection_checkpoint import DetectionCheckpointer, IncompatibleKeys, atomic_write
from .file_io import PathManager
from .serialization import UnreadableCheckpointError, UnsafeCheckpointError, load_pkl, load_pth
from .torchvision_loading import convert_torchvision_resnet

__all__ = [
    "Checkpointer",
    "DetectionCheckpointer",
    "IncompatibleKeys",
    "PathManager",
    "PeriodicCheckpointer",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "align_and_update_state_dicts",
    "atomic_write",
    "convert_c2_detectron_names",
    "convert_torchvision_resnet",
    "load_pkl",
    "load_pth",
]
