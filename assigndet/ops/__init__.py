"""Detection ops with compiled kernels (`assigndet._C`) and pure-PyTorch references.

The compiled kernel for the input's device is used when `assigndet._C` has it; otherwise the
reference runs, with a one-time warning. The references take the same arguments and give the same
results. None of these ops is differentiable: they return indices and detached values.
The exception is `ms_deform_attn`: it is differentiable, and its `grid_sample` fallback is exact,
so it runs without a warning; `ms_deform_attn_reference` is its per-point test oracle.
"""

from .matcher import (
    match_hungarian,
    match_top_one,
    match_top_one_batched,
    match_top_one_reference,
    pair_quality,
)
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_reference
from .nms import batched_nms, batched_nms_reference, nms, nms_reference

__all__ = [
    "batched_nms",
    "batched_nms_reference",
    "match_hungarian",
    "match_top_one",
    "match_top_one_batched",
    "match_top_one_reference",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "nms",
    "nms_reference",
    "pair_quality",
]
