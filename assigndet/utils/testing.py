"""Small models and inputs for tests and examples, like detectron2's ``utils/testing.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from assigndet.config import CfgNode, get_cfg
from assigndet.structures import Instances

__all__ = ["num_threads", "random_detection_batch", "tiny_dense_detector_cfg"]


def tiny_dense_detector_cfg(
    meta_architecture: str = "FCOS",
    num_classes: int = 3,
    fpn_channels: int = 32,
    top_levels: int = 0,
) -> CfgNode:
    """A dense detector (FCOS and the models built on it) that runs in milliseconds on a CPU.

    ResNet-18 with BN and nothing frozen, an FPN on res3-res5 with ``fpn_channels`` channels,
    one conv per tower. ``top_levels`` 0 gives P3-P5 (size ranges split at 32 and 64 px);
    2 gives the default P3-P7.
    """
    if top_levels not in (0, 2):
        raise ValueError(f"top_levels must be 0 (P3-P5) or 2 (P3-P7); got {top_levels}")
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = fpn_channels
    cfg.MODEL.FCOS.NUM_CLASSES = num_classes
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    if top_levels == 0:
        cfg.MODEL.FCOS.TOP_LEVELS = 0
        cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5"]
        cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32]
        cfg.MODEL.FCOS.SIZES_OF_INTEREST = [32, 64]
    return cfg


def random_detection_batch(
    sizes: Sequence[tuple[int, int]],
    boxes: Sequence[Sequence[Sequence[float]]],
    classes: Sequence[Sequence[int]],
    output_scale: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Model inputs with random uint8 images ``[3, H, W]`` and the given ground truth.

    Args:
        sizes: (H, W) of each image.
        boxes: per image, its XYXY boxes.
        classes: per image, the class of each box.
        output_scale: when set, each dict asks for outputs at ``output_scale`` times the input
            size (``"height"`` / ``"width"``).
        seed: the images' random seed.
    """
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for (h, w), b, c in zip(sizes, boxes, classes):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        inst = Instances(
            (h, w),
            gt_boxes=torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            gt_classes=torch.tensor(c, dtype=torch.int64),
        )
        item = {"image": image, "instances": inst}
        if output_scale is not None:
            item["height"] = round(output_scale * h)
            item["width"] = round(output_scale * w)
        batch.append(item)
    return batch


@contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous count.

    Float reductions are split across threads, so a result is reproducible bit for bit only
    against a reference computed with the same thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
