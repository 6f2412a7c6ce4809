"""ATSS: FCOS's network with adaptive training sample selection (the PSS paper's "modified
RetinaNet": one square anchor of 8 strides per location, ATSS assignment).

Backbone, FPN, head (GN towers, centerness on the regression tower, per-level scales), focal
loss, test-time threshold, top-k and NMS are FCOS's and read ``MODEL.FCOS``. What differs is
the assignment (:func:`atss_assign`, ``MODEL.ATSS.TOPK`` and ``ANCHOR_SCALE``) and the weight
of the GIoU loss (``MODEL.ATSS.LOC_LOSS_WEIGHT``, 2 as mmdet). Boxes are regressed as FCOS
does, stride-normalised (l, t, r, b) from the anchor centre: the ATSS paper's "POINT" mode.
FCOS's size ranges and centre sampling play no part.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from assigndet.config import CfgNode, configurable
from assigndet.modeling import FCOS, META_ARCH_REGISTRY
from assigndet.modeling.assigners.fcos import FCOSTargets
from assigndet.structures import Instances

from .atss_assign import atss_assign

__all__ = ["ATSS"]


@META_ARCH_REGISTRY.register()
class ATSS(FCOS):
    """ATSS meta-architecture (``MODEL.META_ARCHITECTURE: "ATSS"``).

    Input and output are FCOS's; training returns
    ``{"loss_atss_cls", "loss_atss_loc", "loss_atss_ctr"}``.
    """

    @configurable
    def __init__(
        self,
        *,
        topk: int = 9,
        anchor_scale: float = 8.0,
        loc_loss_weight: float = 2.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            topk: candidates per level and box, nearest anchor centres first.
            anchor_scale: side of the one square anchor per location, in strides.
            loc_loss_weight: weight of the box (GIoU) loss.
            kwargs: the arguments of :class:`FCOS` except ``sizes_of_interest`` and
                ``center_sampling_radius``, which ATSS does not have.
        """
        unused = sorted({"sizes_of_interest", "center_sampling_radius"} & set(kwargs))
        if unused:
            raise TypeError(f"ATSS assigns without FCOS's {unused}; do not pass them")
        if topk < 1:
            raise ValueError(f"MODEL.ATSS.TOPK must be at least 1; got {topk}")
        if anchor_scale <= 0:
            raise ValueError(f"MODEL.ATSS.ANCHOR_SCALE must be positive; got {anchor_scale}")
        # FCOS checks its size ranges against the levels; give it FCOS's doubling boundaries,
        # one per level boundary, which ATSS never reads.
        num_levels = len(kwargs.get("in_features", ()))
        sizes = [64.0 * 2**i for i in range(max(num_levels - 1, 0))]
        super().__init__(sizes_of_interest=sizes, center_sampling_radius=0.0, **kwargs)
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.loc_loss_weight = loc_loss_weight

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        args = super().from_config(cfg)
        del args["sizes_of_interest"], args["center_sampling_radius"]
        atss = cfg.MODEL.ATSS
        args.update(
            topk=atss.TOPK, anchor_scale=atss.ANCHOR_SCALE, loc_loss_weight=atss.LOC_LOSS_WEIGHT
        )
        return args

    @torch.no_grad()
    def label_locations(
        self, locations: list[Tensor], gt_instances: list[Instances]
    ) -> FCOSTargets:
        """ATSS targets of every image, stacked: fields ``[N, R]`` / ``[N, R, 4]``.

        Args:
            locations: L tensors ``[R_l, 2]`` (anchor centres of each level).
            gt_instances: per image, ``gt_boxes`` ``[G, 4]`` XYXY and ``gt_classes`` ``[G]``.
        """
        points, strides, _ = self._per_location(locations)
        num_points_per_level = [len(p) for p in locations]
        per_image = [
            atss_assign(
                points,
                strides,
                num_points_per_level,
                inst.gt_boxes,
                inst.gt_classes,
                self.num_classes,
                self.topk,
                self.anchor_scale,
                self.norm_reg_targets,
            )
            for inst in gt_instances
        ]
        return FCOSTargets.stack(per_image)

    @classmethod
    def _loss_prefix(cls) -> str:
        return "atss"

    def unguided_losses(
        self, cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, targets: FCOSTargets
    ) -> dict[str, Tensor]:
        """FCOS's losses with the box loss weighted by ``loc_loss_weight``; :meth:`losses`
        adds the Sampling-Free guidance by that weighted box loss.

        Args:
            cls_logits: ``[N, R, K]``; box_reg: ``[N, R, 4]``; ctr_logits: ``[N, R]``.
            targets: stacked :class:`FCOSTargets` from :meth:`label_locations`.

        Returns:
            ``{"loss_atss_cls", "loss_atss_loc", "loss_atss_ctr"}``, scalar tensors.
        """
        fcos = super().unguided_losses(cls_logits, box_reg, ctr_logits, targets)
        return {
            "loss_atss_cls": fcos["loss_fcos_cls"],
            "loss_atss_loc": fcos["loss_fcos_loc"] * self.loc_loss_weight,
            "loss_atss_ctr": fcos["loss_fcos_ctr"],
        }
