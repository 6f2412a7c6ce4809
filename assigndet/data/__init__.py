"""Datasets, mapping to model inputs, sampling and loading.

Importing this package registers the builtin datasets: ``coco_2017_train`` / ``coco_2017_val``
and the generated ``shapes_train`` / ``shapes_val`` (see ``datasets/builtin.py``).
"""

from . import transforms
from .build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .dataset_mapper import DatasetMapper
from .datasets import (
    SHAPES_CLASSES,
    generate_shapes_dataset,
    load_coco_json,
    register_all_builtin,
    register_coco_instances,
)
from .detection_utils import read_image
from .samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler

register_all_builtin()

__all__ = [
    "DatasetCatalog",
    "DatasetMapper",
    "InferenceSampler",
    "Metadata",
    "MetadataCatalog",
    "RepeatFactorTrainingSampler",
    "SHAPES_CLASSES",
    "TrainingSampler",
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "generate_shapes_dataset",
    "get_detection_dataset_dicts",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
    "transforms",
]
