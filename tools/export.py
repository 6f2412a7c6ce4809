#!/usr/bin/env python
"""Export the NMS-free inference graph of an FCOS_PSS / ATSS_PSS model to ONNX or TorchScript.

    python tools/export.py --config-file configs/fcos_pss_r50_3x.yaml --format onnx \
        --output output/fcos_pss.onnx MODEL.WEIGHTS output/fcos_pss_r50_3x/model_final.pth \
        MODEL.DEVICE cpu

The graph takes ``images`` float32 ``[N, 3, H, W]``: raw pixel values in INPUT.FORMAT channel
order, N free, H x W fixed at export. It returns ``boxes [N, D, 4]`` (XYXY pixels, clipped),
``scores [N, D]`` and ``classes [N, D]`` int64, with D = TEST.DETECTIONS_PER_IMAGE, and holds no
NMS. H and W default to INPUT.MIN_SIZE_TEST and INPUT.MAX_SIZE_TEST, each rounded up to a
multiple of the backbone's size divisibility (800 x 1344 for 800 / 1333 and an FPN with
stride 32). Fit images into that size with ``assigndet.export.fit_image``, padding with
MODEL.PIXEL_MEAN, and keep the detections whose score is above MODEL.PSS.SCORE_THRESH_TEST.

The model runs on MODEL.DEVICE while it is exported (a TorchScript file traced on CUDA runs on
CUDA only). ONNX uses torch's TorchScript-based exporter, which keeps the batch size dynamic;
see ``assigndet/export/nms_free.py``.
"""

from __future__ import annotations

import argparse
import logging

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.checkpoint import DetectionCheckpointer
from assigndet.config import load_config
from assigndet.engine.defaults import check_weights_file
from assigndet.export import (
    DEFAULT_OPSET,
    GraphSummary,
    check_export_size,
    check_exportable,
    default_export_size,
    export_onnx,
    export_torchscript,
    size_divisibility,
)
from assigndet.modeling import build_model
from assigndet.utils.logger import setup_logger

logger = logging.getLogger("assigndet.export")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="export the NMS-free FCOS-PSS / ATSS-PSS graph")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    parser.add_argument("--output", required=True, metavar="PATH", help="file to write")
    parser.add_argument("--height", type=int, default=None,
                        help="input height (default: INPUT.MIN_SIZE_TEST rounded up to a "
                             "multiple of the backbone's size divisibility)")
    parser.add_argument("--width", type=int, default=None,
                        help="input width (default: INPUT.MAX_SIZE_TEST rounded up likewise)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; at most 20)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def main(argv: list[str] | None = None) -> GraphSummary:
    args = get_parser().parse_args(argv)
    setup_logger(name="assigndet")
    cfg = load_config(args.config_file, args.opts)
    model = build_model(cfg)
    check_exportable(model)
    check_weights_file(cfg.MODEL.WEIGHTS)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    divisor = size_divisibility(model)
    height, width = args.height, args.width
    if height is None or width is None:
        default_h, default_w = default_export_size(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, divisor
        )
        height = default_h if height is None else height
        width = default_w if width is None else width
    check_export_size(height, width, divisor)

    logger.info("Exporting %s (%s) as %s at %d x %d (size divisibility %d) to %s",
                cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.DEVICE, args.format, height, width,
                divisor, args.output)
    if args.format == "onnx":
        summary = export_onnx(model, height, width, args.output, opset=args.opset)
    else:
        summary = export_torchscript(model, height, width, args.output)
    logger.info("Wrote %s: %s", args.output, summary.describe())
    nms = "NonMaxSuppression" if args.format == "onnx" else "nms"
    logger.info("%d nodes, no %s node: the graph is NMS-free", summary.num_nodes, nms)
    return summary


if __name__ == "__main__":
    main()
