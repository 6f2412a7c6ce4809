"""Thin wrappers around torch layers, with detectron2's module names."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """``torch.cat`` that skips the copy when there is a single tensor."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(list(tensors), dim)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm (child ``norm``) and activation.

    Takes every ``nn.Conv2d`` argument plus keyword-only ``norm`` (an ``nn.Module`` or None) and
    ``activation`` (a callable or None). Keeping the norm as a child named ``norm`` gives the
    state-dict keys ``<conv>.norm.weight`` etc. that detectron2 checkpoints use.
    """

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C_in, H, W] -> [N, C_out, H', W']."""
        if x.numel() == 0 and self.training and isinstance(self.norm, nn.SyncBatchNorm):
            raise ValueError("SyncBatchNorm cannot normalise an empty batch")
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
