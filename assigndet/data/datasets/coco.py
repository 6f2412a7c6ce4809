"""COCO-format json -> dataset dicts, and registration of COCO-format datasets."""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

from assigndet.structures import BoxMode

from ..catalog import COCO_SPEC_PREFIX, DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

# A box may stick out of its image by this many pixels before it is reported (COCO has many
# boxes that exceed the image by a fraction of a pixel). Such boxes are clipped by the mapper.
_OUTSIDE_TOLERANCE = 1.0


def load_coco_json(
    json_file: str, image_root: str, dataset_name: str | None = None
) -> list[dict[str, Any]]:
    """Read a COCO instances json into a list of dataset dicts (detectron2's format).

    Category ids are sorted and mapped to contiguous ids ``0..K-1``. When ``dataset_name`` is
    given, its metadata gets ``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
    ``json_file``, ``image_root`` and ``evaluator_type="coco"``. Images are sorted by id and all
    are kept (also those without annotations).

    Each dict has ``file_name`` (``image_root`` joined with the json's file name), ``height``,
    ``width``, ``image_id`` and ``annotations``: a list of ``{"bbox": [x, y, w, h],
    "bbox_mode": BoxMode.XYWH_ABS, "category_id": contiguous id, "iscrowd": 0 or 1, "id": the
    annotation id}``. Segmentations and keypoints are not kept.

    Raises:
        FileNotFoundError: the json file does not exist.
        ValueError: the json is malformed (not json, or missing "images"/"annotations"/
            "categories"), or an annotation is invalid: unknown category id, width or height
            <= 0, a box entirely outside its image (a box partly outside is kept and clipped by
            the mapper; how many exceed the image by more than a pixel is logged), an unknown
            image id, a duplicate annotation id, or ``ignore`` != 0. Messages name the file, the
            image and the annotation id.
    """
    where = f" (dataset '{dataset_name}')" if dataset_name else ""
    data = _read_coco_json(json_file, ("images", "annotations", "categories"), where)

    thing_classes, id_map = _categories(data["categories"], json_file)
    cat_ids = list(id_map)
    if cat_ids != list(range(1, len(cat_ids) + 1)) and "coco" not in (dataset_name or ""):
        logger.warning(
            f"Category ids in {json_file} are not 1..{len(cat_ids)}; they are mapped to "
            "contiguous ids in sorted order."
        )

    for img in data["images"]:
        lacking = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if lacking:
            raise ValueError(f"{json_file}{where}: image entry {img} lacks {lacking}")
    images = {img["id"]: img for img in data["images"]}

    anns_per_image: dict[Any, list[dict]] = {i: [] for i in images}
    seen_ann_ids: set = set()
    num_outside = 0
    for ann in data["annotations"]:
        ann_id = ann.get("id")
        img_id = ann.get("image_id")
        if img_id not in images:
            raise ValueError(
                f"{json_file}{where}: annotation id {ann_id} refers to image id {img_id}, "
                "which is not in 'images'"
            )
        img = images[img_id]
        what = f"{json_file}{where}: annotation id {ann_id} of image id {img_id} ({img['file_name']})"
        if ann_id in seen_ann_ids:
            raise ValueError(f"{what}: duplicate annotation id")
        seen_ann_ids.add(ann_id)
        if ann.get("ignore", 0) != 0:
            raise ValueError(f"{what}: 'ignore' = {ann['ignore']} is not supported (use iscrowd)")
        if ann.get("category_id") not in id_map:
            raise ValueError(
                f"{what}: unknown category id {ann.get('category_id')} "
                f"(categories are {cat_ids})"
            )
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ValueError(f"{what}: expected 'bbox' [x, y, w, h], got {bbox}")
        x, y, w, h = (float(v) for v in bbox)
        if not (w > 0 and h > 0):
            raise ValueError(f"{what}: bbox {bbox} has a width or height <= 0")
        iw, ih = img["width"], img["height"]
        if x >= iw or y >= ih or x + w <= 0 or y + h <= 0:
            raise ValueError(
                f"{what}: bbox {bbox} (x, y, w, h) lies entirely outside the {iw}x{ih} image"
            )
        tol = _OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > iw + tol or y + h > ih + tol:
            num_outside += 1
        anns_per_image[img_id].append(
            {
                "id": ann_id,
                "bbox": [x, y, w, h],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    if num_outside:
        logger.warning(
            f"{num_outside} annotation(s) in {json_file} extend beyond their image by more than "
            f"{_OUTSIDE_TOLERANCE:g} px; they are clipped to the image by the mapper."
        )

    dataset_dicts = []
    for img_id in sorted(images):
        img = images[img_id]
        dataset_dicts.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": int(img["height"]),
                "width": int(img["width"]),
                "image_id": img_id,
                "annotations": anns_per_image[img_id],
            }
        )
    # Only after every check passed, so a failed load leaves no metadata behind.
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=thing_classes,
            thing_dataset_id_to_contiguous_id=id_map,
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
        )
    logger.info(f"Loaded {len(dataset_dicts)} images in COCO format from {json_file}")
    return dataset_dicts


def read_coco_categories(json_file: str) -> tuple[list[str], dict[int, int]]:
    """``(thing_classes, thing_dataset_id_to_contiguous_id)`` of a COCO json, as
    ``load_coco_json`` derives them (category ids sorted, mapped to ``0..K-1``)."""
    return _categories(_read_coco_json(json_file, ("categories",))["categories"], json_file)


def _read_coco_json(json_file: str, required: tuple[str, ...], where: str = "") -> dict:
    """The json object of ``json_file``, which must have the ``required`` keys."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file not found: {json_file}{where}")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}{where} is not valid json: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}{where}: expected a json object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f"{json_file}{where} is not a COCO instances json: missing key(s) {missing} "
            f"(it has {sorted(data)})"
        )
    return data


def _categories(categories: Any, json_file: str) -> tuple[list[str], dict[int, int]]:
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c for c in categories
    ):
        raise ValueError(
            f"{json_file}: 'categories' must be a list of {{'id': int, 'name': str, ...}}, "
            f"got {str(categories)[:200]}"
        )
    by_id = sorted((c["id"], c["name"]) for c in categories)
    return [name for _, name in by_id], {cid: i for i, (cid, _) in enumerate(by_id)}


def register_coco_instances(
    name: str, metadata: dict[str, Any], json_file: str, image_root: str
) -> None:
    """Register a COCO-format dataset: ``name`` loads ``json_file`` lazily via ``load_coco_json``.

    Its metadata gets ``json_file``, ``image_root``, ``evaluator_type="coco"`` and ``metadata``;
    unless ``metadata`` gives them, ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``
    are read from the json's categories when first asked for (before the dataset is loaded).
    """
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    meta = MetadataCatalog.get(name)
    meta.set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
    if "thing_classes" not in metadata and "thing_dataset_id_to_contiguous_id" not in metadata:
        categories = functools.lru_cache(maxsize=1)(lambda: read_coco_categories(json_file))
        meta.set_lazy(
            thing_classes=lambda: categories()[0],
            thing_dataset_id_to_contiguous_id=lambda: categories()[1],
        )


def parse_coco_spec(spec: str) -> tuple[str, str]:
    """``"coco:JSON:IMAGES"`` -> ``(JSON, IMAGES)``; raises ValueError naming the expected form."""
    parts = spec[len(COCO_SPEC_PREFIX) :].split(":") if spec.startswith(COCO_SPEC_PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"Dataset {spec!r} is not of the form 'coco:path/to/instances.json:path/to/images' "
            "(two paths, neither containing ':')"
        )
    return parts[0], parts[1]


def register_coco_spec(spec: str) -> None:
    """Register the dataset named ``coco:JSON:IMAGES`` as ``register_coco_instances`` does."""
    json_file, image_root = parse_coco_spec(spec)
    register_coco_instances(spec, {}, json_file, image_root)
