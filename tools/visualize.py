#!/usr/bin/env python
"""Draw a model's predictions next to the ground truth for images of a dataset, and plot the
loss curves of a run.

    python tools/visualize.py --config-file CFG --output vis/ [--dataset shapes_val]
        [--num-images 8] [--score-threshold 0.5] [--metrics output/metrics.json]
        MODEL.WEIGHTS output/model_final.pth MODEL.DEVICE cpu

Each picture is ``<output>/<image id>.png``: predictions left, ground truth right. With
``--metrics``, ``<output>/loss_curves.png`` plots every loss in that metrics.json.
"""

from __future__ import annotations

import argparse
import logging
import os

import cv2

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.config import load_config
from assigndet.data import DatasetCatalog, MetadataCatalog, read_image
from assigndet.engine import DefaultPredictor
from assigndet.utils.logger import setup_logger
from assigndet.utils.visualizer import (
    draw_dataset_dict,
    draw_instance_predictions,
    plot_loss_curves,
    side_by_side,
)

logger = logging.getLogger("assigndet.visualize")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="predictions next to ground truth")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--dataset", default=None,
                        help="a registered dataset (default: the first of DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--metrics", default=None, help="a metrics.json to plot the losses of")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    setup_logger(name="assigndet")
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ValueError("No dataset: pass --dataset or set DATASETS.TEST")
    os.makedirs(args.output, exist_ok=True)
    written = []
    predictor = DefaultPredictor(cfg)
    class_names = MetadataCatalog.get(dataset).get("thing_classes")
    for record in DatasetCatalog.get(dataset)[: args.num_images]:
        image = read_image(record["file_name"], format="BGR")
        instances = predictor(image)["instances"]
        picture = side_by_side(
            [draw_instance_predictions(image, instances, class_names, args.score_threshold),
             draw_dataset_dict(image, record, class_names)],
            [f"prediction (score >= {args.score_threshold:g})", "ground truth"],
        )
        path = os.path.join(args.output, f"{record['image_id']}.png")
        cv2.imwrite(path, picture)
        written.append(path)
    logger.info("Wrote %d pictures to %s", len(written), args.output)
    if args.metrics:
        path = os.path.join(args.output, "loss_curves.png")
        plot_loss_curves(args.metrics, path)
        logger.info("Wrote the loss curves of %s to %s", args.metrics, path)
        written.append(path)
    return written


if __name__ == "__main__":
    main()
