"""Multi-scale deformable attention sampling (Deformable-DETR), differentiable.

Shapes: N images, S = sum_l H_l * W_l flattened value tokens over L levels (level after level,
row-major within a level), M heads of D channels, Lq queries, P points per head and level.

For each query, head m, level l and point p, the location (x, y) in [0, 1] of level l (pixel
centres at ((j + 0.5) / W_l, (i + 0.5) / H_l)) is bilinearly sampled from that level's value map,
with neighbours outside the map counting as zero; the samples are summed with the attention
weights over levels and points:

    out[n, q, m] = sum_{l, p} A[n, q, m, l, p] * bilinear(V[n, :, m] at level l, loc[n, q, m, l, p])

A pixel coordinate is x * W_l - 0.5: this is `grid_sample` with `align_corners=False` and zero
padding on the grid 2 * loc - 1, the convention of the Deformable-DETR kernel.

`ms_deform_attn` runs a compiled kernel for the input's device when `assigndet._C` binds one as
`ms_deform_attn_<device type>` (a differentiable callable taking the same five tensors), and the
`grid_sample` implementation otherwise. The latter is exact on CPU and CUDA, so the fallback is
silent. `ms_deform_attn_reference` is a direct per-point version without `grid_sample`, kept as
a test oracle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _extension

__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def _check_inputs(
    fn: str,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> list[tuple[int, int, int]]:
    """Validate the arguments; return (start, H_l, W_l) of each level as Python ints."""
    if not isinstance(value, Tensor) or value.dim() != 4:
        raise ValueError(f"{fn}: value must be a [N, S, M, D] tensor, got {_shape(value)}")
    n, s, m, _ = value.shape
    if not isinstance(spatial_shapes, Tensor) or spatial_shapes.dim() != 2 or (
        spatial_shapes.shape[1] != 2
    ):
        raise ValueError(
            f"{fn}: spatial_shapes must be a [L, 2] tensor of (H_l, W_l), got "
            f"{_shape(spatial_shapes)}"
        )
    num_levels = spatial_shapes.shape[0]
    if not isinstance(level_start_index, Tensor) or level_start_index.shape != (num_levels,):
        raise ValueError(
            f"{fn}: level_start_index must be a [L] tensor with L = {num_levels}, got "
            f"{_shape(level_start_index)}"
        )
    if not isinstance(sampling_locations, Tensor) or sampling_locations.dim() != 6 or (
        sampling_locations.shape[0] != n
        or sampling_locations.shape[2] != m
        or sampling_locations.shape[3] != num_levels
        or sampling_locations.shape[5] != 2
    ):
        raise ValueError(
            f"{fn}: sampling_locations must be a [N, Lq, M, L, P, 2] tensor with N = {n}, "
            f"M = {m}, L = {num_levels}, got {_shape(sampling_locations)}"
        )
    if not isinstance(attention_weights, Tensor) or (
        attention_weights.shape != sampling_locations.shape[:5]
    ):
        raise ValueError(
            f"{fn}: attention_weights must be a [N, Lq, M, L, P] tensor of shape "
            f"{tuple(sampling_locations.shape[:5])}, got {_shape(attention_weights)}"
        )
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{fn}: {name} must be an integer tensor, got {t.dtype}")
    if not value.is_floating_point():
        raise ValueError(f"{fn}: value must be a floating tensor, got {value.dtype}")
    for name, t in (
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if t.dtype != value.dtype:
            raise ValueError(f"{fn}: {name} must have value's dtype {value.dtype}, got {t.dtype}")
    for name, t in (
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if t.device != value.device:
            raise ValueError(f"{fn}: {name} must be on {value.device} like value, got {t.device}")

    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(x) for x in level_start_index.tolist()]
    expected, total = [], 0
    for h, w in shapes:
        if h <= 0 or w <= 0:
            raise ValueError(f"{fn}: spatial_shapes must be positive (H_l, W_l), got {shapes}")
        expected.append(total)
        total += h * w
    if total != s:
        raise ValueError(
            f"{fn}: value has S = {s} tokens but spatial_shapes {shapes} sum to {total}"
        )
    if starts != expected:
        raise ValueError(
            f"{fn}: level_start_index must be the running sums {expected} of spatial_shapes "
            f"{shapes}, got {starts}"
        )
    return [(start, h, w) for start, (h, w) in zip(starts, shapes)]


def _compiled_kernel(device: torch.device) -> Callable[..., Tensor] | None:
    return getattr(_extension._C, f"ms_deform_attn_{device.type}", None)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention sampling (module docstring), differentiable in the
    three floating inputs.

    Args:
        value: Tensor[N, S, M, D] float, the per-head values of all levels, flattened.
        spatial_shapes: Tensor[L, 2] int64, (H_l, W_l) of each level.
        level_start_index: Tensor[L] int64, the offset of each level in S (running sums of
            H_l * W_l, starting at 0).
        sampling_locations: Tensor[N, Lq, M, L, P, 2], (x, y) normalised to [0, 1] of each
            level; points outside sample zeros.
        attention_weights: Tensor[N, Lq, M, L, P], typically a softmax over (L, P) per head.

    Returns:
        Tensor[N, Lq, M * D], the heads concatenated (head-major).
    """
    levels = _check_inputs(
        "ms_deform_attn",
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )
    kernel = _compiled_kernel(value.device)
    if kernel is not None:
        return kernel(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    n, _, m, d = value.shape
    lq, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    grids = 2.0 * sampling_locations - 1.0
    samples = []
    for l, (start, h, w) in enumerate(levels):
        # [N, H*W, M, D] -> [N*M, D, H, W]: one image per (image, head) pair.
        level_value = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid = grids[:, :, :, l].transpose(1, 2).reshape(n * m, lq, num_points, 2)
        samples.append(
            F.grid_sample(
                level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [N*M, D, Lq, P]
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, -1)
    out = (sampled * weights).sum(-1)  # [N*M, D, Lq]
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """`ms_deform_attn` written out per point: explicit bilinear weights of the four neighbouring
    pixels, gathered from the flattened map, zero outside it. Same arguments and result; slower.
    """
    levels = _check_inputs(
        "ms_deform_attn_reference",
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )
    n, _, m, d = value.shape
    lq, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    out = value.new_zeros(n, m, lq, num_points, d)
    for l, (start, h, w) in enumerate(levels):
        level_value = value[:, start : start + h * w].transpose(1, 2)  # [N, M, H*W, D]
        loc = sampling_locations[:, :, :, l].transpose(1, 2)  # [N, M, Lq, P, 2]
        px = loc[..., 0] * w - 0.5  # pixel coordinates, centres at integers
        py = loc[..., 1] * h - 0.5
        x0, y0 = torch.floor(px), torch.floor(py)
        fx, fy = px - x0, py - y0
        x0, y0 = x0.long(), y0.long()
        weight = attention_weights[:, :, :, l].transpose(1, 2)  # [N, M, Lq, P]
        for dx, dy, corner_weight in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            flat = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(n, m, lq * num_points)
            gathered = torch.gather(level_value, 2, flat[..., None].expand(-1, -1, -1, d))
            gathered = gathered.view(n, m, lq, num_points, d)
            scale = (corner_weight * inside * weight)[..., None]
            out = out + gathered * scale
    # Sum over points; [N, M, Lq, D] -> [N, Lq, M*D]
    return out.sum(3).permute(0, 2, 1, 3).reshape(n, lq, m * d)
