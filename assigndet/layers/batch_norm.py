"""Normalisation layers: FrozenBatchNorm2d and ``get_norm`` (config string -> module)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    ``y = x * s + (bias - running_mean * s)`` with ``s = weight / sqrt(running_var + eps)``.
    The state-dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``) are those of
    detectron2, so its checkpoints load; ``num_batches_tracked`` from a BatchNorm checkpoint is
    ignored, and checkpoints from before running statistics existed load with identity statistics.
    """

    # Version 3 adds eps to running_var in forward; older versions did not.
    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, H, W] -> [N, C, H, W]."""
        if x.requires_grad:
            # An explicit affine keeps the graph small when gradients flow through (no BN backward).
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # The oldest checkpoints carry no running statistics: use identity statistics.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        if version is not None and version < 3 and prefix + "running_var" in state_dict:
            logger.info("FrozenBatchNorm %s is upgraded to version 3.", prefix.rstrip("."))
            # Older versions used running_var without adding eps; subtracting it keeps outputs.
            state_dict[prefix + "running_var"] = state_dict[prefix + "running_var"] - self.eps
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm in ``module`` by a FrozenBatchNorm2d.

        Children are replaced in place; if ``module`` itself is a batch norm, a new module is
        returned (otherwise ``module`` itself is returned).
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen.to(device=_device_of(module))
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def _device_of(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "SyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
}


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """The norm layer for ``out_channels`` channels.

    ``norm`` is "" or None (no norm, returns None), one of "BN", "SyncBN", "FrozenBN", "GN"
    (32 groups), or a callable taking the channel count.
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {['', *NORMS]}")
        if norm == "GN" and out_channels % 32 != 0:
            raise ValueError(
                f"GN uses 32 groups, so channels must be a multiple of 32, got {out_channels}"
            )
        return NORMS[norm](out_channels)
    return norm(out_channels)
