"""``DatasetMapper``: one dataset dict -> the model's input dict."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import detection_utils as utils
from .transforms import (
    Augmentation,
    RandomApply,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)

logger = logging.getLogger(__name__)


def build_augmentation(cfg, is_train: bool) -> list[Augmentation]:
    """The augmentations of ``cfg.INPUT``, in order.

    Test: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``. Training: ``ResizeShortestEdge(
    MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING)`` then ``RandomFlip`` (RANDOM_FLIP),
    preceded when CROP.ENABLED by the crop branch: ``ResizeShortestEdge(CROP.RESIZE_BEFORE,
    "choice")`` without a cap on the long side (when RESIZE_BEFORE is not empty) and
    ``RandomCrop(CROP.TYPE, CROP.SIZE)``, both wrapped in ``RandomApply`` with CROP.PROBABILITY
    (below 1; at 1 they always run, as in detectron2).
    """
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = (
            cfg.INPUT.MIN_SIZE_TEST,
            cfg.INPUT.MAX_SIZE_TEST,
            "choice",
        )
    if isinstance(min_size, int):
        min_size = (min_size,)
    augs: list[Augmentation] = [ResizeShortestEdge(min_size, max_size, sample_style)]
    if is_train:
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("horizontal", "vertical", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got '{flip}'"
            )
        if flip != "none":
            augs.append(RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        if cfg.INPUT.CROP.ENABLED:
            # The crop goes first, the flip stays last (detectron2's order). DETR and DETA flip
            # before cropping; the distribution is the same, since the crop's offset is uniform
            # and a flip commutes with a resize.
            augs[:0] = _build_crop(cfg.INPUT.CROP)
    return augs


def _build_crop(crop_cfg) -> list[Augmentation]:
    prob = crop_cfg.PROBABILITY
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"INPUT.CROP.PROBABILITY must be a number in [0, 1], got {prob!r}")
    sizes = crop_cfg.RESIZE_BEFORE
    if isinstance(sizes, int):
        sizes = (sizes,)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(
            f"INPUT.CROP.RESIZE_BEFORE must be a list of short-side lengths > 0, got {sizes!r}"
        )
    augs: list[Augmentation] = []
    if sizes:
        augs.append(ResizeShortestEdge(sizes, sample_style="choice"))  # no long-side cap
    augs.append(RandomCrop(crop_cfg.TYPE, crop_cfg.SIZE))
    return augs if prob == 1.0 else [RandomApply(augs, prob)]


class DatasetMapper:
    """Read, augment and convert one dataset dict (detectron2's format).

    Returns ``{"image": uint8 [C, H, W] tensor in ``image_format``, "instances":
    Instances(gt_boxes float32 [N, 4] XYXY, gt_classes int64 [N]) (training only), "height",
    "width" (of the original image), "image_id", "file_name"}``. Crowd annotations are left out
    of the targets; at test time annotations are dropped.

    Build it as ``DatasetMapper(cfg, is_train)`` (``cfg.INPUT`` gives the augmentations and the
    format) or with explicit arguments, which also override those of ``cfg``.

    Args:
        cfg: a config, or None when ``augmentations`` and ``image_format`` are given.
        is_train: build training targets.
        augmentations: applied in order to the image and its boxes.
        image_format: "BGR", "RGB" or "L".
    """

    def __init__(
        self,
        cfg=None,
        is_train: bool = True,
        *,
        augmentations: Sequence[Augmentation] | None = None,
        image_format: str | None = None,
    ) -> None:
        if cfg is not None:
            from_cfg = self.from_config(cfg, is_train)
            augmentations = from_cfg["augmentations"] if augmentations is None else augmentations
            image_format = from_cfg["image_format"] if image_format is None else image_format
        if augmentations is None or image_format is None:
            raise TypeError("DatasetMapper needs a cfg, or both augmentations and image_format")
        if image_format not in utils.SUPPORTED_FORMATS:
            raise ValueError(
                f"INPUT.FORMAT must be one of {utils.SUPPORTED_FORMATS}, got '{image_format}'"
            )
        self.is_train = is_train
        self.augmentations = list(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logger.info(f"DatasetMapper augmentations for {mode}: {self.augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        """The explicit constructor arguments that ``cfg`` implies."""
        return {
            "is_train": is_train,
            "augmentations": build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = dict(dataset_dict)  # annotations are read, never modified
        try:
            image = utils.read_image(dataset_dict["file_name"], self.image_format)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (image_id {dataset_dict.get('image_id')})") from None
        utils.check_image_size(dataset_dict, image)

        image, transforms = apply_augmentations(self.augmentations, image)
        image_size = image.shape[:2]
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "image_id": dataset_dict.get("image_id"),
            "file_name": dataset_dict["file_name"],
        }
        if self.is_train:
            out["instances"] = utils.annotations_to_instances(
                dataset_dict.get("annotations", []), transforms, image_size
            )
        return out
