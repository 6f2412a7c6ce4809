"""Building blocks shared by backbones and heads."""

from .batch_norm import FrozenBatchNorm2d, get_norm
from .deform_conv import DeformConv, ModulatedDeformConv
from .ms_deform_attn import MSDeformAttn
from .shape_spec import ShapeSpec
from .weight_init import c2_msra_fill, c2_xavier_fill, prior_bias
from .wrappers import Conv2d, cat

__all__ = [
    "Conv2d",
    "DeformConv",
    "FrozenBatchNorm2d",
    "MSDeformAttn",
    "ModulatedDeformConv",
    "ShapeSpec",
    "c2_msra_fill",
    "c2_xavier_fill",
    "prior_bias",
    "cat",
    "get_norm",
]
