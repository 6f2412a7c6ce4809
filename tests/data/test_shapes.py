import json
import multiprocessing as mp
import os

import cv2
import numpy as np
import pytest

from assigndet.data import (
    SHAPES_CLASSES,
    DatasetCatalog,
    MetadataCatalog,
    generate_shapes_dataset,
    get_detection_dataset_dicts,
)
from assigndet.data.datasets import builtin


def test_same_seed_same_bytes(tmp_path):
    j1, r1 = generate_shapes_dataset(str(tmp_path / "a"), "train", 6, seed=3)
    j2, r2 = generate_shapes_dataset(str(tmp_path / "b"), "train", 6, seed=3)
    j3, _ = generate_shapes_dataset(str(tmp_path / "c"), "train", 6, seed=4)
    with open(j1, "rb") as f1, open(j2, "rb") as f2, open(j3, "rb") as f3:
        b1, b2, b3 = f1.read(), f2.read(), f3.read()
    assert b1 == b2
    assert b1 != b3
    for name in sorted(os.listdir(r1)):
        with open(os.path.join(r1, name), "rb") as f1, open(os.path.join(r2, name), "rb") as f2:
            assert f1.read() == f2.read(), name


def test_generated_files_and_annotations_are_consistent(tmp_path):
    json_file, image_root = generate_shapes_dataset(str(tmp_path), "val", 8, seed=0, empty_prob=0)
    assert json_file == str(tmp_path / "val" / "instances_val.json")
    data = json.loads(open(json_file).read())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in data["categories"]] == SHAPES_CLASSES
    assert len(data["images"]) == 8 and len(os.listdir(image_root)) == 8
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    per_image = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    for im in data["images"]:
        img = cv2.imread(os.path.join(image_root, im["file_name"]))
        h, w = img.shape[:2]
        assert (h, w) == (im["height"], im["width"])
        assert 176 <= min(h, w) <= 288 and max(h, w) / min(h, w) <= 1.6 + 0.01
        assert 1 <= len(per_image[im["id"]]) <= 8
        for ann in per_image[im["id"]]:
            x, y, bw, bh = ann["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            assert bw >= 2 and bh >= 2
            assert 0 < ann["area"] <= bw * bh


def test_shapes_load_through_catalog(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSIGNDET_DATASETS", str(tmp_path))
    monkeypatch.setitem(builtin.SHAPES_SPLITS, "shapes_val", ("val", 5, 2))
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 5
    assert dicts[0]["file_name"] == str(tmp_path / "shapes" / "val" / "images" / "000001.jpg")
    assert all(0 <= a["category_id"] < 5 for d in dicts for a in d["annotations"])
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == SHAPES_CLASSES
    assert meta.json_file == str(tmp_path / "shapes" / "val" / "instances_val.json")
    assert meta.evaluator_type == "coco"
    assert len(get_detection_dataset_dicts("shapes_val")) >= 1
    # Same settings: the folder is reused, not regenerated.
    mtime = os.path.getmtime(meta.json_file)
    assert len(DatasetCatalog.get("shapes_val")) == 5
    assert os.path.getmtime(meta.json_file) == mtime


def test_metadata_json_file_generates_the_split(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSIGNDET_DATASETS", str(tmp_path))
    monkeypatch.setitem(builtin.SHAPES_SPLITS, "shapes_train", ("train", 3, 1))
    json_file = MetadataCatalog.get("shapes_train").json_file
    assert os.path.isfile(json_file)


def test_other_settings_regenerate(tmp_path):
    json_file, _ = generate_shapes_dataset(str(tmp_path), "train", 3, seed=0)
    json_file2, root = generate_shapes_dataset(str(tmp_path), "train", 4, seed=0)
    assert json_file2 == json_file
    assert len(json.loads(open(json_file).read())["images"]) == 4
    assert len(os.listdir(root)) == 4
    assert sorted(os.listdir(tmp_path)) == [".train.lock", "train"]


def _generate(root, queue):
    json_file, _ = generate_shapes_dataset(root, "train", 12, seed=5)
    with open(json_file, "rb") as f:
        queue.put(f.read())


def test_concurrent_generation_is_safe(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert sorted(os.listdir(tmp_path)) == [".train.lock", "train"]
    assert len(os.listdir(tmp_path / "train" / "images")) == 12


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        generate_shapes_dataset(str(tmp_path), "train", 0, seed=0)
    with pytest.raises(ValueError, match="min_size"):
        generate_shapes_dataset(str(tmp_path), "train", 2, seed=0, min_size=200)


def test_boxes_sit_on_the_shapes(tmp_path):
    # A box mostly filled by its shape differs in mean colour from the background ring around
    # it (the generator keeps every shape at least 60 levels away from the background under it).
    json_file, root = generate_shapes_dataset(str(tmp_path), "train", 10, seed=1, empty_prob=0)
    data = json.loads(open(json_file).read())
    checked = 0
    for im in data["images"]:
        img = cv2.imread(os.path.join(root, im["file_name"])).astype(np.float32)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        in_any_box = np.zeros(img.shape[:2], dtype=bool)
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            in_any_box[y : y + h, x : x + w] = True
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            ring = np.zeros(img.shape[:2], dtype=bool)
            ring[max(0, y - 4) : y + h + 4, max(0, x - 4) : x + w + 4] = True
            ring &= ~in_any_box
            if a["area"] < 0.4 * w * h or ring.sum() < 10:
                continue
            inside = img[y : y + h, x : x + w].reshape(-1, 3).mean(0)
            assert np.abs(inside - img[ring].mean(0)).max() > 12, a
            checked += 1
    assert checked >= 15
