"""Small models and weight randomisation shared by the checkpoint tests."""

import pytest
import torch

from assigndet.config import get_cfg
from assigndet.modeling import build_backbone


def _cfg(narrow: bool, **resnets):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if narrow:
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return cfg


@pytest.fixture
def make_cfg():
    """``make_cfg(narrow=True, **RESNETS)``: an R-50 config (narrow widths unless narrow=False)."""
    return lambda narrow=True, **resnets: _cfg(narrow, **resnets)


@pytest.fixture
def make_resnet():
    """``make_resnet(narrow=True, **RESNETS)``: an R-50 backbone with random weights and stats."""

    def make(narrow=True, **resnets):
        model = build_backbone(_cfg(narrow, **resnets))
        randomize_(model)
        return model.eval()

    return make


def randomize_(model: torch.nn.Module) -> None:
    """Random parameters and buffers (positive variances), so that any mix-up shows."""
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            else:
                tensor.normal_(0, 0.1)


@pytest.fixture
def randomize():
    return randomize_
