import contextlib
import io
import json
import logging
import math
import os
import uuid

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from assigndet.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from assigndet.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
    print_csv_format,
)
from assigndet.structures import Instances

# Two images; dataset category ids 1 and 3 (a gap) map to contiguous 0 and 1.
GT_BOXES = {  # image id -> list of (XYWH box, dataset category id)
    10: [([10.0, 10.0, 100.0, 100.0], 1)],
    11: [([20.0, 30.0, 100.0, 100.0], 3), ([150.0, 150.0, 20.0, 20.0], 1)],
}
CONTIGUOUS = {1: 0, 3: 1}


def _write_gt(tmp_path) -> str:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 240, "width": 320} for i in GT_BOXES]
    annotations = []
    for image_id, boxes in GT_BOXES.items():
        for box, cat in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                 "area": box[2] * box[3], "iscrowd": 0, "category_id": cat}
            )
    categories = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return str(path)


def _register(json_file: str) -> str:
    name = f"tiny_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(
        name,
        {"thing_classes": ["circle", "square"], "thing_dataset_id_to_contiguous_id": CONTIGUOUS},
        json_file,
        os.path.dirname(json_file),
    )
    return name


def _outputs(image_id: int, shift: float = 0.0, extra_score: float | None = None) -> dict:
    boxes, classes = [], []
    for (x, y, w, h), cat in GT_BOXES[image_id]:
        boxes.append([x + shift * w, y, x + w + shift * w, y + h])
        classes.append(CONTIGUOUS[cat])
    scores = [0.9] * len(boxes)
    instances = Instances(
        (240, 320),
        pred_boxes=torch.tensor(boxes),
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes),
    )
    return {"instances": instances}


def _run(evaluator, shift=0.0, image_ids=(10, 11)):
    evaluator.reset()
    for i in image_ids:
        evaluator.process([{"image_id": i}], [_outputs(i, shift)])
    return evaluator.evaluate()


def test_perfect_predictions_give_100(tmp_path):
    name = _register(_write_gt(tmp_path))
    out = tmp_path / "inference"
    results = _run(COCOEvaluator(name, output_dir=str(out), distributed=False))
    bbox = results["bbox"]
    assert list(bbox)[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert bbox["AP"] == pytest.approx(100.0)
    assert bbox["AP-circle"] == pytest.approx(100.0) and bbox["AP-square"] == pytest.approx(100.0)
    assert bbox["APs"] == pytest.approx(100.0)  # the 20x20 circle
    assert math.isnan(bbox["APm"])  # no medium ground truth
    written = json.loads((out / "coco_instances_results.json").read_text())
    assert sorted({r["category_id"] for r in written}) == [1, 3]  # original ids, gap kept
    first_image = [r["bbox"] for r in written if r["image_id"] == 10]
    assert first_image == [[10.0, 10.0, 100.0, 100.0]]  # XYWH
    assert (out / "instances_predictions.pth").is_file()


def test_shifted_predictions_match_pycocotools(tmp_path):
    json_file = _write_gt(tmp_path)
    name = _register(json_file)
    out = tmp_path / "inference"
    # shifting by 0.16 of the width: IoU = 0.84 / 1.16 = 0.724, a match at IoU 0.50..0.70 only
    results = _run(COCOEvaluator(name, output_dir=str(out), distributed=False), shift=0.16)
    bbox = results["bbox"]
    assert bbox["AP"] == pytest.approx(50.0)
    assert bbox["AP50"] == pytest.approx(100.0)
    assert bbox["AP75"] == pytest.approx(0.0)
    # the same numbers straight from pycocotools on the written results file
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dt = gt.loadRes(str(out / "coco_instances_results.json"))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for i, key in enumerate(["AP", "AP50", "AP75", "APs"]):
        assert bbox[key] == pytest.approx(ev.stats[i] * 100)


def test_no_detections_warn_and_zero(tmp_path, caplog):
    name = _register(_write_gt(tmp_path))
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.reset()
    empty = Instances((240, 320), pred_boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                      pred_classes=torch.zeros(0, dtype=torch.int64))
    evaluator.process([{"image_id": 10}], [{"instances": empty}])
    with caplog.at_level(logging.WARNING):
        bbox = evaluator.evaluate()["bbox"]
    assert "No predictions from the model" in caplog.text
    assert bbox["AP"] == 0.0 and bbox["AP-square"] == 0.0 and bbox["APs"] == 0.0
    assert math.isnan(bbox["APm"])


def test_bad_class_and_image_and_missing_json(tmp_path):
    name = _register(_write_gt(tmp_path))
    evaluator = COCOEvaluator(name, distributed=False)
    bad = _outputs(10)
    bad["instances"].pred_classes = torch.tensor([5])
    evaluator.process([{"image_id": 10}], [bad])
    with pytest.raises(ValueError, match="Predicted class 5 is not a contiguous id"):
        evaluator.evaluate()
    evaluator.reset()
    evaluator.process([{"image_id": 99}], [_outputs(10)])
    with pytest.raises(ValueError, match=r"image ids \[99\] that are not in the ground truth"):
        evaluator.evaluate()
    missing = _register(str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="nope.json of dataset"):
        COCOEvaluator(missing)


def test_converted_from_dataset_dicts(tmp_path):
    """A dataset without json_file is converted from its dicts; same AP as from the json."""
    name = f"dicts_{uuid.uuid4().hex[:8]}"
    dicts = []
    for image_id, boxes in GT_BOXES.items():
        anns = [{"bbox": box, "bbox_mode": 1, "category_id": CONTIGUOUS[cat], "iscrowd": 0}
                for box, cat in boxes]
        dicts.append({"file_name": f"{image_id}.jpg", "image_id": image_id, "height": 240,
                      "width": 320, "annotations": anns})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["circle", "square"],
                                  thing_dataset_id_to_contiguous_id=CONTIGUOUS)
    bbox = _run(COCOEvaluator(name, distributed=False), shift=0.16)["bbox"]
    assert bbox["AP"] == pytest.approx(50.0)
    assert bbox["AP-circle"] == pytest.approx(50.0)


class _FixedModel(torch.nn.Module):
    """Returns the shifted ground truth of each input image."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, inputs):
        assert not self.training and not torch.is_grad_enabled()
        return [_outputs(x["image_id"], shift=0.16) for x in inputs]


def test_inference_on_dataset_logs_and_csv(tmp_path, caplog):
    name = _register(_write_gt(tmp_path))
    loader = [[{"image_id": 10}], [{"image_id": 11}]]
    model = _FixedModel()
    with caplog.at_level(logging.INFO):
        results = inference_on_dataset(
            model, loader, DatasetEvaluators([COCOEvaluator(name, distributed=False)])
        )
        print_csv_format(results)
    assert model.training  # mode restored
    assert results["bbox"]["AP"] == pytest.approx(50.0)
    assert "Total inference time" in caplog.text
    assert "Total inference pure compute time" in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("copypaste:")]
    assert lines == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50,AP75,APs,APm,APl",
        "copypaste: 50.0000,100.0000,0.0000,50.0000,nan,50.0000",
    ]


def _distributed_eval(json_file: str, output_dir: str) -> None:
    from assigndet.utils import comm

    name = "tiny_coco_distributed"
    register_coco_instances(
        name,
        {"thing_classes": ["circle", "square"], "thing_dataset_id_to_contiguous_id": CONTIGUOUS},
        json_file,
        os.path.dirname(json_file),
    )
    evaluator = COCOEvaluator(name, output_dir=output_dir, distributed=True)
    mine = [10] if comm.get_rank() == 0 else [11]  # each rank sees half of the images
    results = _run(evaluator, shift=0.16, image_ids=mine)
    if comm.is_main_process():
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f)
    else:
        assert results == {}


def test_distributed_matches_single_process(tmp_path):
    from assigndet.engine import launch

    json_file = _write_gt(tmp_path)
    out = tmp_path / "dist"
    launch(_distributed_eval, 2, dist_url="auto", args=(json_file, str(out)))
    distributed = json.loads((out / "results.json").read_text())
    single = _run(COCOEvaluator(_register(json_file), distributed=False), shift=0.16)
    for key, value in single["bbox"].items():
        got = distributed["bbox"][key]
        assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value), key
    written = json.loads((out / "coco_instances_results.json").read_text())
    assert sorted(r["image_id"] for r in written) == [10, 11, 11]
