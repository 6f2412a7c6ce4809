"""Drawing boxes on images and plotting training curves.

Images are HxWx3 uint8 BGR arrays (as OpenCV reads and writes them); boxes XYXY absolute pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

__all__ = [
    "class_color",
    "draw_boxes",
    "draw_dataset_dict",
    "draw_instance_predictions",
    "load_metrics",
    "plot_loss_curves",
    "side_by_side",
]


def class_color(class_id: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour per class (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    hsv = np.array([[[int(hue * 179), 200, 235]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
) -> np.ndarray:
    """A copy of ``image`` with each box outlined and labelled "name score".

    Args:
        image: uint8 [H, W, 3] BGR.
        boxes: [N, 4] XYXY absolute.
        classes: N contiguous class ids.
        class_names: names indexed by class id (default "class <id>").
        scores: N scores shown after the name.
    """
    out = np.ascontiguousarray(image.copy())
    boxes = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    thickness = max(1, round(min(out.shape[:2]) / 300))
    font_scale = max(0.35, min(out.shape[:2]) / 900)
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        cls = int(cls)
        color = class_color(cls)
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        known = class_names is not None and 0 <= cls < len(class_names)
        name = class_names[cls] if known else f"class {cls}"
        label = name if scores is None else f"{name} {float(scores[k]):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else y0 + th + 2
        cv2.rectangle(out, (x0, ty - th - 1), (x0 + tw + 1, ty + base - 1), color, -1)
        cv2.putText(out, label, (x0, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def draw_instance_predictions(
    image: np.ndarray,
    instances,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """Draw an ``Instances`` with ``pred_boxes``, ``pred_classes`` and ``scores`` (those with a
    score >= ``score_threshold``)."""
    instances = instances.to("cpu")
    keep = instances.scores >= score_threshold
    return draw_boxes(
        image,
        instances.pred_boxes[keep],
        instances.pred_classes[keep].tolist(),
        class_names,
        instances.scores[keep].tolist(),
    )


def draw_dataset_dict(
    image: np.ndarray, dataset_dict: dict, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Draw the ground-truth ``annotations`` of a dataset dict (any ``bbox_mode``)."""
    from assigndet.structures import BoxMode

    anns = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    return draw_boxes(
        image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        [a["category_id"] for a in anns], class_names,
    )


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str], pad: int = 8) -> np.ndarray:
    """Images placed left to right on a white canvas, each with its title above it.

    Each column is as wide as its image or its title, whichever is wider, so titles never run
    into each other over small images.
    """
    title_h = 24
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    title_widths = [cv2.getTextSize(t, font, scale, 1)[0][0] + 4 for t in titles]
    columns = [max(im.shape[1], tw) for im, tw in zip(images, title_widths)]
    height = max(im.shape[0] for im in images) + title_h
    width = sum(columns) + pad * (len(images) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for im, title, column in zip(images, titles, columns):
        canvas[title_h : title_h + im.shape[0], x : x + im.shape[1]] = im
        cv2.putText(canvas, title, (x + 2, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        x += column + pad
    return canvas


def load_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.json`` (one JSON object per line; a non-finite value is
    ``null``, or a bare NaN in files of older versions)."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno} is not a JSON object: {e}") from None
    return records


def plot_loss_curves(
    metrics_path: str, output_path: str, keys: Sequence[str] | None = None
) -> list[str]:
    """Plot every scalar with "loss" in its name (or ``keys``) against iteration into a PNG.

    Returns the plotted keys. A run resumed several times has repeated iterations; the last
    value written for an iteration wins.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, plotted = loss_curves_figure(load_metrics(metrics_path), keys)
    if not plotted:
        plt.close(fig)
        raise ValueError(
            f"{metrics_path} has no {'loss' if keys is None else 'requested'} scalars to plot"
        )
    fig.savefig(output_path)
    plt.close(fig)
    return plotted


def loss_curves_figure(records: Sequence[dict], keys: Sequence[str] | None = None):
    """A matplotlib figure of the loss scalars of ``records`` (see ``plot_loss_curves``) and the
    plotted keys; a series of a single logged point is drawn as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in r.items():
            if k == "iteration" or not isinstance(v, (int, float)):
                continue
            if (keys is None and "loss" in k) or (keys is not None and k in keys):
                if math.isfinite(v):
                    series.setdefault(k, {})[r["iteration"]] = v
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for k in sorted(series, key=lambda n: (n != "total_loss", n)):
        its = sorted(series[k])
        ax.plot(
            its, [series[k][i] for i in its], label=k, linewidth=2 if k == "total_loss" else 1,
            marker="o" if len(its) == 1 else None,  # a line through one point draws nothing
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    return fig, sorted(series)
