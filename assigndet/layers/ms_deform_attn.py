"""Multi-scale deformable attention module (Deformable-DETR), with the official parameter names
and initialisation, so that released checkpoints load as they are."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assigndet.ops import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned locations per head and level around its
    reference point (or box), sampled bilinearly from the flattened multi-level ``input_flatten``.

    Parameters (M = n_heads, L = n_levels, P = n_points, C = d_model): ``sampling_offsets``
    Linear C -> M*L*P*2, ``attention_weights`` Linear C -> M*L*P, ``value_proj`` and
    ``output_proj`` Linear C -> C.

    Initialisation: ``sampling_offsets`` weight 0 and bias (p + 1) * d_m for head m and point p
    at every level, with d_m the direction 2 * pi * m / M pushed out to the unit square (so the
    larger coordinate is +-1); ``attention_weights`` 0 (uniform attention over the L*P points);
    ``value_proj`` and ``output_proj`` Xavier-uniform with zero bias.

    Args:
        d_model: channels C of queries, values and output.
        n_levels: feature levels L (4 in Deformable-DETR, 5 in DETA).
        n_heads: attention heads M; C must be divisible by M.
        n_points: sampling points P per head and level.
    """

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4
    ) -> None:
        super().__init__()
        for name, v in (
            ("d_model", d_model),
            ("n_levels", n_levels),
            ("n_heads", n_heads),
            ("n_points", n_points),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MSDeformAttn: {name} must be an int >= 1, got {v!r}")
        if d_model % n_heads:
            raise ValueError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation (class docstring)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        direction = torch.stack([theta.cos(), theta.sin()], dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values  # [M, 2]
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        bias = direction[:, None, None, :] * scale[None, None, :, None]  # [M, 1, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: Tensor[N, Lq, C].
            reference_points: Tensor[N, Lq, L, 2] points (x, y) or Tensor[N, Lq, L, 4] boxes
                (cx, cy, w, h), normalised to [0, 1] of each (padded) level map. Offsets are in
                level-l pixels for points: loc = ref + offset / (W_l, H_l); for boxes they are
                fractions of the half box: loc = (cx, cy) + offset / P * (w, h) / 2.
            input_flatten: Tensor[N, S, C], all levels flattened level after level, row-major.
            input_spatial_shapes: Tensor[L, 2] int64, (H_l, W_l) of each level.
            input_level_start_index: Tensor[L] int64, the offset of each level in S.
            input_padding_mask: Tensor[N, S] bool, True at padded tokens (their values are zeroed),
                or None.

        Returns:
            Tensor[N, Lq, C].
        """
        if query.dim() != 3 or query.shape[2] != self.d_model:
            raise ValueError(
                f"MSDeformAttn: query must be a [N, Lq, {self.d_model}] tensor, got "
                f"{tuple(query.shape)}"
            )
        n, lq, _ = query.shape
        if input_flatten.dim() != 3 or (
            input_flatten.shape[0] != n or input_flatten.shape[2] != self.d_model
        ):
            raise ValueError(
                f"MSDeformAttn: input_flatten must be a [{n}, S, {self.d_model}] tensor, got "
                f"{tuple(input_flatten.shape)}"
            )
        s = input_flatten.shape[1]
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, lq, self.n_levels) or (
            reference_points.shape[3] not in (2, 4)
        ):
            raise ValueError(
                f"MSDeformAttn: reference_points must be a [{n}, {lq}, {self.n_levels}, 2 or 4] "
                f"tensor, got {tuple(reference_points.shape)}"
            )
        if input_spatial_shapes.shape != (self.n_levels, 2):
            raise ValueError(
                f"MSDeformAttn: input_spatial_shapes must be a [{self.n_levels}, 2] tensor, got "
                f"{tuple(input_spatial_shapes.shape)}"
            )
        if input_padding_mask is not None and (
            input_padding_mask.shape != (n, s) or input_padding_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"MSDeformAttn: input_padding_mask must be a [{n}, {s}] bool tensor, got "
                f"{tuple(input_padding_mask.shape)} {input_padding_mask.dtype}"
            )

        m, l, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, l, p, 2)
        weights = F.softmax(self.attention_weights(query).view(n, lq, m, l * p), dim=-1)
        weights = weights.view(n, lq, m, l, p)
        if reference_points.shape[-1] == 2:
            # (W_l, H_l): offsets are in pixels of their level.
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
                None, None, None, :, None, :
            ]
        else:
            centres = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centres + offsets / p * sizes * 0.5
        # Sampling runs in float32: under autocast the projections come out in half precision
        # while the locations (reference + offsets) must stay precise.
        out = ms_deform_attn(
            value.float(), input_spatial_shapes, input_level_start_index, locations.float(),
            weights.float(),
        )
        return self.output_proj(out.to(value.dtype))
