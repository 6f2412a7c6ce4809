"""The FCOS head: classification and regression towers shared over pyramid levels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...data.num_classes import checked_num_classes
from ...layers import ShapeSpec, get_norm, prior_bias


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level in FCOS)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def conv_tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    """``num_convs`` x [3x3 conv (stride 1, same channels) -> norm (if any) -> ReLU]."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True))
        if norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Towers and predictors of FCOS; module names follow the FCOS reference code (AdelaiDet).

    ``share_tower`` (``num_share_convs`` convs) feeds ``cls_tower`` and ``bbox_tower``
    (each [3x3 conv -> norm -> ReLU] x n). ``cls_logits`` (K outputs) sits on the cls tower,
    ``bbox_pred`` (4) on the box tower, and ``ctrness`` (1) on the box tower when
    ``centerness_on_reg``, else on the cls tower. Weights are shared over levels; only the
    per-level ``scales`` differ. Box outputs are ReLU(scale * x) in units of the level's stride
    when ``norm_reg_targets``, else exp(scale * x) in pixels.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        centerness_on_reg: bool = True,
        norm_reg_targets: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"MODEL.FCOS.PRIOR_PROB must be in (0, 1); got {prior_prob}")
        self.num_classes = num_classes
        self.centerness_on_reg = centerness_on_reg
        self.norm_reg_targets = norm_reg_targets
        self.share_tower = conv_tower(num_share_convs, in_channels, norm)
        self.cls_tower = conv_tower(num_cls_convs, in_channels, norm)
        self.bbox_tower = conv_tower(num_box_convs, in_channels, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, stride=1, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict:
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"FCOSHead needs the same channels on every level of MODEL.FCOS.IN_FEATURES; "
                f"got {[s.channels for s in input_shape]}"
            )
        fcos = cfg.MODEL.FCOS
        return {
            "in_channels": channels.pop(),
            "num_classes": checked_num_classes(cfg, "MODEL.FCOS.NUM_CLASSES"),
            "num_levels": len(input_shape),
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": fcos.NORM,
            "prior_prob": fcos.PRIOR_PROB,
            "use_scale": fcos.USE_SCALE,
            "centerness_on_reg": fcos.CENTERNESS_ON_REG,
            "norm_reg_targets": fcos.NORM_REG_TARGETS,
        }

    def forward(
        self, features: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Run the head on every level.

        Args:
            features: L maps ``[N, C, H_l, W_l]``.

        Returns:
            ``(cls_logits, box_reg, ctr_logits, box_features)``, each a list over levels of
            ``[N, K, H_l, W_l]``, ``[N, 4, H_l, W_l]``, ``[N, 1, H_l, W_l]`` and the box
            tower's output ``[N, C, H_l, W_l]`` (read by heads built on top of FCOS).
        """
        if self.scales is not None and len(features) != len(self.scales):
            raise ValueError(
                f"FCOSHead was built for {len(self.scales)} levels; got {len(features)} features"
            )
        cls_logits, box_reg, ctr_logits, box_features = [], [], [], []
        for level, feature in enumerate(features):
            feature = self.share_tower(feature)
            cls_feature = self.cls_tower(feature)
            box_feature = self.bbox_tower(feature)
            cls_logits.append(self.cls_logits(cls_feature))
            ctr_logits.append(self.ctrness(box_feature if self.centerness_on_reg else cls_feature))
            reg = self.bbox_pred(box_feature)
            if self.scales is not None:
                reg = self.scales[level](reg)
            box_reg.append(torch.relu(reg) if self.norm_reg_targets else torch.exp(reg))
            box_features.append(box_feature)
        return cls_logits, box_reg, ctr_logits, box_features
