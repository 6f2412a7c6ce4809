"""``ImageList``: a batch of images of different sizes, padded into one tensor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class ImageList:
    """A padded batch ``tensor`` ``[N, C, H, W]`` plus each image's unpadded ``(h, w)``.

    Padding is on the right and bottom, so pixel coordinates are the same in the batch and in the
    original image.
    """

    def __init__(self, tensor: Tensor, image_sizes: list[tuple[int, int]]) -> None:
        if tensor.dim() != 4 or tensor.shape[0] != len(image_sizes):
            raise ValueError(
                f"ImageList needs a [N, C, H, W] tensor and N image sizes; got "
                f"{tuple(tensor.shape)} "
                f"and {len(image_sizes)} sizes"
            )
        self.tensor = tensor
        self.image_sizes = [(int(h), int(w)) for h, w in image_sizes]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> Tensor:
        """The ``idx``-th image, without its padding: ``[C, h, w]``."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: list[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> ImageList:
        """Pad ``tensors`` (each ``[C, H_i, W_i]``, same C/dtype/device) to a common size.

        The common size is the per-batch maximum, rounded up to a multiple of
        ``size_divisibility`` when it is > 1 (32 for an FPN with P5, 128 with P7).
        """
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        for t in tensors:
            if t.dim() != 3 or t.shape[0] != tensors[0].shape[0]:
                raise ValueError(
                    f"ImageList.from_tensors: every image must be [C, H, W] with the same C; got "
                    f"{[tuple(x.shape) for x in tensors]}"
                )
        image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
        max_h = max(h for h, _ in image_sizes)
        max_w = max(w for _, w in image_sizes)
        if size_divisibility > 1:
            max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
            max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value)[None]
        else:
            batched = tensors[0].new_full(
                (len(tensors), tensors[0].shape[0], max_h, max_w), pad_value
            )
            for i, t in enumerate(tensors):
                batched[i, :, : t.shape[1], : t.shape[2]].copy_(t)
        return ImageList(batched.contiguous(), image_sizes)
