#!/usr/bin/env python
"""Run a trained model on images and write them with boxes, class names and scores drawn.

    python tools/demo.py --config-file CFG --input img.jpg 'photos/*.png' --output out/ \
        MODEL.WEIGHTS output/model_final.pth MODEL.DEVICE cpu
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import time

import cv2

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.config import load_config
from assigndet.engine import DefaultPredictor
from assigndet.utils.logger import setup_logger
from assigndet.utils.visualizer import draw_instance_predictions

logger = logging.getLogger("assigndet.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="assigndet demo on images")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files or glob patterns (quote globs)")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="draw detections with at least this score")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def expand_inputs(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        files.extend(matched)
    return files


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    setup_logger(name="assigndet")
    cfg = load_config(args.config_file, args.opts)
    files = expand_inputs(args.input)
    predictor = DefaultPredictor(cfg)
    class_names = predictor.metadata.get("thing_classes") if predictor.metadata else None
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"Cannot read {path} as an image")
        start = time.perf_counter()
        instances = predictor(image)["instances"]
        keep = int((instances.scores >= args.confidence_threshold).sum())
        logger.info("%s: %d detections (%d above %.2f) in %.2fs", path, len(instances), keep,
                    args.confidence_threshold, time.perf_counter() - start)
        drawn = draw_instance_predictions(image, instances, class_names, args.confidence_threshold)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out_path, drawn)
        written.append(out_path)
    return written


if __name__ == "__main__":
    main()
