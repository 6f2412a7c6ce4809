import os

import pytest

from assigndet.data import DatasetCatalog, Metadata, MetadataCatalog


def test_dataset_catalog_register_get_list_remove():
    DatasetCatalog.register("catalog_test_a", lambda: [{"file_name": "x"}])
    try:
        assert "catalog_test_a" in DatasetCatalog.list()
        assert DatasetCatalog.get("catalog_test_a") == [{"file_name": "x"}]
        with pytest.raises(ValueError, match="already registered"):
            DatasetCatalog.register("catalog_test_a", lambda: [])
    finally:
        DatasetCatalog.remove("catalog_test_a")
    assert "catalog_test_a" not in DatasetCatalog.list()


def test_dataset_catalog_unknown_name_lists_registered():
    with pytest.raises(KeyError, match="not registered") as e:
        DatasetCatalog.get("no_such_dataset")
    assert "shapes_train" in str(e.value) and "coco_2017_val" in str(e.value)


def test_dataset_catalog_needs_callable():
    with pytest.raises(TypeError, match="callable"):
        DatasetCatalog.register("catalog_test_b", [1, 2])


def test_metadata_catalog_creates_on_demand_and_guards_values():
    name = "catalog_test_meta"
    try:
        meta = MetadataCatalog.get(name)
        assert MetadataCatalog.get(name) is meta
        meta.set(thing_classes=["a", "b"], evaluator_type="coco")
        assert meta.thing_classes == ["a", "b"]
        assert meta.get("thing_classes") == ["a", "b"]
        assert meta.get("missing", 5) == 5
        meta.thing_classes = ["a", "b"]  # same value: fine
        with pytest.raises(ValueError, match="thing_classes.*catalog_test_meta"):
            meta.thing_classes = ["a", "c"]
        with pytest.raises(ValueError, match="evaluator_type"):
            meta.set(evaluator_type="lvis")
        with pytest.raises(AttributeError, match="no field 'nothing'"):
            meta.nothing  # noqa: B018
    finally:
        MetadataCatalog.remove(name)
    assert name not in MetadataCatalog.list()


def test_metadata_lazy_value_follows_its_function():
    value = {"root": "/a"}
    meta = Metadata("lazy").set_lazy(json_file=lambda: value["root"] + "/x.json")
    assert meta.json_file == "/a/x.json"
    value["root"] = "/b"
    assert meta.json_file == "/b/x.json"
    meta.json_file = "/b/x.json"  # equal to the current value
    with pytest.raises(ValueError, match="json_file"):
        meta.json_file = "/c/x.json"
    assert meta.as_dict()["json_file"] == "/b/x.json"


def test_builtin_coco_metadata_and_lazy_root(monkeypatch, tmp_path):
    meta = MetadataCatalog.get("coco_2017_val")
    assert len(meta.thing_classes) == 80
    assert meta.thing_classes[0] == "person" and meta.thing_classes[-1] == "toothbrush"
    id_map = meta.thing_dataset_id_to_contiguous_id
    assert id_map[1] == 0 and id_map[90] == 79 and 12 not in id_map
    assert sorted(id_map.values()) == list(range(80))
    assert meta.evaluator_type == "coco"

    monkeypatch.setenv("ASSIGNDET_DATASETS", str(tmp_path))
    expected = os.path.join(str(tmp_path), "coco/annotations/instances_val2017.json")
    assert meta.json_file == expected
    assert meta.image_root == os.path.join(str(tmp_path), "coco/val2017")
    with pytest.raises(FileNotFoundError, match="coco_2017_val.*instances_val2017.json"):
        DatasetCatalog.get("coco_2017_val")
