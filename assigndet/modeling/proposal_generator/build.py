"""The proposal generator registry of two-stage models (detectron2's name and contract)."""

from __future__ import annotations

from fvcore.common.registry import Registry
from torch import nn

from assigndet.layers import ShapeSpec

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
First stages of two-stage models, named by MODEL.PROPOSAL_GENERATOR.NAME; each is called as
``cls(cfg, input_shape)`` with the backbone's ``{feature name: ShapeSpec}``, and its module is
called as ``(images: ImageList, features: dict[str, Tensor], gt_instances: list[Instances] |
None)`` -> ``(proposals: list[Instances], losses: dict[str, Tensor])``. Each proposal Instances
has ``proposal_boxes`` ``[R, 4]`` (XYXY, input pixels, no gradient) and ``objectness_logits``
``[R]``; losses are empty at test time.
"""


def build_proposal_generator(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module | None:
    """Build ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``; "PrecomputedProposals" gives None."""
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    registered = sorted(n for n, _ in PROPOSAL_GENERATOR_REGISTRY)
    if name not in registered:
        raise KeyError(
            f"MODEL.PROPOSAL_GENERATOR.NAME = {name!r} is not a registered proposal generator; "
            f"registered: {registered}"
        )
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
