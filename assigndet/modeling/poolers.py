"""RoI feature pooling from one or several pyramid levels (detectron2's ``ROIPooler``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]

POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool")


def assign_boxes_to_levels(
    box_lists: Sequence[Tensor],
    min_level: int,
    max_level: int,
    canonical_box_size: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """The pyramid level of each box, by Eqn. (1) of the FPN paper.

    level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_box_size + eps)),
    min_level, max_level), with eps the float64 machine epsilon as in detectron2 (it only keeps
    empty boxes finite; they land on ``min_level``).

    Args:
        box_lists: per image, ``[R_i, 4]`` XYXY boxes.
        min_level, max_level: the finest and coarsest levels available (e.g. 2 and 5 for P2-P5).
        canonical_box_size: a box of this side maps to ``canonical_level``.
        canonical_level: level of the canonical box.

    Returns:
        ``[sum R_i]`` int64: each box's level minus ``min_level``, images concatenated.
    """
    boxes = torch.cat([b.reshape(-1, 4) for b in box_lists])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    box_sizes = torch.sqrt(areas)
    levels = torch.floor(
        canonical_level + torch.log2(box_sizes / canonical_box_size + sys.float_info.epsilon)
    )
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> ``[sum R_i, 5]`` rows (image index, x1, y1, x2, y2) for RoI ops."""
    rows = []
    for i, boxes in enumerate(box_lists):
        index = boxes.new_full((boxes.shape[0], 1), float(i))
        rows.append(torch.cat([index, boxes.reshape(-1, 4)], dim=1))
    return torch.cat(rows, dim=0)


class ROIPooler(nn.Module):
    """Pool a fixed-size feature for every box, each from the pyramid level its size picks.

    Args:
        output_size: side of the pooled feature (an int or an (h, w) pair).
        scales: ``1 / stride`` of each input level, finest first; consecutive levels must differ
            by a factor of 2 and strides be powers of 2.
        sampling_ratio: RoIAlign samples per bin side; 0 adapts it to the box size.
        pooler_type: "ROIAlign" (aligned=False), "ROIAlignV2" (aligned=True: pixel centres at
            half-integers) or "ROIPool".
        canonical_box_size, canonical_level: see :func:`assign_boxes_to_levels`.

    The module has no parameters or buffers.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or min(output_size) <= 0:
            raise ValueError(f"ROIPooler output_size must be positive (h, w); got {output_size}")
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"ROIPooler pooler_type (MODEL.ROI_*_HEAD.POOLER_TYPE) must be one of "
                f"{POOLER_TYPES}; got {pooler_type!r}"
            )
        if not scales:
            raise ValueError("ROIPooler needs at least one scale")
        min_level = -math.log2(scales[0])
        max_level = -math.log2(scales[-1])
        if not (
            math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))
        ):
            raise ValueError(f"ROIPooler scales must be 1 / (a power of 2); got {list(scales)}")
        min_level, max_level = round(min_level), round(max_level)
        if len(scales) != max_level - min_level + 1 or not 0 <= min_level <= max_level:
            raise ValueError(
                f"ROIPooler scales {list(scales)} must be consecutive pyramid levels, finest first"
            )
        if canonical_box_size <= 0:
            raise ValueError(f"ROIPooler canonical_box_size must be > 0; got {canonical_box_size}")
        self.output_size = tuple(int(s) for s in output_size)
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = int(sampling_ratio)
        self.pooler_type = pooler_type
        self.min_level = min_level
        self.max_level = max_level
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        rois = rois.to(feature.dtype)
        if self.pooler_type == "ROIPool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(
            feature,
            rois,
            self.output_size,
            spatial_scale=scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.pooler_type == "ROIAlignV2",
        )

    def forward(self, x: list[Tensor], box_lists: list[Tensor]) -> Tensor:
        """
        Args:
            x: per level, ``[N, C, H_l, W_l]`` feature maps in the order of ``scales``.
            box_lists: per image (N of them), ``[R_i, 4]`` XYXY boxes in input pixels.

        Returns:
            ``[sum R_i, C, out_h, out_w]``, boxes in the order of ``box_lists``.
        """
        if len(x) != len(self.scales):
            raise ValueError(
                f"ROIPooler was built for {len(self.scales)} levels but got {len(x)} feature maps"
            )
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(
                f"ROIPooler got {len(box_lists)} box lists for a batch of {x[0].shape[0]} images"
            )
        num_channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, num_channels, *self.output_size))

        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.scales) == 1:
            return self._pool(x[0], rois, self.scales[0])

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = x[0].new_zeros((rois.shape[0], num_channels, *self.output_size))
        for level, (feature, scale) in enumerate(zip(x, self.scales)):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            output.index_put_((inds,), self._pool(feature, rois[inds], scale))
        return output
