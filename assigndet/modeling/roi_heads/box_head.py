"""Box heads: pooled RoI features -> a per-RoI feature vector (detectron2's names and keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fvcore.common.registry import Registry
from torch import Tensor, nn

from ...config import CfgNode, configurable
from ...layers import Conv2d, ShapeSpec, c2_msra_fill, c2_xavier_fill, get_norm

__all__ = ["ROI_BOX_HEAD_REGISTRY", "FastRCNNConvFCHead", "build_box_head"]

ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
ROI_BOX_HEAD_REGISTRY.__doc__ = """
Box heads of R-CNN RoI heads, named by MODEL.ROI_BOX_HEAD.NAME; each is called as
``cls(cfg, input_shape)`` with the pooled feature's ``ShapeSpec(channels, height, width)`` and
must have an ``output_shape`` attribute (a ``ShapeSpec``).
"""


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead(nn.Sequential):
    """Convs (3x3, ReLU) then fully connected layers (ReLU) on pooled RoI features.

    Children, in order: ``conv1``..``convN``, then ``flatten``, ``fc1``, ``fc_relu1``, ..., so the
    state-dict keys are detectron2's (``fc1.weight``, ``conv1.norm.weight``...). Convs use
    Caffe2's MSRA fill and FCs Caffe2's Xavier fill, with zero biases.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: Sequence[int],
        fc_dims: Sequence[int],
        conv_norm: str = "",
    ) -> None:
        """
        Args:
            input_shape: channels, height and width of the pooled features.
            conv_dims: output channels of each conv.
            fc_dims: output width of each fully connected layer.
            conv_norm: norm of the convs ("" for none; the convs then have biases).
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError(
                "FastRCNNConvFCHead needs at least one conv or fc layer "
                "(MODEL.ROI_BOX_HEAD.NUM_CONV / NUM_FC are both 0)"
            )
        if input_shape.channels is None:
            raise ValueError(f"FastRCNNConvFCHead needs the input channels; got {input_shape}")
        output_size: int | tuple[int, int, int] = (
            input_shape.channels,
            input_shape.height or 1,
            input_shape.width or 1,
        )
        self.conv_norm_relus: list[nn.Module] = []
        for k, conv_dim in enumerate(conv_dims):
            conv = Conv2d(
                output_size[0],
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            output_size = (conv_dim, output_size[1], output_size[2])

        self.fcs: list[nn.Module] = []
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(output_size)), fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            output_size = fc_dim
        self._output_size = output_size

        for layer in self.conv_norm_relus:
            c2_msra_fill(layer)
        for layer in self.fcs:
            c2_xavier_fill(layer)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "conv_norm": head.NORM,
        }

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[R, C, H, W]`` -> ``[R, FC_DIM]`` (or ``[R, CONV_DIM, H, W]`` with no fc)."""
        for layer in self:
            x = layer(x)
        return x

    @property
    def output_shape(self) -> ShapeSpec:
        """The output's ``ShapeSpec``: channels only after fcs, (channels, height, width) else."""
        o = self._output_size
        if isinstance(o, int):
            return ShapeSpec(channels=o)
        return ShapeSpec(channels=o[0], height=o[1], width=o[2])


def build_box_head(cfg: CfgNode, input_shape: ShapeSpec) -> nn.Module:
    """Build ``cfg.MODEL.ROI_BOX_HEAD.NAME`` for pooled features of shape ``input_shape``."""
    name = cfg.MODEL.ROI_BOX_HEAD.NAME
    registered = sorted(n for n, _ in ROI_BOX_HEAD_REGISTRY)
    if name not in registered:
        raise KeyError(
            f"MODEL.ROI_BOX_HEAD.NAME = {name!r} is not a registered box head; registered: "
            f"{registered}"
        )
    return ROI_BOX_HEAD_REGISTRY.get(name)(cfg, input_shape)
