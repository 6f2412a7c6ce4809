"""Augmentations as in detectron2: an ``Augmentation`` draws a deterministic ``Transform`` for one
image, and the transform is applied to the image and to its boxes alike.

Randomness comes from numpy's global generator, which the data loader seeds per worker.
Images are ``HWC`` uint8 numpy arrays; boxes are float ``[N, 4]`` XYXY arrays in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


class Transform:
    """A deterministic image + box transform."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class NoOpTransform(Transform):
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        return boxes

    def __repr__(self) -> str:
        return "NoOpTransform()"


class ResizeTransform(Transform):
    """Resize from ``(h, w)`` to ``(new_h, new_w)`` with opencv: bilinear when enlarging, pixel-area
    averaging when shrinking (close to PIL's antialiased bilinear, which detectron2 uses)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects a {self.h}x{self.w} image, got {image.shape[:2]}"
            )
        if (self.new_h, self.new_w) == (self.h, self.w):
            return image
        shrink = self.new_h < self.h and self.new_w < self.w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        out = cv2.resize(image, (self.new_w, self.new_h), interpolation=interp)
        return out.reshape(self.new_h, self.new_w, *image.shape[2:])  # keep a channel axis of 1

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2, dtype=np.float64)
        return np.asarray(boxes, dtype=np.float64) * scale

    def __repr__(self) -> str:
        return f"ResizeTransform({self.h}x{self.w} -> {self.new_h}x{self.new_w})"


class HFlipTransform(Transform):
    """Mirror left-right an image of width ``width``."""

    def __init__(self, width: int) -> None:
        self.width = width

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.array(boxes, dtype=np.float64)
        boxes[:, [0, 2]] = self.width - boxes[:, [2, 0]]
        return boxes

    def __repr__(self) -> str:
        return f"HFlipTransform(width={self.width})"


class VFlipTransform(Transform):
    """Mirror top-bottom an image of height ``height``."""

    def __init__(self, height: int) -> None:
        self.height = height

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[::-1])

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.array(boxes, dtype=np.float64)
        boxes[:, [1, 3]] = self.height - boxes[:, [3, 1]]
        return boxes

    def __repr__(self) -> str:
        return f"VFlipTransform(height={self.height})"


class Augmentation:
    """Draws a ``Transform`` for a given image."""

    def get_transform(self, image: np.ndarray) -> Transform:
        raise NotImplementedError


class ResizeShortestEdge(Augmentation):
    """Resize so that the short side is a sampled length, capped so the long side <= ``max_size``.

    Args:
        short_edge_length: lengths to choose from (``"choice"``), or ``(min, max)`` to draw an
            integer from uniformly, both ends included (``"range"``). A length of 0 disables
            resizing.
        max_size: cap on the long side.
        sample_style: ``"choice"`` or ``"range"``.
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = 10**9,
        sample_style: str = "range",
    ) -> None:
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        self.short_edge_length = tuple(int(s) for s in short_edge_length)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got '{sample_style}'")
        if sample_style == "range" and len(self.short_edge_length) != 2:
            raise ValueError(
                "ResizeShortestEdge with sample_style='range' needs (min, max), got "
                f"{self.short_edge_length}"
            )
        self.max_size = max_size
        self.sample_style = sample_style

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """``(new_h, new_w)`` with each side rounded as ``int(x + 0.5)``."""
        scale = short_edge_length / min(h, w)
        new_h, new_w = h * scale, w * scale
        if max(new_h, new_w) > max_size:
            shrink = max_size / max(new_h, new_w)
            new_h, new_w = new_h * shrink, new_w * shrink
        return int(new_h + 0.5), int(new_w + 0.5)

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        return ResizeTransform(h, w, *self.get_output_shape(h, w, size, self.max_size))

    def __repr__(self) -> str:
        return (
            f"ResizeShortestEdge(short_edge_length={self.short_edge_length}, "
            f"max_size={self.max_size}, sample_style='{self.sample_style}')"
        )


class RandomFlip(Augmentation):
    """Flip with probability ``prob``, left-right (``horizontal``) or top-bottom (``vertical``)."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip flips either horizontally or vertically; choose one")
        self.prob, self.horizontal = prob, horizontal

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)

    def __repr__(self) -> str:
        kind = "horizontal" if self.horizontal else "vertical"
        return f"RandomFlip(prob={self.prob}, {kind})"


def apply_augmentations(
    augmentations: Sequence[Augmentation], image: np.ndarray
) -> tuple[np.ndarray, list[Transform]]:
    """Draw and apply each augmentation in turn; returns the image and the transforms drawn."""
    transforms = []
    for aug in augmentations:
        t = aug.get_transform(image)
        image = t.apply_image(image)
        transforms.append(t)
    return image, transforms


def apply_transforms_to_boxes(transforms: Sequence[Transform], boxes: np.ndarray) -> np.ndarray:
    """Apply ``transforms`` in order to XYXY boxes ``[N, 4]``; returns float64 ``[N, 4]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for t in transforms:
        boxes = t.apply_box(boxes)
    return boxes
