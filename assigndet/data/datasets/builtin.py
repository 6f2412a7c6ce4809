"""Datasets registered on ``import assigndet.data``.

Paths are resolved under ``$ASSIGNDET_DATASETS`` (default ``./datasets``) when a dataset is
loaded, not at import, in detectron2's layout::

    coco/train2017/  coco/val2017/  coco/annotations/instances_{train,val}2017.json
    shapes/{train,val,mini_train,mini_val}/   generated on first use (see ``shapes.py``)

``shapes_mini_train`` / ``shapes_mini_val`` are small splits of small images (short side
64-96 px), for smoke tests and quick checks of a set-up, like detectron2's ``coco_2017_val_100``.
"""

from __future__ import annotations

import os

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import coco_instances_meta
from .coco import load_coco_json
from .shapes import SHAPES_CLASSES, generate_shapes_dataset

_COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}

# name -> (split, number of images, seed[, generation options of generate_shapes_dataset])
_MINI = {"min_short": 64, "max_short": 96, "min_size": 10.0, "max_objects": 4}
SHAPES_SPLITS = {
    "shapes_train": ("train", 1000, 1),
    "shapes_val": ("val", 200, 2),
    "shapes_mini_train": ("mini_train", 64, 3, _MINI),
    "shapes_mini_val": ("mini_val", 32, 4, _MINI),
}


def datasets_root() -> str:
    """``$ASSIGNDET_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.environ.get("ASSIGNDET_DATASETS", "datasets"))


def _load_coco_split(name: str) -> list[dict]:
    image_dir, json_file = (os.path.join(datasets_root(), p) for p in _COCO_SPLITS[name])
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{name}' needs {json_file} (and images in {image_dir}); set "
            "$ASSIGNDET_DATASETS to the folder that holds coco/"
        )
    return load_coco_json(json_file, image_dir, name)


def _shapes_paths(name: str) -> tuple[str, str]:
    split, num_images, seed, *options = SHAPES_SPLITS[name]
    root = os.path.join(datasets_root(), "shapes")
    return generate_shapes_dataset(root, split, num_images, seed, **(options[0] if options else {}))


def _load_shapes_split(name: str) -> list[dict]:
    json_file, image_root = _shapes_paths(name)
    return load_coco_json(json_file, image_root, name)


def register_all_builtin() -> None:
    for name, (image_dir, json_file) in _COCO_SPLITS.items():
        DatasetCatalog.register(name, lambda name=name: _load_coco_split(name))
        MetadataCatalog.get(name).set(evaluator_type="coco", **coco_instances_meta())
        MetadataCatalog.get(name).set_lazy(
            json_file=lambda p=json_file: os.path.join(datasets_root(), p),
            image_root=lambda p=image_dir: os.path.join(datasets_root(), p),
        )
    for name in SHAPES_SPLITS:
        DatasetCatalog.register(name, lambda name=name: _load_shapes_split(name))
        MetadataCatalog.get(name).set(
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
        )
        # Reading json_file generates the split if needed, so an evaluator can open it.
        MetadataCatalog.get(name).set_lazy(
            json_file=lambda name=name: _shapes_paths(name)[0],
            image_root=lambda name=name: _shapes_paths(name)[1],
        )
