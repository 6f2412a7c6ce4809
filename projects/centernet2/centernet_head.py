"""The CenterNet head: shared, class and box towers, heatmap and (l, t, r, b) outputs.

Module names equal the official CenterNet2 code (``share_tower``, ``cls_tower``, ``bbox_tower``,
``agn_hm``, ``cls_logits``, ``bbox_pred``, ``scales.{l}.scale``), so its checkpoints load as
they are. A tower is an ``nn.Sequential`` of [conv3x3, norm, ReLU] blocks: with a norm the
convs sit at indices 0, 3, 6, 9 and the norms at 1, 4, 7, 10; an empty tower has no keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.config import configurable
from assigndet.data.num_classes import checked_num_classes
from assigndet.layers import ShapeSpec, get_norm, prior_bias
from assigndet.modeling.heads import Scale
from assigndet.modeling.losses import sampling_free_initial_prior

__all__ = ["CenterNetHead", "centernet_tower"]


def centernet_tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    """``num_convs`` x [3x3 conv with bias, norm, ReLU] at constant width.

    "GN" is GroupNorm(32) when ``channels`` is a multiple of 32 and GroupNorm(25) otherwise, as in
    the official head; other norms go through ``get_norm``.
    """
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        if norm == "GN" and channels % 32 != 0:
            layers.append(nn.GroupNorm(25, channels))
        elif norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CenterNetHead(nn.Module):
    """Towers and output convs of CenterNet, one set of weights for all levels.

    ``share_tower`` feeds ``cls_tower`` and ``bbox_tower``. On the box tower: ``bbox_pred`` (4
    outputs, times the per-level ``scales[l]`` then ReLU: distances in strides) and, with
    ``with_agn_hm``, the class-agnostic heatmap ``agn_hm`` (1 output). On the class tower:
    ``cls_logits`` (K outputs), absent with ``only_proposal``, which also builds no class tower.

    Init: every conv N(0, 0.01) with zero bias, except ``bbox_pred.bias`` = 8 and the heatmap
    biases = -log((1 - prior_prob) / prior_prob).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int,
        num_classes: int = 80,
        with_agn_hm: bool = False,
        only_proposal: bool = False,
        norm: str = "GN",
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        prior_prob: float = 0.01,
    ) -> None:
        """
        Args:
            in_channels: channels of every input level (and of the towers).
            num_levels: pyramid levels, one ``Scale`` each.
            num_classes: K, outputs of ``cls_logits``.
            with_agn_hm: build the agnostic heatmap ``agn_hm``.
            only_proposal: no class tower and no ``cls_logits`` (CenterNet2's first stage);
                needs ``with_agn_hm``.
            norm: tower norm, see :func:`centernet_tower`.
            num_cls_convs, num_box_convs, num_share_convs: tower depths.
            prior_prob: initial sigmoid of the heatmap outputs.
        """
        super().__init__()
        if only_proposal and not with_agn_hm:
            raise ValueError(
                "MODEL.CENTERNET.ONLY_PROPOSAL needs MODEL.CENTERNET.WITH_AGN_HM: the proposals "
                "are scored by the agnostic heatmap"
            )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"MODEL.CENTERNET.PRIOR_PROB must be in (0, 1); got {prior_prob}")
        self.num_classes = num_classes
        self.with_agn_hm = with_agn_hm
        self.only_proposal = only_proposal
        self.cls_tower = centernet_tower(0 if only_proposal else num_cls_convs, in_channels, norm)
        self.bbox_tower = centernet_tower(num_box_convs, in_channels, norm)
        self.share_tower = centernet_tower(num_share_convs, in_channels, norm)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        for module in [self.cls_tower, self.bbox_tower, self.share_tower, self.bbox_pred]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0.0)
        # 8 strides on each side: the initial boxes are about 16 strides wide
        nn.init.constant_(self.bbox_pred.bias, 8.0)

        bias = prior_bias(prior_prob)
        if with_agn_hm:
            self.agn_hm = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
            nn.init.normal_(self.agn_hm.weight, std=0.01)
            nn.init.constant_(self.agn_hm.bias, bias)
        if not only_proposal:
            self.cls_logits = nn.Conv2d(
                in_channels, num_classes, kernel_size=3, stride=1, padding=1
            )
            nn.init.normal_(self.cls_logits.weight, std=0.01)
            nn.init.constant_(self.cls_logits.bias, bias)

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        c = cfg.MODEL.CENTERNET
        if c.USE_DEFORMABLE:
            raise NotImplementedError(
                "MODEL.CENTERNET.USE_DEFORMABLE = True (a deformable last tower conv) is not "
                "implemented; set it to False"
            )
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                "CenterNetHead needs the same channels on every level of "
                f"MODEL.CENTERNET.IN_FEATURES; got {[s.channels for s in input_shape]}"
            )
        return {
            "in_channels": channels.pop(),
            "num_levels": len(input_shape),
            # the first stage of CenterNet2 has no class heatmap: its NUM_CLASSES is unused
            "num_classes": (
                c.NUM_CLASSES if c.ONLY_PROPOSAL
                else checked_num_classes(cfg, "MODEL.CENTERNET.NUM_CLASSES")
            ),
            "with_agn_hm": c.WITH_AGN_HM,
            "only_proposal": c.ONLY_PROPOSAL,
            "norm": c.NORM,
            "num_cls_convs": c.NUM_CLS_CONVS,
            "num_box_convs": c.NUM_BOX_CONVS,
            "num_share_convs": c.NUM_SHARE_CONVS,
            "prior_prob": sampling_free_initial_prior(cfg, c.PRIOR_PROB),
        }

    def set_heatmap_prior(self, heatmap: str, prior_prob: float) -> None:
        """Set the bias of a heatmap output to -log((1 - p) / p).

        Args:
            heatmap: ``"agn"`` (``agn_hm``) or ``"cls"`` (``cls_logits``).
            prior_prob: p in (0, 1).
        """
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"heatmap prior must be in (0, 1); got {prior_prob}")
        layer = {"agn": getattr(self, "agn_hm", None), "cls": getattr(self, "cls_logits", None)}
        if heatmap not in layer or layer[heatmap] is None:
            raise ValueError(f"CenterNetHead has no {heatmap!r} heatmap")
        with torch.no_grad():
            layer[heatmap].bias.fill_(prior_bias(prior_prob))

    def forward(
        self, features: list[Tensor]
    ) -> tuple[list[Tensor | None], list[Tensor], list[Tensor | None]]:
        """Run the head on every level.

        Args:
            features: L maps ``[N, C, H_l, W_l]``.

        Returns:
            ``(cls_logits, box_reg, agn_hm_logits)``, lists over levels of ``[N, K, H_l, W_l]``
            (None entries with ``only_proposal``), ``[N, 4, H_l, W_l]`` (l, t, r, b) >= 0 in
            units of the level's stride, and ``[N, 1, H_l, W_l]`` (None entries without
            ``with_agn_hm``).
        """
        if len(features) != len(self.scales):
            raise ValueError(
                f"CenterNetHead was built for {len(self.scales)} levels; got {len(features)}"
            )
        cls_logits: list[Tensor | None] = []
        box_reg: list[Tensor] = []
        agn_hm_logits: list[Tensor | None] = []
        for level, feature in enumerate(features):
            feature = self.share_tower(feature)
            box_feature = self.bbox_tower(feature)
            if self.only_proposal:
                cls_logits.append(None)
            else:
                cls_logits.append(self.cls_logits(self.cls_tower(feature)))
            agn_hm_logits.append(self.agn_hm(box_feature) if self.with_agn_hm else None)
            box_reg.append(F.relu(self.scales[level](self.bbox_pred(box_feature))))
        return cls_logits, box_reg, agn_hm_logits
