"""Deployable graphs of the NMS-free detectors (FCOS_PSS, ATSS_PSS): ONNX and TorchScript.

What is exported is the detector's ``export_forward``, with one fixed input size:

    images   [N, 3, H, W] float32  raw pixel values in INPUT.FORMAT channel order (N dynamic)
    boxes    [N, D, 4]    float32  XYXY in input pixels, clipped to [0, W] x [0, H]
    scores   [N, D]       float32  the joint score P, in descending order
    classes  [N, D]       int64    contiguous class index in [0, NUM_CLASSES)

D = min(TEST.DETECTIONS_PER_IMAGE, MODEL.FCOS.POST_NMS_TOPK_TEST, R * K) for R locations and K
classes. All D rows come out; the PyTorch model also drops those with a score not above
MODEL.PSS.SCORE_THRESH_TEST, which is left to the consumer. H and W must be multiples of the
backbone's size divisibility. An image of another size is first fitted into H x W
(:func:`fit_image`), padding with MODEL.PIXEL_MEAN, which is how the PyTorch model pads a batch.

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it
traces ``export_forward`` with its Python values fixed and keeps the batch size symbolic.
With ``torch.export`` (``dynamo=True``), the batch size gets specialised, because
``export_forward`` builds an ``ImageList`` from a Python list with one entry per image. The
exporter then writes a graph for the example's batch size only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor, nn

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

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "classes")
BATCH_AXIS_NAME = "batch"
# The TorchScript-based ONNX exporter writes opsets up to 20; 17 is read by every current runtime.
DEFAULT_OPSET = 17
# An ONNX op, or a substring of a TorchScript node kind (torchvision::nms, ...), marking NMS.
_ONNX_NMS_OPS = frozenset({"NonMaxSuppression"})
_TORCHSCRIPT_NMS_MARK = "nms"


@dataclass(frozen=True)
class GraphSummary:
    """The nodes of an exported graph.

    Attributes:
        format: "onnx" or "torchscript".
        path: the written file.
        num_nodes: all nodes, those of subgraphs (ONNX) or of called submodules (TorchScript,
            inlined) included.
        op_counts: nodes per ONNX op type or TorchScript node kind, most frequent first.
        input_shape: the input's dimensions, a name for a symbolic one (``"batch"``).
    """

    format: str
    path: str
    num_nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    input_shape: tuple[int | str, ...] = ()

    @property
    def nms_ops(self) -> list[str]:
        """The node types that perform NMS (empty for an NMS-free graph)."""
        if self.format == "onnx":
            return sorted(op for op in self.op_counts if op in _ONNX_NMS_OPS)
        return sorted(op for op in self.op_counts if _TORCHSCRIPT_NMS_MARK in op.lower())

    def describe(self, max_ops: int | None = None) -> str:
        """One line: node count, input shape and the op types with their counts."""
        items = list(self.op_counts.items())
        shown = items if max_ops is None else items[:max_ops]
        ops = ", ".join(f"{op} x{n}" for op, n in shown)
        if len(shown) < len(items):
            ops += f", ... ({len(items) - len(shown)} more types)"
        shape = "[" + ", ".join(str(d) for d in self.input_shape) + "]"
        return f"{self.num_nodes} nodes, input {INPUT_NAME} {shape}; ops: {ops}"


class NMSFreeGraph(nn.Module):
    """The traced module: ``forward(images)`` is the detector's ``export_forward(images)``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``images [N, 3, H, W]`` -> ``boxes [N, D, 4]``, ``scores [N, D]``, ``classes [N, D]``."""
        return self.detector.export_forward(images)


class _FixedInputSize(nn.Module):
    """Scripted around the traced graph: rejects an input of any shape but ``[N, 3, H, W]``,
    for which the trace (its locations and clipping limits are constants) would be wrong."""

    def __init__(self, graph: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.graph = graph
        self.height = height
        self.width = width

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = images.shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] != self.height or shape[3] != self.width:
            raise ValueError(
                "images must be [N, 3, " + str(self.height) + ", " + str(self.width)
                + "] (the exported size), got " + str(shape)
            )
        return self.graph(images)


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` has the NMS-free graph: an ``export_forward`` and
    MODEL.PSS.USE_NMS off (a PSS detector in NMS mode tests as its base detector)."""
    name = type(model).__name__
    if not callable(getattr(model, "export_forward", None)):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {name!r} has no export_forward: only an NMS-free detector "
            "(FCOS_PSS, ATSS_PSS) can be exported"
        )
    if getattr(model, "use_nms", False):
        raise ValueError(
            f"MODEL.PSS.USE_NMS is True for {name!r}: only the NMS-free graph is exported; set "
            "MODEL.PSS.USE_NMS False"
        )


def size_divisibility(model: nn.Module) -> int:
    """What the input height and width must be multiples of: the backbone's size divisibility
    (its largest feature stride for an FPN), at least 1."""
    backbone = getattr(model, "backbone", None)
    return max(1, int(getattr(backbone, "size_divisibility", 0) or 0))


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def default_export_size(min_size_test: int, max_size_test: int, divisor: int) -> tuple[int, int]:
    """The default ``(height, width)``: INPUT.MIN_SIZE_TEST by INPUT.MAX_SIZE_TEST, each rounded
    up to a multiple of ``divisor``.

    This landscape canvas holds any landscape image resized by the test-time rule (short side
    MIN_SIZE_TEST, long side at most MAX_SIZE_TEST), e.g. 800 x 1344 for 800 / 1333 and a
    divisor of 32. Portrait images are fitted into it by :func:`fit_image` at a smaller scale.
    """
    if min_size_test <= 0 or max_size_test <= 0:
        raise ValueError(
            f"INPUT.MIN_SIZE_TEST {min_size_test} / INPUT.MAX_SIZE_TEST {max_size_test} give no "
            "export size (resizing is off); give the height and width"
        )
    divisor = max(1, divisor)
    return _round_up(min_size_test, divisor), _round_up(max(max_size_test, min_size_test), divisor)


def check_export_size(height: int, width: int, divisor: int) -> None:
    """Raise ValueError unless ``height`` and ``width`` are positive multiples of ``divisor``."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % max(1, divisor):
            suggestion = _round_up(max(value, 1), max(1, divisor))
            raise ValueError(
                f"export {name} {value} is not a positive multiple of the backbone's size "
                f"divisibility {divisor} (e.g. {suggestion})"
            )


def example_images(
    model: nn.Module, height: int, width: int, batch_size: int = 2, seed: int = 0
) -> Tensor:
    """Seeded random pixel values ``[batch_size, 3, height, width]`` in [0, 255) on the model's
    device: the tracing example (2 images: a batch of one could be specialised by the tracer)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, height, width, generator=generator) * 255.0
    return images.to(_model_device(model))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd, and quiet about what is fixed by design (sizes become constants;
    the TorchScript tracer and exporter are deprecated in favour of torch.export). The model's
    training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
            yield
    finally:
        model.train(was_training)


def _prepare(model: nn.Module, height: int, width: int, path: str) -> None:
    check_exportable(model)
    check_export_size(height, width, size_divisibility(model))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)


def export_onnx(
    model: nn.Module, height: int, width: int, path: str, opset: int = DEFAULT_OPSET
) -> GraphSummary:
    """Write the NMS-free graph of ``model`` to the ONNX file ``path``.

    Input ``images`` float32 ``[batch, 3, height, width]`` (batch symbolic); outputs ``boxes``
    ``[batch, D, 4]``, ``scores`` ``[batch, D]``, ``classes`` ``[batch, D]`` int64. Runs the
    TorchScript-based exporter (see the module's docstring) on the model's device; the weights
    are stored in the file.

    Returns:
        The summary of the written graph. Raises RuntimeError if it holds a NonMaxSuppression
        node (it never should) and ValueError for a model without the NMS-free graph or a size
        that is not a multiple of the backbone's size divisibility.
    """
    _prepare(model, height, width, path)
    dynamic = {name: {0: BATCH_AXIS_NAME} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with _tracing(model):
        torch.onnx.export(
            NMSFreeGraph(model),
            (example_images(model, height, width),),
            path,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    summary = onnx_graph_summary(path)
    _check_nms_free(summary)
    return summary


def onnx_graph_summary(path: str) -> GraphSummary:
    """Check the ONNX file ``path`` (onnx.checker) and count its nodes by op type."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError("reading an ONNX graph needs the onnx package: pip install onnx") from e
    model = onnx.load(path)
    onnx.checker.check_model(model)
    counts: Counter[str] = Counter()
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    pending.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    pending.extend(attr.graphs)
    inputs = [i for i in model.graph.input if i.name == INPUT_NAME] or list(model.graph.input)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    shape = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims)
    return GraphSummary("onnx", path, sum(counts.values()), dict(counts.most_common()), shape)


def export_torchscript(model: nn.Module, height: int, width: int, path: str) -> GraphSummary:
    """Write the NMS-free graph of ``model`` as TorchScript to ``path``.

    ``torch.jit.trace`` records ``export_forward`` on the model's device (a CUDA trace runs on
    CUDA only), and a scripted wrapper rejects inputs other than ``[N, 3, height, width]``. Load
    with ``torch.jit.load(path)``; calling it with ``images [N, 3, height, width]`` returns the
    tuple ``(boxes, scores, classes)``. The saved file is loaded back for the summary.
    """
    _prepare(model, height, width, path)
    with _tracing(model):
        traced = torch.jit.trace(
            NMSFreeGraph(model), (example_images(model, height, width),), check_trace=False
        )
        scripted = torch.jit.script(_FixedInputSize(traced, height, width))
        torch.jit.save(scripted, path)
        loaded = torch.jit.load(path, map_location=_model_device(model))
    summary = torchscript_graph_summary(loaded, path, height, width)
    _check_nms_free(summary)
    return summary


def torchscript_graph_summary(
    module: torch.jit.ScriptModule, path: str, height: int, width: int
) -> GraphSummary:
    """Count the nodes of ``module``'s graph, called submodules inlined, by node kind."""
    counts: Counter[str] = Counter()
    pending = list(module.inlined_graph.nodes())
    while pending:
        node = pending.pop()
        counts[node.kind()] += 1
        for block in node.blocks():
            pending.extend(block.nodes())
    shape = (BATCH_AXIS_NAME, 3, height, width)
    ops = dict(counts.most_common())
    return GraphSummary("torchscript", path, sum(counts.values()), ops, shape)


def _check_nms_free(summary: GraphSummary) -> None:
    if summary.nms_ops:
        raise RuntimeError(f"{summary.path} holds NMS nodes {summary.nms_ops}; it should not")


def fit_image(
    image: np.ndarray, height: int, width: int, pad_value: Sequence[float] = (0.0, 0.0, 0.0)
) -> tuple[np.ndarray, tuple[float, float]]:
    """Fit ``image [h, w, 3]`` into the export size: resize keeping its aspect ratio (bilinear)
    until it touches ``height`` or ``width``, then pad on the bottom and right with
    ``pad_value`` (MODEL.PIXEL_MEAN pads exactly as the PyTorch model does).

    The channel order is left as it is: give the image in INPUT.FORMAT (cv2.imread reads BGR).

    Returns:
        ``(canvas, (scale_x, scale_y))``: ``canvas [height, width, 3]`` float32 (transpose to
        ``[3, height, width]`` for the graph), and the scales that map the original image onto
        the canvas; divide the x and y coordinates of the boxes by them to return.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"fit_image expects an [h, w, 3] image, got shape {image.shape}")
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    new_h = min(height, max(1, int(round(h * scale))))
    new_w = min(width, max(1, int(round(w * scale))))
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[...] = np.asarray(pad_value, dtype=np.float32).reshape(1, 1, -1)
    canvas[:new_h, :new_w] = image
    return canvas, (new_w / w, new_h / h)
