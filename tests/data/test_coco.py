import json
import logging

import pytest

from assigndet.data import DatasetCatalog, MetadataCatalog, load_coco_json
from assigndet.structures import BoxMode


def test_round_trip_with_crowd_and_category_gap(small_coco, register):
    json_file, root = small_coco
    name = register(json_file, root, metadata={"author": "tests"})
    dicts = DatasetCatalog.get(name)

    # Sorted by image id; all images kept, also the one without annotations.
    assert [d["image_id"] for d in dicts] == [10, 20, 30]
    a, b, c = dicts
    assert a["file_name"] == str(root / "a.png")
    assert (a["height"], a["width"]) == (40, 60)
    # Category ids 1, 3, 7 -> 0, 1, 2.
    assert [(x["id"], x["category_id"]) for x in a["annotations"]] == [(1, 2), (2, 0)]
    assert a["annotations"][0]["bbox"] == [5.0, 10.0, 20.0, 20.0]
    assert a["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert a["annotations"][0]["iscrowd"] == 0
    assert b["annotations"] == [
        {"id": 3, "bbox": [2.0, 2.0, 18.0, 18.0], "bbox_mode": BoxMode.XYWH_ABS,
         "category_id": 1, "iscrowd": 1}
    ]  # fmt: skip
    assert c["annotations"] == []

    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["one", "three", "seven"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 7: 2}
    assert meta.evaluator_type == "coco"
    assert meta.json_file == str(json_file) and meta.image_root == str(root)
    assert meta.author == "tests"


def _one_image(files, tmp_path, ann: dict, categories=None):
    images = [{"id": 5, "file_name": "im.png", "height": 40, "width": 50}]
    base = {"id": 77, "image_id": 5, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}
    base.update(ann)
    categories = categories or [{"id": 1, "name": "thing"}]
    return files.json(tmp_path / "bad.json", files.coco(images, [base], categories))


@pytest.mark.parametrize(
    "ann, message",
    [
        ({"bbox": [1, 1, 0, 10]}, "width or height <= 0"),
        ({"bbox": [1, 1, 10, -3]}, "width or height <= 0"),
        ({"bbox": [60, 5, 10, 10]}, "entirely outside the 50x40 image"),
        ({"bbox": [-20, 5, 10, 10]}, "entirely outside"),
        ({"category_id": 4}, "unknown category id 4"),
        ({"image_id": 6}, "refers to image id 6"),
        ({"ignore": 1}, "'ignore'"),
    ],
)
def test_bad_annotation_names_image_and_annotation(files, tmp_path, ann, message):
    json_file = _one_image(files, tmp_path, ann)
    with pytest.raises(ValueError, match=message) as e:
        load_coco_json(str(json_file), str(tmp_path), "bad_set")
    text = str(e.value)
    assert "annotation id 77" in text and "bad.json" in text and "bad_set" in text
    if "refers to image" not in text:
        assert "image id 5 (im.png)" in text


def test_duplicate_annotation_id(files, tmp_path):
    images = [{"id": 1, "file_name": "im.png", "height": 40, "width": 50}]
    ann = {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}
    data = files.coco(images, [ann, dict(ann)], [{"id": 1, "name": "x"}])
    with pytest.raises(ValueError, match="annotation id 9 .*duplicate annotation id"):
        load_coco_json(str(files.json(tmp_path / "d.json", data)), str(tmp_path))


def test_partly_outside_box_is_kept_and_logged(files, tmp_path, caplog):
    json_file = _one_image(files, tmp_path, {"bbox": [45, 30, 20, 20]})
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(str(json_file), str(tmp_path))
    assert dicts[0]["annotations"][0]["bbox"] == [45.0, 30.0, 20.0, 20.0]
    assert "1 annotation(s)" in caplog.text and "clipped" in caplog.text


@pytest.mark.parametrize("drop", ["images", "annotations"])
def test_malformed_json_names_file_and_key(files, tmp_path, drop):
    data = files.coco([], [], [{"id": 1, "name": "x"}])
    del data[drop]
    json_file = files.json(tmp_path / "broken.json", data)
    with pytest.raises(ValueError, match=f"broken.json.*missing key.*'{drop}'"):
        load_coco_json(str(json_file), str(tmp_path))


@pytest.mark.parametrize("drop", ["id", "file_name"])
def test_image_entry_without_a_key_names_it(files, tmp_path, drop):
    image = {"id": 1, "file_name": "a.png", "height": 4, "width": 4}
    del image[drop]
    json_file = files.json(tmp_path / "img.json", files.coco([image], [], [{"id": 1, "name": "x"}]))
    with pytest.raises(ValueError, match=f"img.json: image entry .* lacks \\['{drop}'\\]"):
        load_coco_json(str(json_file), str(tmp_path))


def test_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "notjson.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="notjson.json.*not valid json"):
        load_coco_json(str(bad), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothere.json.*'ds'"):
        load_coco_json(str(tmp_path / "nothere.json"), str(tmp_path), "ds")


def test_json_written_by_pycocotools_style_tools_loads(files, tmp_path):
    # Extra keys (info, licenses, segmentation, area) are accepted and not carried over.
    images = [{"id": 1, "file_name": "im.png", "height": 40, "width": 50, "license": 1}]
    ann = {
        "id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12.0,
        "segmentation": [[1, 2, 4, 2, 4, 6]], "iscrowd": 0,
    }  # fmt: skip
    data = files.coco(images, [ann], [{"id": 1, "name": "x", "supercategory": "s"}])
    data.update(info={"year": 2024}, licenses=[])
    dicts = load_coco_json(str(files.json(tmp_path / "ok.json", data)), str(tmp_path))
    assert set(dicts[0]["annotations"][0]) == {"id", "bbox", "bbox_mode", "category_id", "iscrowd"}
    assert json.loads((tmp_path / "ok.json").read_text())["info"] == {"year": 2024}
