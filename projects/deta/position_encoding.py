"""Sine encodings of positions (Deformable-DETR): of every pixel of a padded feature map, and of
the proposal boxes that initialise DETA's decoder queries.

Both map a normalised coordinate v to ``num_pos_feats`` interleaved channels
``(sin(v * w_0), cos(v * w_0), sin(v * w_1), cos(v * w_1), ...)`` with
``w_j = temperature ** (-2j / num_pos_feats)``, j = 0 .. num_pos_feats / 2 - 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["box_sine_encoding", "sine_position_encoding"]


def _check_num_pos_feats(fn: str, num_pos_feats: int) -> None:
    if (
        isinstance(num_pos_feats, bool)
        or not isinstance(num_pos_feats, int)
        or num_pos_feats < 2
        or num_pos_feats % 2
    ):
        raise ValueError(f"{fn}: num_pos_feats must be an even int >= 2, got {num_pos_feats!r}")


def _sine_channels(coords: Tensor, num_pos_feats: int, temperature: float) -> Tensor:
    """``Tensor[...]`` of angles -> ``Tensor[..., num_pos_feats]`` of interleaved (sin, cos)."""
    exponent = torch.arange(0, num_pos_feats, 2, dtype=coords.dtype, device=coords.device)
    # Division by temperature ** (2j / n) rather than multiplication by its inverse, as the
    # reference implementation, so the channels agree with it to the last bit.
    angles = coords[..., None] / temperature ** (exponent / num_pos_feats)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def sine_position_encoding(
    mask: Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> Tensor:
    """Normalised 2-d sine encoding of the pixels of a padded feature map.

    With y_c the running count of unpadded pixels down a column (1-based, so it stays constant over
    the padding at the bottom) and Y that column's unpadded total,
    ``y = (y_c - 0.5) / (Y + 1e-6) * scale``; x likewise along a row. The channels are
    ``[y part | x part]``, each of ``num_pos_feats`` interleaved (sin, cos) channels.

    Args:
        mask: Tensor[B, H, W] bool, True at padded pixels.
        num_pos_feats: channels per axis (even).
        temperature: base of the frequencies.
        scale: range of the normalised coordinates (2 pi).

    Returns:
        Tensor[B, 2 * num_pos_feats, H, W] float32.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        desc = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask)
        raise ValueError(
            f"sine_position_encoding: mask must be a [B, H, W] bool tensor, got {desc}"
        )
    _check_num_pos_feats("sine_position_encoding", num_pos_feats)
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
    x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
    pos_y = _sine_channels(y, num_pos_feats, temperature)
    pos_x = _sine_channels(x, num_pos_feats, temperature)
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


def box_sine_encoding(
    boxes: Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> Tensor:
    """Sine encoding of normalised boxes: each coordinate, times ``scale``, gets
    ``num_pos_feats`` interleaved (sin, cos) channels, concatenated in the order cx, cy, w, h.

    Args:
        boxes: Tensor[B, Q, 4] (cx, cy, w, h) in [0, 1].
        num_pos_feats: channels per coordinate (even).
        temperature: base of the frequencies.
        scale: factor applied to the coordinates (2 pi).

    Returns:
        Tensor[B, Q, 4 * num_pos_feats], float32 or wider (the dtype of boxes if it is wider).
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 4:
        desc = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes)
        raise ValueError(f"box_sine_encoding: boxes must be a [B, Q, 4] tensor, got {desc}")
    if not boxes.is_floating_point():
        raise ValueError(f"box_sine_encoding: boxes must be a floating tensor, got {boxes.dtype}")
    _check_num_pos_feats("box_sine_encoding", num_pos_feats)
    coords = boxes.to(torch.promote_types(boxes.dtype, torch.float32)) * scale
    return _sine_channels(coords, num_pos_feats, temperature).flatten(-2)
