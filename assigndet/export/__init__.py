"""Deployment exports: the NMS-free graph of FCOS_PSS / ATSS_PSS as ONNX or TorchScript.

See :mod:`assigndet.export.nms_free` for the graph's inputs and outputs; ``tools/export.py`` is
the command line over these functions.
"""

from .nms_free import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAMES,
    GraphSummary,
    NMSFreeGraph,
    check_export_size,
    check_exportable,
    default_export_size,
    example_images,
    export_onnx,
    export_torchscript,
    fit_image,
    onnx_graph_summary,
    size_divisibility,
    torchscript_graph_summary,
)

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "GraphSummary",
    "NMSFreeGraph",
    "check_export_size",
    "check_exportable",
    "default_export_size",
    "example_images",
    "export_onnx",
    "export_torchscript",
    "fit_image",
    "onnx_graph_summary",
    "size_divisibility",
    "torchscript_graph_summary",
]
