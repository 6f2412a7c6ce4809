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


class CropTransform(Transform):
    """Keep the ``h x w`` region whose top-left pixel is ``(x0, y0)``.

    Boxes are shifted into the crop and clipped to it, so a box outside the crop ends up with zero
    width or height (left for the caller to drop).
    """

    def __init__(self, x0: int, y0: int, w: int, h: int) -> None:
        if x0 < 0 or y0 < 0 or w <= 0 or h <= 0:
            raise ValueError(
                f"CropTransform needs x0, y0 >= 0 and w, h > 0, got x0={x0}, y0={y0}, w={w}, h={h}"
            )
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.y0 + self.h > height or self.x0 + self.w > width:
            raise ValueError(f"{self!r} does not fit in a {height}x{width} (height x width) image")
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.array(boxes, dtype=np.float64) - np.array([self.x0, self.y0] * 2)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, self.w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, self.h)
        return boxes

    def __repr__(self) -> str:
        return f"CropTransform(x0={self.x0}, y0={self.y0}, w={self.w}, h={self.h})"


class TransformList(Transform):
    """Several transforms applied in order, as one."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        return apply_transforms_to_boxes(self.transforms, boxes)

    def __repr__(self) -> str:
        return f"TransformList({self.transforms})"


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


def _is_real(value) -> bool:
    """A finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value))


_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


class RandomCrop(Augmentation):
    """Crop a random region, as detectron2's ``RandomCrop``; ``crop_size`` is ``(h, w)`` or a range.

    ``crop_type`` (``INPUT.CROP.TYPE``) says how ``crop_size`` (``INPUT.CROP.SIZE``) gives the crop
    ``(ch, cw)`` of an ``H x W`` image:

    - ``"relative"``: ``crop_size = (rh, rw)`` in (0, 1]; ``ch = int(H * rh + 0.5)``, same for w.
    - ``"relative_range"``: as ``"relative"`` with ``rh`` uniform in ``[crop_size[0], 1]`` and
      ``rw`` uniform in ``[crop_size[1], 1]``.
    - ``"absolute"``: ``crop_size = (ch, cw)`` pixels, each capped at the image side.
    - ``"absolute_range"``: ``crop_size = (lo, hi)`` pixels; ``ch`` is a uniform integer in
      ``[min(H, lo), min(H, hi)]``, ``cw`` likewise in ``[min(W, lo), min(W, hi)]``.

    The top-left corner is then uniform over the positions that keep the crop inside the image.
    """

    def __init__(self, crop_type: str, crop_size: Sequence[float]) -> None:
        if crop_type not in _CROP_TYPES:
            raise ValueError(
                f"RandomCrop crop_type (INPUT.CROP.TYPE) must be one of {_CROP_TYPES}, "
                f"got {crop_type!r}"
            )
        size = tuple(crop_size) if isinstance(crop_size, (list, tuple, np.ndarray)) else ()
        if len(size) != 2 or not all(_is_real(v) for v in size):
            raise ValueError(
                f"RandomCrop crop_size (INPUT.CROP.SIZE) must be two numbers, got {crop_size!r}"
            )
        if crop_type.startswith("relative"):
            if not all(0 < v <= 1 for v in size):
                raise ValueError(
                    f"INPUT.CROP.SIZE of crop type {crop_type!r} holds fractions of the image "
                    f"side in (0, 1], got {list(size)}"
                )
        else:
            if not all(v == int(v) and v >= 1 for v in size):
                raise ValueError(
                    f"INPUT.CROP.SIZE of crop type {crop_type!r} holds pixel sizes (integers "
                    f">= 1), got {list(size)}"
                )
            size = tuple(int(v) for v in size)
            if crop_type == "absolute_range" and size[0] > size[1]:
                raise ValueError(
                    "INPUT.CROP.SIZE of crop type 'absolute_range' is (min, max) with "
                    f"min <= max, got {list(size)}"
                )
        self.crop_type, self.crop_size = crop_type, size

    def get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The crop ``(ch, cw)`` for an image of ``(h, w)``; random for the ``*_range`` types."""
        h, w = image_size
        if self.crop_type == "relative":
            rh, rw = self.crop_size
            return int(h * rh + 0.5), int(w * rw + 0.5)
        if self.crop_type == "relative_range":
            low = np.asarray(self.crop_size, dtype=np.float32)
            rh, rw = low + np.random.rand(2) * (1 - low)
            return int(h * rh + 0.5), int(w * rw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        lo, hi = self.crop_size
        ch = int(np.random.randint(min(h, lo), min(h, hi) + 1))
        cw = int(np.random.randint(min(w, lo), min(w, hi) + 1))
        return ch, cw

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        ch, cw = self.get_crop_size((h, w))
        y0 = int(np.random.randint(h - ch + 1))
        x0 = int(np.random.randint(w - cw + 1))
        return CropTransform(x0, y0, cw, ch)

    def __repr__(self) -> str:
        return f"RandomCrop(crop_type='{self.crop_type}', crop_size={self.crop_size})"


class RandomApply(Augmentation):
    """With probability ``prob``, draw and apply ``augmentations`` in order (each drawn on the
    output of the previous one); otherwise do nothing.

    The draw applies the inner transforms to the image so that each augmentation sees the size
    it will act on; the returned ``TransformList`` then applies them again to the input.
    """

    def __init__(self, augmentations: Sequence[Augmentation], prob: float = 0.5) -> None:
        if isinstance(augmentations, Augmentation):
            raise TypeError("RandomApply takes a list of augmentations, got a single one")
        if not _is_real(prob) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomApply prob must be a number in [0, 1], got {prob!r}")
        self.augmentations = list(augmentations)
        self.prob = prob

    def get_transform(self, image: np.ndarray) -> Transform:
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        _, transforms = apply_augmentations(self.augmentations, image)
        return TransformList(transforms)

    def __repr__(self) -> str:
        return f"RandomApply({self.augmentations}, prob={self.prob})"


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
