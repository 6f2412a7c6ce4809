import importlib.util
import json
import os

import pytest
import torch

from assigndet.data import DatasetCatalog, MetadataCatalog
from assigndet.projects.centernet2.fed_loss import load_class_freq

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    path = os.path.join(REPO_ROOT, "tools", "class_frequency.py")
    spec = importlib.util.spec_from_file_location("class_frequency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_image_counts_by_hand():
    records = [
        {"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
        {"annotations": [{"category_id": 2}]},
        {"annotations": []},
    ]
    assert _tool().class_image_counts(records, 3) == [1, 0, 2]
    with pytest.raises(ValueError, match="category_id 3"):
        _tool().class_image_counts([{"file_name": "a.png", "annotations": [{"category_id": 3}]}], 3)


def test_written_file_feeds_the_federated_loss(tmp_path):
    output = str(tmp_path / "cat_info.json")
    _tool().main(["--dataset", "shapes_mini_train", "--output", output])
    entries = json.load(open(output))
    classes = MetadataCatalog.get("shapes_mini_train").thing_classes
    assert [e["id"] for e in entries] == list(range(len(classes)))
    counts = torch.tensor([float(e["image_count"]) for e in entries])
    num_images = len(DatasetCatalog.get("shapes_mini_train"))
    assert counts.sum() > 0 and counts.max() <= num_images
    torch.testing.assert_close(load_class_freq(output, 0.5, len(classes)), counts.sqrt())
