"""Bring detections from the network's input size back to the requested output size."""

from __future__ import annotations

from ..structures import Instances, clip_boxes_, nonempty_boxes


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """Rescale ``pred_boxes`` from ``results.image_size`` to ``(output_height, output_width)``.

    Boxes are scaled per axis, clipped to the output image, and empty ones are dropped together
    with their other fields.

    Args:
        results: detections of one image, ``pred_boxes`` ``[N, 4]`` XYXY in input pixels and
            ``image_size`` the (unpadded) input size.
        output_height: height of the output image (normally the original image's).
        output_width: width of the output image.

    Returns:
        A new ``Instances`` of image size ``(output_height, output_width)``.
    """
    in_h, in_w = results.image_size
    if in_h <= 0 or in_w <= 0 or output_height <= 0 or output_width <= 0:
        raise ValueError(
            f"detector_postprocess needs positive sizes; got input {results.image_size} and "
            f"output {(output_height, output_width)}"
        )
    scale_x, scale_y = output_width / in_w, output_height / in_h
    out = Instances((output_height, output_width), **results.get_fields())
    if out.has("pred_boxes"):
        boxes = out.pred_boxes.clone()
        boxes[:, 0::2] *= scale_x
        boxes[:, 1::2] *= scale_y
        out.pred_boxes = clip_boxes_(boxes, out.image_size)
        out = out[nonempty_boxes(out.pred_boxes)]
    return out
