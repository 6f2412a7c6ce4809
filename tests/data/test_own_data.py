"""Your own COCO json in one config entry: ``coco:JSON:IMAGES``, classes from the data, early
checks of the images, and tools/check_dataset.py."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from assigndet.config import get_cfg, load_config
from assigndet.data import (
    SHAPES_CLASSES,
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    generate_shapes_dataset,
    get_detection_dataset_dicts,
    register_coco_instances,
)
from assigndet.data.check import check_dataset
from assigndet.data.num_classes import checked_num_classes
from assigndet.modeling import build_model
from assigndet.utils.testing import tiny_dense_detector_cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_coco(tmp_path):
    """A generated COCO-format dataset (json + PNG images) of 5 classes, and its spec."""
    json_file, image_root = generate_shapes_dataset(
        str(tmp_path / "data"), "train", 6, 0, min_short=48, max_short=64, min_size=8.0,
        empty_prob=0.0,
    )
    spec = f"coco:{json_file}:{image_root}"
    yield spec, json_file, image_root
    for catalog in (DatasetCatalog, MetadataCatalog):
        if spec in catalog:
            catalog.remove(spec)


def test_spec_is_registered_on_first_use(own_coco):
    spec, json_file, image_root = own_coco
    assert spec not in DatasetCatalog
    meta = MetadataCatalog.get(spec)  # before any load: the names come from the json
    assert meta.thing_classes == list(SHAPES_CLASSES)
    assert meta.json_file == json_file and meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get(spec)
    assert len(dicts) == 6
    assert all(d["file_name"].startswith(image_root) for d in dicts)
    assert MetadataCatalog.get(spec).thing_classes == meta.thing_classes


def test_registered_coco_json_has_class_names_before_loading(tmp_path, own_coco):
    _, json_file, image_root = own_coco
    name = "own_coco_by_name"
    register_coco_instances(name, {}, json_file, image_root)
    try:
        assert len(MetadataCatalog.get(name).thing_classes) == 5
        assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {
            i: i - 1 for i in range(1, 6)
        }
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("spec", ["coco:only.json", "coco:a:b:c", "coco::images"])
def test_malformed_spec_says_the_expected_form(spec):
    with pytest.raises(ValueError, match="not of the form 'coco:path/to/instances.json:path/to"):
        DatasetCatalog.get(spec)


def _lookup_in_child(queue) -> None:
    try:
        DatasetCatalog.get("registered_only_in_the_parent")
    except KeyError as e:
        queue.put(str(e))


def test_unregistered_name_says_where_to_register():
    with pytest.raises(KeyError, match="register at import time|Register a dataset at import"):
        DatasetCatalog.get("never_registered")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_lookup_in_child, args=(queue,))
    child.start()
    message = queue.get(timeout=120)
    child.join()
    assert "This process was started by another" in message
    assert "registered under `if __name__ ==" in message
    assert "coco:path/to/instances.json:path/to/images" in message


def test_num_classes_come_from_the_data(own_coco):
    spec, _, _ = own_coco
    cfg = load_config(opts=["DATASETS.TRAIN", f"('{spec}',)", "MODEL.DEVICE", "cpu"])
    for key in ("ROI_HEADS", "FCOS", "RETINANET", "CENTERNET", "DETA"):
        assert cfg.MODEL[key].NUM_CLASSES == 5, key
    # without datasets the defaults stay
    assert load_config().MODEL.FCOS.NUM_CLASSES == 80


def test_set_num_classes_is_checked_against_the_data(own_coco):
    spec, _, _ = own_coco
    cfg = load_config(
        opts=["DATASETS.TRAIN", f"('{spec}',)", "MODEL.FCOS.NUM_CLASSES", "80"]
    )
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5  # not set: from the data
    with pytest.raises(ValueError) as e:
        checked_num_classes(cfg, "MODEL.FCOS.NUM_CLASSES")
    assert str(e.value).startswith(
        f"MODEL.FCOS.NUM_CLASSES is 80, but dataset '{spec}' has 5 classes (its thing_classes); "
        "set MODEL.FCOS.NUM_CLASSES 5"
    )
    # the model's own key is checked where the head is built; the others are not its business
    tiny = tiny_dense_detector_cfg(num_classes=3)
    tiny.DATASETS.TRAIN = (spec,)
    with pytest.raises(ValueError, match="MODEL.FCOS.NUM_CLASSES is 3, but dataset"):
        build_model(tiny)
    tiny.MODEL.FCOS.NUM_CLASSES = 5
    assert build_model(tiny).num_classes == 5  # ROI_HEADS / RETINANET stay 80, unused


def test_missing_images_are_listed_at_load(own_coco):
    spec, _, image_root = own_coco
    names = sorted(os.listdir(image_root))
    for name in names[:4]:
        os.unlink(os.path.join(image_root, name))
    with pytest.raises(FileNotFoundError) as e:
        get_detection_dataset_dicts(spec)
    message = str(e.value)
    assert message.startswith(f"4 of 6 image files of dataset(s) ['{spec}'] do not exist, e.g.:")
    assert os.path.join(image_root, names[0]) in message
    assert "image_root" in message


def _break_images(image_root: str) -> tuple[str, str]:
    """Make one image undecodable and another of the wrong size; returns their paths."""
    names = sorted(os.listdir(image_root))
    corrupt, resized = (os.path.join(image_root, n) for n in names[:2])
    Path(corrupt).write_bytes(b"not a png")
    cv2.imwrite(resized, np.zeros((10, 12, 3), np.uint8))
    return corrupt, resized


def test_check_dataset_reports_every_problem(own_coco):
    spec, _, image_root = own_coco
    corrupt, resized = _break_images(image_root)
    dicts = DatasetCatalog.get(spec)
    dicts[2]["annotations"][0]["bbox"] = [1.0, 1.0, 0.0, 5.0]
    dicts[3]["annotations"][0]["category_id"] = 7
    report = check_dataset(dicts, num_classes=5, progress=False)
    assert report.num_images == 6
    assert len(report.problems) == 4
    assert f"Cannot decode image file {corrupt}" in report.problems
    size_problem = f"{resized}: decoded size 10x12 (h x w) differs"
    assert any(p.startswith(size_problem) for p in report.problems)
    assert any("has a width or height <= 0" in p for p in report.problems)
    assert any("category_id 7 is not in [0, 5)" in p for p in report.problems)
    summary = report.summary(MetadataCatalog.get(spec).thing_classes)
    assert summary.startswith("images: 6\ninstances: ")
    assert "image sizes (h x w): min" in summary and "problems: 4" in summary


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_dataset", REPO / "tools/check_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_dataset_tool(own_coco, capsys):
    spec, _, image_root = own_coco
    tool = _load_tool()
    assert tool.main(["--dataset", spec]) == 0
    out = capsys.readouterr()
    assert f"== {spec}\nimages: 6" in out.out and "problems: 0" in out.out
    assert "checking images" in out.err  # the progress bar
    corrupt, _ = _break_images(image_root)
    assert tool.main(["--dataset", spec]) == 2
    assert f"Cannot decode image file {corrupt}" in capsys.readouterr().out


def test_check_images_before_training(own_coco):
    spec, _, image_root = own_coco
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (spec,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.CHECK_IMAGES = True
    build_detection_train_loader(cfg)  # all fine
    corrupt, _ = _break_images(image_root)
    with pytest.raises(ValueError) as e:
        build_detection_train_loader(cfg)
    message = str(e.value)
    assert message.startswith(
        f"DATALOADER.CHECK_IMAGES found 2 problem(s) in dataset(s) ['{spec}']"
    )
    assert f"Cannot decode image file {corrupt}" in message
    assert "tools/check_dataset.py" in message
