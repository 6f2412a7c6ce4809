"""Dataset loaders (COCO json, the generated shapes set) and the builtin registrations."""

from .builtin import SHAPES_SPLITS, datasets_root, register_all_builtin
from .builtin_meta import COCO_CATEGORIES
from .coco import load_coco_json, read_coco_categories, register_coco_instances
from .shapes import SHAPES_CLASSES, generate_shapes_dataset

__all__ = [
    "COCO_CATEGORIES",
    "SHAPES_CLASSES",
    "SHAPES_SPLITS",
    "datasets_root",
    "generate_shapes_dataset",
    "load_coco_json",
    "read_coco_categories",
    "register_all_builtin",
    "register_coco_instances",
]
