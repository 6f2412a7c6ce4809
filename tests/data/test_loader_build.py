import itertools
import logging
import pickle

import pytest
import torch

from assigndet.config import get_cfg
from assigndet.data import (
    DatasetMapper,
    MetadataCatalog,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from assigndet.data.build import DatasetFromList, MapDataset
from assigndet.data.samplers import TrainingSampler
from assigndet.structures import Instances


def _images_dataset(files, tmp_path, n=6):
    """n images, alternately landscape (40x60) and portrait (60x40), each with one box."""
    images, annotations = [], []
    for i in range(n):
        h, w = (40, 60) if i % 2 == 0 else (60, 40)
        files.image(tmp_path / "imgs" / f"{i}.png", h, w, [(5, 5, 20, 20, (255, 255, 255))])
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 15, 15]}
        )
    data = files.coco(images, annotations, [{"id": 1, "name": "box"}])
    return files.json(tmp_path / "ds.json", data), tmp_path / "imgs"


def _cfg(name, batch=2, workers=0, grouping=True):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.SEED = 1
    return cfg


def test_filtering_and_histogram(small_coco, register, caplog):
    json_file, root = small_coco
    name = register(json_file, root)
    with caplog.at_level(logging.INFO, logger="assigndet.data.build"):
        kept = get_detection_dataset_dicts([name])
    assert [d["image_id"] for d in kept] == [10]  # 20 has only a crowd box, 30 none
    assert "Removed 2 images" in caplog.text and "1 images left" in caplog.text
    assert "seven" in caplog.text and "#instances" in caplog.text
    assert len(get_detection_dataset_dicts(name, filter_empty=False)) == 3
    both = get_detection_dataset_dicts([name, name], filter_empty=False)
    assert len(both) == 6


def test_empty_dataset_errors(files, tmp_path, register):
    empty = register.fn(lambda: [])
    with pytest.raises(ValueError, match=f"Dataset '{empty}' is empty"):
        get_detection_dataset_dicts([empty])

    images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}]
    crowd = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}]
    json_file = files.json(tmp_path / "c.json", files.coco(images, crowd, [{"id": 1, "name": "x"}]))
    name = register(json_file, tmp_path)
    with pytest.raises(ValueError, match=f"No images .* left in dataset\\(s\\) \\['{name}'\\]"):
        get_detection_dataset_dicts([name])
    with pytest.raises(ValueError, match="No images"):
        build_detection_train_loader(_cfg(name))
    with pytest.raises(ValueError, match="No dataset names"):
        get_detection_dataset_dicts([])


def test_inconsistent_classes(files, tmp_path, register, small_coco):
    a = register(*small_coco)
    b = register(*_images_dataset(files, tmp_path))
    get_detection_dataset_dicts([a])
    get_detection_dataset_dicts([b])
    with pytest.raises(ValueError, match="different thing_classes"):
        get_detection_dataset_dicts([a, b])


@pytest.mark.parametrize("workers, grouping", [(0, True), (0, False), (2, True)])
def test_train_loader_batches(files, tmp_path, register, workers, grouping):
    name = register(*_images_dataset(files, tmp_path))
    loader = build_detection_train_loader(_cfg(name, batch=2, workers=workers, grouping=grouping))
    batches = list(itertools.islice(loader, 8))  # more than an epoch: the loader is endless
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        for d in batch:
            assert d["image"].dtype == torch.uint8 and d["image"].shape[0] == 3
            assert isinstance(d["instances"], Instances) and len(d["instances"]) == 1
            assert set(d) == {"image", "instances", "height", "width", "image_id", "file_name"}
        if grouping:
            landscape = {d["image"].shape[2] > d["image"].shape[1] for d in batch}
            assert len(landscape) == 1
    ids = [d["image_id"] for b in batches for d in b]
    assert set(ids) == set(range(1, 7))


def test_train_loader_is_seeded(files, tmp_path, register):
    name = register(*_images_dataset(files, tmp_path))

    def ids():
        loader = build_detection_train_loader(_cfg(name, batch=2, grouping=False))
        return [d["image_id"] for b in itertools.islice(loader, 6) for d in b]

    assert ids() == ids()


def test_batch_size_must_divide_world_size(files, tmp_path, register):
    name = register(*_images_dataset(files, tmp_path))
    dicts = get_detection_dataset_dicts(name)
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH \(4\).*processes \(3\)"):
        build_batch_data_loader(dicts, TrainingSampler(6, seed=0), 4, world_size=3)
    loader = build_batch_data_loader(
        DatasetFromList(dicts),
        TrainingSampler(len(dicts), seed=0, rank=1, world_size=2),
        4,
        aspect_ratio_grouping=False,
        world_size=2,
    )
    assert len(next(iter(loader))) == 2


def test_mapper_returning_none_is_retried(files, tmp_path, register):
    name = register(*_images_dataset(files, tmp_path))
    cfg = _cfg(name, batch=2, grouping=False)
    base = DatasetMapper(cfg, True)

    def only_odd_ids(d):
        return base(d) if d["image_id"] % 2 == 1 else None

    loader = build_detection_train_loader(cfg, mapper=only_odd_ids)
    ids = [d["image_id"] for b in itertools.islice(loader, 5) for d in b]
    assert len(ids) == 10 and all(i % 2 == 1 for i in ids)

    never = MapDataset(DatasetFromList([{"a": 1}]), lambda d: None)
    with pytest.raises(RuntimeError, match="None for 100 items"):
        never[0]
    with pytest.raises(ValueError, match="returned None for item 0"):
        MapDataset(DatasetFromList([{"a": 1}]), lambda d: None, retry_on_none=False)[0]


def test_test_loader_sees_every_image_once(files, tmp_path, register, small_coco):
    name = register(*small_coco)
    cfg = _cfg(name)
    loader = build_detection_test_loader(cfg, name)
    items = list(loader)
    assert [len(b) for b in items] == [1, 1, 1]
    assert [b[0]["image_id"] for b in items] == [10, 20, 30]
    first = items[0][0]
    assert "instances" not in first and (first["height"], first["width"]) == (40, 60)
    assert tuple(first["image"].shape) == (3, 32, 48)
    assert MetadataCatalog.get(name).thing_classes == ["one", "three", "seven"]


def test_dataset_from_list_round_trips():
    items = [{"a": i, "b": [i] * i} for i in range(5)]
    ds = DatasetFromList(items)
    assert len(ds) == 5 and [ds[i] for i in range(5)] == items
    assert pickle.loads(pickle.dumps(ds))[3] == items[3]


def test_instances_survive_pickling():
    inst = Instances((4, 5), gt_boxes=torch.zeros(2, 4), gt_classes=torch.tensor([1, 2]))
    back = pickle.loads(pickle.dumps(inst))
    assert back.image_size == (4, 5) and back.gt_classes.tolist() == [1, 2]
