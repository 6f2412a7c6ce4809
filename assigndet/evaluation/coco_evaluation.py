"""COCO box AP with pycocotools, for any dataset in the catalog.

Predictions become COCO result records ``{image_id, category_id, bbox (XYWH), score}`` with the
dataset's original category ids, are gathered on rank 0, written to
``coco_instances_results.json`` and scored by ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from assigndet.structures import BoxMode, Instances
from assigndet.utils import comm

from .evaluator import DatasetEvaluator

__all__ = ["COCOEvaluator", "convert_to_coco_dict", "instances_to_coco_json"]

logger = logging.getLogger(__name__)

_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# COCOeval area ranges, in the order of params.areaRng: all, small, medium, large
_AREA_RANGES = [(0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10)]


def instances_to_coco_json(instances: Instances, image_id: int) -> list[dict]:
    """COCO result records of one image's predictions.

    Args:
        instances: ``pred_boxes`` Tensor[N, 4] XYXY absolute, ``scores`` Tensor[N],
            ``pred_classes`` Tensor[N] (contiguous ids; mapped to dataset ids later).
    """
    if len(instances) == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.float(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    boxes = boxes.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
        for b, s, c in zip(boxes, scores, classes)
    ]


class COCOEvaluator(DatasetEvaluator):
    """Box AP of a catalog dataset with pycocotools.

    Args:
        dataset_name: a ``DatasetCatalog`` name. Ground truth comes from its metadata
            ``json_file`` when set, otherwise from its dataset dicts (converted to COCO format).
        output_dir: where ``coco_instances_results.json`` and ``instances_predictions.pth`` go
            (None writes nothing).
        distributed: gather predictions from every rank; only rank 0 returns results.
        max_dets_per_image: the largest COCOeval ``maxDets`` (default 100).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        distributed: bool = True,
        *,
        max_dets_per_image: int | None = None,
    ) -> None:
        from assigndet.data import MetadataCatalog

        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._max_dets_per_image = max_dets_per_image
        self._metadata = MetadataCatalog.get(dataset_name)
        self._predictions: list[dict] = []
        json_file = self._metadata.get("json_file")
        if json_file is None:
            logger.info(
                "Dataset '%s' has no json_file in its metadata; converting its dataset dicts "
                "to COCO format", dataset_name,
            )
            self._coco_api = _coco_from_dict(convert_to_coco_dict(dataset_name))
        else:
            if not os.path.isfile(json_file):
                raise FileNotFoundError(
                    f"Ground-truth json {json_file} of dataset '{dataset_name}' does not exist"
                )
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco_api = COCO(json_file)

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            instances = out["instances"].to("cpu")
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "instances": instances_to_coco_json(instances, inp["image_id"]),
                }
            )

    def evaluate(self, img_ids: list[int] | None = None) -> dict:
        """``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...}}`` in percent
        (NaN where the ground truth makes a number undefined) on rank 0; ``{}`` elsewhere."""
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("COCOEvaluator of '%s' received no predictions", self._dataset_name)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            torch.save(predictions, os.path.join(self._output_dir, "instances_predictions.pth"))
        results = self._eval_predictions(predictions, img_ids)
        return OrderedDict(bbox=results)

    def _to_dataset_ids(self, coco_results: list[dict]) -> None:
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if mapping is None:
            return
        reverse = {v: k for k, v in mapping.items()}
        for r in coco_results:
            c = r["category_id"]
            if c not in reverse:
                raise ValueError(
                    f"Predicted class {c} is not a contiguous id of dataset "
                    f"'{self._dataset_name}' (valid: 0..{len(reverse) - 1}); does "
                    "MODEL.*.NUM_CLASSES match the dataset?"
                )
            r["category_id"] = reverse[c]

    def _eval_predictions(self, predictions: list[dict], img_ids: list[int] | None) -> dict:
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        self._to_dataset_ids(coco_results)
        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", path)
            with open(path, "w") as f:
                json.dump(coco_results, f)
        known_ids = set(self._coco_api.getImgIds())
        unknown = {r["image_id"] for r in coco_results} - known_ids
        if unknown:
            raise ValueError(
                f"Predictions for image ids {sorted(unknown)[:10]} that are not in the ground "
                f"truth of '{self._dataset_name}'"
            )
        class_names = self._metadata.get("thing_classes")
        if not coco_results:
            logger.warning("No predictions from the model; every defined AP is 0")
            return self._results_without_detections(img_ids, class_names)
        coco_eval = _evaluate_on_coco(
            self._coco_api, coco_results, img_ids, self._max_dets_per_image
        )
        return self._derive_results(coco_eval, class_names)

    def _category_index(self, coco_eval: COCOeval) -> list[tuple[str, int]]:
        """(class name, index into COCOeval's category axis) per contiguous class."""
        class_names = self._metadata.get("thing_classes") or []
        reverse = _contiguous_to_dataset_id(self._metadata, len(class_names))
        cat_ids = list(coco_eval.params.catIds)
        return [
            (name, cat_ids.index(reverse[c]))
            for c, name in enumerate(class_names)
            if reverse.get(c) in cat_ids
        ]

    def _derive_results(self, coco_eval: COCOeval, class_names: list[str] | None) -> dict:
        results = {
            m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for i, m in enumerate(_METRICS)
        }
        logger.info(
            "Evaluation results for bbox:\n%s",
            tabulate([[f"{results[m]:.3f}" for m in _METRICS]], headers=_METRICS,
                     tablefmt="pipe", numalign="left", stralign="center"),
        )
        if not np.isfinite(list(results.values())).all():
            logger.info("Some metrics cannot be computed and are shown as NaN.")
        if not class_names:
            return results
        # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
        precisions = coco_eval.eval["precision"]
        per_class = []
        for name, k in self._category_index(coco_eval):
            precision = precisions[:, :, k, 0, -1]
            precision = precision[precision > -1]
            ap = float(np.mean(precision)) * 100 if precision.size else float("nan")
            per_class.append((name, ap))
            results[f"AP-{name}"] = ap
        self._log_per_class(per_class)
        return results

    def _results_without_detections(
        self, img_ids: list[int] | None, class_names: list[str] | None
    ) -> dict:
        """With no detections, AP is 0 where ground truth exists and NaN elsewhere."""
        image_ids = set(img_ids) if img_ids is not None else set(self._coco_api.getImgIds())
        anns = [
            a for a in self._coco_api.dataset.get("annotations", [])
            if a["image_id"] in image_ids and not a.get("iscrowd", 0)
        ]

        def value(selected: list[dict]) -> float:
            return 0.0 if selected else float("nan")

        areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns]
        results = {m: value(anns) for m in ("AP", "AP50", "AP75")}
        for m, (lo, hi) in zip(("APs", "APm", "APl"), _AREA_RANGES[1:]):
            results[m] = value([a for a, area in zip(anns, areas) if lo <= area < hi])
        if class_names:
            reverse = _contiguous_to_dataset_id(self._metadata, len(class_names))
            per_class = []
            for c, name in enumerate(class_names):
                ap = value([a for a in anns if a["category_id"] == reverse[c]])
                per_class.append((name, ap))
                results[f"AP-{name}"] = ap
            self._log_per_class(per_class)
        return results

    @staticmethod
    def _log_per_class(per_class: list[tuple[str, float]]) -> None:
        n_cols = min(6, 2 * len(per_class))
        flat = list(itertools.chain(*[(name, f"{ap:.3f}") for name, ap in per_class]))
        rows = itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])
        table = tabulate(
            rows, headers=["category", "AP"] * (n_cols // 2), tablefmt="pipe",
            numalign="left", stralign="center",
        )
        logger.info("Per-category bbox AP:\n%s", table)


def _evaluate_on_coco(
    coco_gt: COCO,
    coco_results: list[dict],
    img_ids: list[int] | None = None,
    max_dets_per_image: int | None = None,
) -> COCOeval:
    # loadRes adds fields to the records it is given; keep the caller's list clean
    coco_dt = coco_gt.loadRes(copy.deepcopy(coco_results))
    coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
    if max_dets_per_image is not None and max_dets_per_image != 100:
        coco_eval.params.maxDets = [1, 10, max_dets_per_image]
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCOeval summary:\n%s", summary.getvalue().rstrip())
    return coco_eval


def convert_to_coco_dict(dataset_name: str) -> dict:
    """The dataset dicts of ``dataset_name`` as a COCO instances json dict (boxes only).

    Category ids are the dataset's original ids when its metadata maps them
    (``thing_dataset_id_to_contiguous_id``), else the contiguous ids.
    """
    from assigndet.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    class_names = metadata.get("thing_classes")
    if class_names is None:
        raise ValueError(f"Metadata of dataset '{dataset_name}' needs thing_classes for COCO eval")
    reverse = _contiguous_to_dataset_id(metadata, len(class_names))
    categories = [{"id": reverse[c], "name": name} for c, name in enumerate(class_names)]
    images, annotations = [], []
    for record in dicts:
        images.append(
            {"id": record["image_id"], "width": record["width"], "height": record["height"],
             "file_name": record.get("file_name", "")}
        )
        for ann in record.get("annotations", []):
            box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYWH_ABS)
            box = [float(v) for v in box]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "bbox": box,
                    "area": float(ann.get("area", box[2] * box[3])),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                    "category_id": reverse[ann["category_id"]],
                }
            )
    return {
        "info": {"description": f"converted from dataset '{dataset_name}'"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _contiguous_to_dataset_id(metadata, num_classes: int) -> dict[int, int]:
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping:
        return {v: k for k, v in mapping.items()}
    return {i: i for i in range(num_classes)}


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
