"""Initialisations: Caffe2-style fills of detectron2's ResNet and FPN, and the prior bias of
sigmoid classifiers."""

from __future__ import annotations

import math

from torch import nn


def prior_bias(prior_prob: float) -> float:
    """Classifier bias b with sigmoid(b) = ``prior_prob``: -log((1 - p) / p)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_bias: prior_prob must be in (0, 1); got {prior_prob}")
    return -math.log((1.0 - prior_prob) / prior_prob)


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
