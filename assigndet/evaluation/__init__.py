"""Evaluation: evaluators, the inference loop, and result printing."""

from .coco_evaluation import COCOEvaluator, convert_to_coco_dict, instances_to_coco_json
from .duplicates import DuplicateRateEvaluator, duplicate_mask
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from .testing import print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "DuplicateRateEvaluator",
    "convert_to_coco_dict",
    "duplicate_mask",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "print_csv_format",
    "verify_results",
]
