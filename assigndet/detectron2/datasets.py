"""Dataset names shared by the two catalogs: assigndet's names (``coco:JSON:IMAGES``, the shapes
splits, any ``register_coco_instances`` dataset) in detectron2's catalog, and detectron2's
datasets in assigndet's, for the steps of assigndet's trainer that read the data themselves."""

from __future__ import annotations

from collections.abc import Iterable

from detectron2.data import DatasetCatalog as D2DatasetCatalog
from detectron2.data import MetadataCatalog as D2MetadataCatalog
from detectron2.data.datasets import register_coco_instances as d2_register_coco_instances

from assigndet.data import DatasetCatalog, MetadataCatalog
from assigndet.data.catalog import COCO_SPEC_PREFIX

__all__ = ["register_in_assigndet", "register_in_detectron2", "thing_classes"]


def register_in_detectron2(names: Iterable[str]) -> None:
    """Register in detectron2's catalog, with detectron2's ``register_coco_instances``, each of
    ``names`` it lacks that assigndet knows as a COCO json (a ``coco:`` name, the shapes splits,
    the datasets of assigndet's ``register_coco_instances``)."""
    for name in names:
        if name in D2DatasetCatalog.list():
            continue
        meta = MetadataCatalog.get(name)  # registers a coco: name in assigndet's catalogs
        if name not in DatasetCatalog or meta.get("evaluator_type") != "coco":
            raise KeyError(
                f"Dataset '{name}' is registered neither in detectron2's DatasetCatalog nor as a "
                "COCO json in assigndet's; register it in detectron2's catalog, or name it as "
                "coco:path/to/instances.json:path/to/images"
            )
        # reading json_file generates a shapes split on first use
        d2_register_coco_instances(name, {}, meta.json_file, meta.image_root)


def register_in_assigndet(names: Iterable[str]) -> None:
    """Make each of ``names`` that assigndet's catalog lacks read detectron2's dataset dicts
    (same format), with its ``thing_classes``."""
    for name in names:
        if name in DatasetCatalog or name.startswith(COCO_SPEC_PREFIX):
            continue
        DatasetCatalog.register(name, lambda name=name: D2DatasetCatalog.get(name))
        classes = thing_classes(name)
        if classes is not None:
            MetadataCatalog.get(name).set(thing_classes=classes)


def thing_classes(name: str) -> list[str] | None:
    """A dataset's class names from detectron2's metadata, else from assigndet's."""
    classes = D2MetadataCatalog.get(name).get("thing_classes")
    return classes if classes is not None else MetadataCatalog.get(name).get("thing_classes")
