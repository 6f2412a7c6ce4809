"""Caffe2-style initialisations used by the ResNet and FPN of detectron2."""

from __future__ import annotations

from torch import nn


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: uniform in [-sqrt(3/fan_in), sqrt(3/fan_in)], bias zero."""
    # kaiming_uniform with a=1 has gain 1: bound sqrt(3 / fan_in), as Caffe2's XavierFill.
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRAFill: normal with std sqrt(2/fan_out), bias zero."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)
