"""Small real files for the data tests: PNG images with solid rectangles and COCO jsons."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from assigndet.data import DatasetCatalog, MetadataCatalog, register_coco_instances


def write_image(
    path: Path,
    height: int,
    width: int,
    rects: list[tuple[int, int, int, int, tuple[int, int, int]]] = (),
    background: tuple[int, int, int] = (0, 0, 0),
) -> Path:
    """Write a lossless PNG: ``background`` plus solid BGR rectangles ``(x0, y0, x1, y1, colour)``
    covering pixels ``x0 <= x < x1``, ``y0 <= y < y1``."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = background
    for x0, y0, x1, y1, colour in rects:
        img[y0:y1, x0:x1] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def coco_dict(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def files():
    """``files.image(path, h, w, rects, background)``, ``files.json(path, data)``,
    ``files.coco(images, annotations, categories)``."""
    return SimpleNamespace(image=write_image, json=write_json, coco=coco_dict)


@pytest.fixture
def register():
    """Register COCO-format datasets under unique names; they are removed after the test."""
    names: list[str] = []

    def _register(json_file, image_root, metadata=None, prefix="test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        register_coco_instances(name, metadata or {}, str(json_file), str(image_root))
        names.append(name)
        return name

    def _register_fn(fn, prefix="test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, fn)
        names.append(name)
        return name

    _register.fn = _register_fn
    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)


@pytest.fixture
def small_coco(tmp_path):
    """A 3-image COCO dataset on disk with category ids {1, 3, 7} (a gap) and a crowd box.

    Image 2 has only a crowd annotation; image 3 has none.
    """
    root = tmp_path / "imgs"
    write_image(root / "a.png", 40, 60, [(5, 10, 25, 30, (0, 0, 255))])
    write_image(root / "b.png", 50, 30, [(2, 2, 20, 20, (0, 255, 0))])
    write_image(root / "c.png", 32, 32)
    images = [
        {"id": 30, "file_name": "c.png", "height": 32, "width": 32},
        {"id": 10, "file_name": "a.png", "height": 40, "width": 60},
        {"id": 20, "file_name": "b.png", "height": 50, "width": 30},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [5, 10, 20, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [30, 5, 10, 8], "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 3, "bbox": [2, 2, 18, 18], "iscrowd": 1},
    ]
    categories = [
        {"id": 7, "name": "seven"},
        {"id": 1, "name": "one"},
        {"id": 3, "name": "three"},
    ]
    json_file = write_json(tmp_path / "ann.json", coco_dict(images, annotations, categories))
    return json_file, root
