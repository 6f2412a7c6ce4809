#!/usr/bin/env python
"""Accuracy, duplicates and post-processing time of a dense detector with and without NMS.

    python tools/nms_free_report.py --config-file configs/quickstart/fcos_pss_shapes.yaml \
        MODEL.WEIGHTS output/fcos_pss_shapes/model_final.pth

The same weights are evaluated in two modes on the first of DATASETS.TEST (or ``--dataset``):

- FCOS / ATSS: with their NMS, and without it (``MODEL.FCOS.NMS_TH 1.0``: the raw top-scored
  candidates, the baseline that shows what NMS removes);
- FCOS_PSS / ATSS_PSS: end-to-end (top detections by the PSS score, no NMS) and one-to-many
  (the PSS branch ignored, base detector with NMS; ``MODEL.PSS.USE_NMS True``).

For each mode the table gives COCO AP and AP50, the duplicate rate (share of detections above
score 0.3 overlapping a higher-scored same-class detection at IoU > 0.7), and the network and
post-processing time per image (medians over ``--runs`` runs on the first ``--num-images``
images, batch of one).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics

import torch
from tabulate import tabulate

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import load_config
from assigndet.data import build_detection_test_loader
from assigndet.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    DuplicateRateEvaluator,
    inference_on_dataset,
)
from assigndet.evaluation.timing import time_inference
from assigndet.modeling import build_model
from assigndet.utils.logger import setup_logger

logger = logging.getLogger("assigndet.nms_free_report")

# meta-architecture -> [(mode name, config overrides)]
MODES = {
    "FCOS": [("with NMS", []), ("without NMS", ["MODEL.FCOS.NMS_TH", "1.0"])],
    "FCOS_PSS": [("end-to-end, no NMS", ["MODEL.PSS.USE_NMS", "False"]),
                 ("one-to-many + NMS", ["MODEL.PSS.USE_NMS", "True"])],
}
MODES["ATSS"] = MODES["FCOS"]
MODES["ATSS_PSS"] = MODES["FCOS_PSS"]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="AP, duplicates and post-processing time "
                                                 "with and without NMS")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", default="", help="a registered dataset (default: the "
                                                      "first of DATASETS.TEST)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs")
    parser.add_argument("--num-images", type=int, default=20, help="images per timed run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def evaluate_mode(cfg, dataset: str, runs: int, num_images: int) -> dict[str, float]:
    """AP, AP50, duplicate rate and median ms per image of one configured mode."""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    loader = build_detection_test_loader(cfg, dataset)
    evaluator = DatasetEvaluators([COCOEvaluator(dataset), DuplicateRateEvaluator()])
    results = inference_on_dataset(model, loader, evaluator)
    batches = list(itertools.islice(iter(loader), num_images))
    with torch.no_grad():
        times = time_inference(model, batches, runs=runs, num_iter=len(batches), warmup=2)
    return {
        "AP": results["bbox"]["AP"],
        "AP50": results["bbox"]["AP50"],
        "duplicate rate (%)": results["duplicates"]["rate"],
        "detections > 0.3 per image": results["duplicates"]["num_detections"] / len(loader),
        "network ms": 1000 * statistics.median(times["network"]),
        "post-processing ms": 1000 * statistics.median(times["postprocess"]),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = get_parser().parse_args(argv)
    setup_logger(name="assigndet")
    logging.getLogger("assigndet").setLevel(logging.WARNING)  # keep the table readable
    base = load_config(args.config_file, args.opts)
    arch = base.MODEL.META_ARCHITECTURE
    if arch not in MODES:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE = {arch!r}: this report covers {sorted(MODES)}"
        )
    if not base.MODEL.WEIGHTS:
        raise ValueError("Set MODEL.WEIGHTS to the checkpoint to report on")
    dataset = args.dataset or (base.DATASETS.TEST[0] if base.DATASETS.TEST else "")
    if not dataset:
        raise ValueError("No dataset: pass --dataset or set DATASETS.TEST")
    report = {}
    for mode, overrides in MODES[arch]:
        cfg = load_config(args.config_file, list(args.opts) + overrides)
        report[mode] = evaluate_mode(cfg, dataset, args.runs, args.num_images)
    columns = list(next(iter(report.values())))
    rows = [[mode] + [f"{values[c]:.2f}" for c in columns] for mode, values in report.items()]
    print(tabulate(rows, headers=[f"{arch} on {dataset}", *columns], tablefmt="pipe"))
    print(f"weights: {base.MODEL.WEIGHTS}  device: {base.MODEL.DEVICE}  "
          f"threads: {torch.get_num_threads()}")
    return report


if __name__ == "__main__":
    main()
