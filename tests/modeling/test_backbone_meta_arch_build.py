"""build_model: builds the registered meta-architecture on MODEL.DEVICE, with clear errors."""

import pytest
import torch
from torch import nn

from assigndet.config import get_cfg
from assigndet.modeling import META_ARCH_REGISTRY, build_backbone, build_model


class BackboneOnly(nn.Module):
    """A minimal meta-architecture: the configured backbone."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(images)


if "BackboneOnly" not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(BackboneOnly)


def _cfg(device="cpu"):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "BackboneOnly"
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2"]
    return cfg


def test_build_model_on_cpu():
    model = build_model(_cfg())
    assert isinstance(model, BackboneOnly)
    assert all(p.device == torch.device("cpu") for p in model.parameters())
    assert model(torch.zeros(1, 3, 32, 32))["res2"].shape == (1, 256, 8, 8)


def test_unregistered_meta_architecture_lists_registered():
    cfg = _cfg()
    cfg.MODEL.META_ARCHITECTURE = "NoSuchDetector"
    with pytest.raises(KeyError, match="'NoSuchDetector' is not a registered.*'BackboneOnly'"):
        build_model(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_suggests_cpu():
    with pytest.raises(RuntimeError, match="CUDA is not available.*MODEL.DEVICE cpu"):
        build_model(_cfg("cuda"))


def test_invalid_device_string():
    with pytest.raises(ValueError, match="MODEL.DEVICE = 'gpu0' is not a valid torch device"):
        build_model(_cfg("gpu0"))
