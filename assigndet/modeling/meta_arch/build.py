"""The meta-architecture registry and ``build_model``."""

from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Whole-model classes, named by MODEL.META_ARCHITECTURE; each is called as ``cls(cfg)`` and returns
an ``nn.Module`` following the detectron2 model I/O (list of dicts in; losses or predictions out).
"""


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``cfg.MODEL.DEVICE``.

    A method's meta-architecture is registered when its module is imported; the built-in methods
    register when ``assigndet.projects`` is imported, which this function does.
    """
    import assigndet.projects  # noqa: F401  (built-in methods register their meta-architectures)

    name = cfg.MODEL.META_ARCHITECTURE
    registered = sorted(n for n, _ in META_ARCH_REGISTRY)
    if name not in registered:
        raise KeyError(
            f"MODEL.META_ARCHITECTURE = {name!r} is not a registered meta-architecture; "
            f"registered: {registered}. A method registers its meta-architecture when its "
            "module is imported."
        )
    device = _model_device(cfg.MODEL.DEVICE)
    model = META_ARCH_REGISTRY.get(name)(cfg)
    return model.to(device)


def _model_device(spec: str) -> torch.device:
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE = {spec!r} is not a valid torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE = {spec!r} but CUDA is not available on this machine; "
            "set MODEL.DEVICE cpu (e.g. append `MODEL.DEVICE cpu` to the command line)"
        )
    return device
