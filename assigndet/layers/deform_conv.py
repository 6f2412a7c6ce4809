"""Deformable convolutions (v1 and modulated v2) on top of ``torchvision.ops.deform_conv2d``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


class DeformConv(nn.Module):
    """Deformable convolution (Dai et al. 2017), detectron2's ``DeformConv`` interface.

    ``forward(x, offset)``: x [N, C_in, H, W], offset [N, 2 * deformable_groups * kh * kw, H', W']
    -> [N, C_out, H', W']. Parameters: ``weight`` [C_out, C_in / groups, kh, kw], optional
    ``bias`` [C_out]; an optional ``norm`` child and ``activation`` follow the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                f"by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _output_size(self, x: Tensor) -> list[int]:
        size = [x.shape[0], self.out_channels]
        for dim in range(2):
            k = self.dilation[dim] * (self.kernel_size[dim] - 1) + 1
            size.append((x.shape[dim + 2] + 2 * self.padding[dim] - k) // self.stride[dim] + 1)
        return size

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        if x.numel() == 0:
            out = x.new_zeros(self._output_size(x))
        else:
            out = deform_conv2d(
                x,
                offset,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask,
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return self._deform(x, offset, None)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deformable_groups={self.deformable_groups}, "
            f"bias={self.bias is not None}"
        )


class ModulatedDeformConv(DeformConv):
    """Modulated deformable convolution (DCNv2, Zhu et al. 2019); ``bias`` (zero) on by default.

    ``forward(x, offset, mask)``: offset as in ``DeformConv``, mask
    [N, deformable_groups * kh * kw, H', W'] in [0, 1] (a sigmoid of predicted logits).
    """

    def __init__(self, *args, bias: bool = True, **kwargs):
        super().__init__(*args, bias=bias, **kwargs)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return self._deform(x, offset, mask)
