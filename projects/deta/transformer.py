"""DETA's two-stage deformable transformer: a deformable encoder over the flattened feature
levels, encoder proposals scored by the detection heads, query selection with NMS, and a
deformable decoder with iterative box refinement.

Tokens are flattened level by level (level 0 first), row-major within a level: S = sum H_l * W_l.
Boxes are normalised (cx, cy, w, h) relative to the valid (unpadded) area of the image. The heads
(``class_embed``, ``bbox_embed``: one per decoder layer plus one for the encoder proposals) are
owned by the detector and passed to ``forward``, so they appear once in the state dict.

``forward`` runs ``encode``, ``select_queries`` and ``decode`` in a row; they are public so that
each stage can be timed or inspected on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from assigndet.layers import MSDeformAttn

from .position_encoding import box_sine_encoding
from .query_selection import select_queries as select_query_indices

__all__ = [
    "DeformableTransformer",
    "DeformableTransformerDecoder",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerEncoder",
    "DeformableTransformerEncoderLayer",
    "encoder_anchor_logits",
    "inverse_sigmoid",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both x and 1 - x to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _level_shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def encoder_anchor_logits(
    padding_mask: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Inverse sigmoid of the fixed anchors of the encoder tokens; +inf for invalid tokens.

    The anchor of pixel (i, j) at level l is ((j + 0.5) / validW_l, (i + 0.5) / validH_l,
    0.05 * 2^l, 0.05 * 2^l), relative to the valid area. It is valid when the token is unpadded
    and all four coordinates lie in (0.01, 0.99). The anchors depend on the padding and the level
    shapes only, not on the features.

    Args:
        padding_mask: Tensor[B, S] bool, True at padded tokens (levels flattened row-major).
        spatial_shapes: Tensor[L, 2] (or a list) of (H_l, W_l), with S = sum H_l * W_l.
        dtype: floating dtype of the result.

    Returns:
        Tensor[B, S, 4] (cx, cy, w, h) logits; ``sigmoid`` of an invalid token's is (1, 1, 1, 1).
    """
    b = padding_mask.shape[0]
    device = padding_mask.device
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(_level_shapes(spatial_shapes)):
        level_mask = padding_mask[:, start : start + h * w].view(b, h, w)
        valid_h = (~level_mask[:, :, 0]).sum(1)[:, None, None]
        valid_w = (~level_mask[:, 0, :]).sum(1)[:, None, None]
        ys = torch.arange(h, dtype=dtype, device=device) + 0.5
        xs = torch.arange(w, dtype=dtype, device=device) + 0.5
        ys, xs = torch.meshgrid(ys, xs, indexing="ij")
        cx = xs[None] / valid_w
        cy = ys[None] / valid_h
        size = torch.full_like(cx, 0.05 * 2.0**lvl)
        proposals.append(torch.stack((cx, cy, size, size), dim=-1).view(b, h * w, 4))
        start += h * w
    proposals = torch.cat(proposals, dim=1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~padding_mask
    proposal_logits = torch.log(proposals / (1 - proposals))
    return proposal_logits.masked_fill(~valid[..., None], float("inf"))


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = norm1(x + MSDA(x + pos, values x)), then
    x = norm2(x + linear2(relu(linear1(x)))). No dropout."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 2048,
        n_levels: int = 5,
        n_heads: int = 8,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            src: Tensor[B, S, C] tokens.
            pos: Tensor[B, S, C] position (and level) embedding of the tokens.
            reference_points: Tensor[B, S, L, 2] of each token at each level (padded-map units).
            spatial_shapes: Tensor[L, 2] int64 (H_l, W_l).
            level_start_index: Tensor[L] int64.
            padding_mask: Tensor[B, S] bool, True at padded tokens, or None.

        Returns:
            Tensor[B, S, C].
        """
        attn = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableTransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention then ``norm2``, deformable cross-attention to the
    encoder memory then ``norm1``, FFN then ``norm3``. No dropout."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 2048,
        n_levels: int = 5,
        n_heads: int = 8,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tgt: Tensor[B, Q, C] content queries.
            query_pos: Tensor[B, Q, C] positional queries.
            reference_points: Tensor[B, Q, L, 4] reference boxes at each level (padded-map units).
            memory: Tensor[B, S, C] encoder output.
            spatial_shapes: Tensor[L, 2] int64 (H_l, W_l).
            level_start_index: Tensor[L] int64.
            padding_mask: Tensor[B, S] bool, True at padded tokens, or None.

        Returns:
            Tensor[B, Q, C].
        """
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        attn = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index,
            padding_mask,
        )
        tgt = self.norm1(tgt + attn)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


def _layer_stack(layer_type: type[nn.Module], num_layers: int, *args: int) -> nn.ModuleList:
    """``num_layers`` independent ``layer_type(*args)`` layers."""
    return nn.ModuleList(layer_type(*args) for _ in range(num_layers))


class DeformableTransformerEncoder(nn.Module):
    """``num_layers`` encoder layers; every token attends around its own pixel centre."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 2048,
        n_levels: int = 5,
        n_heads: int = 8,
        n_points: int = 4,
        num_layers: int = 6,
    ) -> None:
        super().__init__()
        self.layers = _layer_stack(
            DeformableTransformerEncoderLayer, num_layers, d_model, d_ffn, n_levels, n_heads,
            n_points,
        )
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(
        spatial_shapes: Tensor | Sequence[Sequence[int]],
        valid_ratios: Tensor,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Reference point of every token at every level.

        Pixel (i, j) of level l is at ((j + 0.5) / (W_l * rw_l), (i + 0.5) / (H_l * rh_l)) of the
        valid area; at level l' this is multiplied by (rw_l', rh_l') to be in units of the padded
        map, so that it lands on the same relative position of the valid area at every level.

        Args:
            spatial_shapes: Tensor[L, 2] (or a list) of (H_l, W_l).
            valid_ratios: Tensor[B, L, 2] (rw, rh): valid fraction of each level's width and
                height.
            device: where to build the points (default: that of ``valid_ratios``).

        Returns:
            Tensor[B, S, L, 2] (x, y).
        """
        device = valid_ratios.device if device is None else device
        valid_ratios = valid_ratios.to(device)
        points = []
        for lvl, (h, w) in enumerate(_level_shapes(spatial_shapes)):
            ys = torch.arange(h, dtype=valid_ratios.dtype, device=device) + 0.5
            xs = torch.arange(w, dtype=valid_ratios.dtype, device=device) + 0.5
            ys, xs = torch.meshgrid(ys, xs, indexing="ij")
            ref_y = ys.reshape(1, -1) / (valid_ratios[:, lvl, 1:2] * h)
            ref_x = xs.reshape(1, -1) / (valid_ratios[:, lvl, 0:1] * w)
            points.append(torch.stack((ref_x, ref_y), dim=-1))
        return torch.cat(points, dim=1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            src: Tensor[B, S, C] flattened input features.
            spatial_shapes: Tensor[L, 2] int64 (H_l, W_l).
            level_start_index: Tensor[L] int64.
            valid_ratios: Tensor[B, L, 2] (rw, rh).
            pos: Tensor[B, S, C] position plus level embedding.
            padding_mask: Tensor[B, S] bool, True at padded tokens, or None.

        Returns:
            Tensor[B, S, C], the memory.
        """
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, src.device)
        reference_points = reference_points.to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableTransformerDecoder(nn.Module):
    """``num_layers`` decoder layers with iterative box refinement.

    Layer t attends around reference boxes r_t (r_0 the selected proposals); then
    r_{t+1} = sigmoid(bbox_embed[t](h_t) + inverse_sigmoid(r_t)), detached, so that no gradient
    flows from a layer into the boxes of the layers before it.
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 2048,
        n_levels: int = 5,
        n_heads: int = 8,
        n_points: int = 4,
        num_layers: int = 6,
    ) -> None:
        super().__init__()
        self.layers = _layer_stack(
            DeformableTransformerDecoderLayer, num_layers, d_model, d_ffn, n_levels, n_heads,
            n_points,
        )
        self.num_layers = num_layers

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Tensor,
        padding_mask: Tensor | None,
        bbox_embed: nn.ModuleList,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            tgt: Tensor[B, Q, C] content queries.
            reference_points: Tensor[B, Q, 4] initial boxes (cx, cy, w, h) of the valid area.
            memory: Tensor[B, S, C] encoder output (the values of the cross-attention).
            spatial_shapes: Tensor[L, 2] int64 (H_l, W_l).
            level_start_index: Tensor[L] int64.
            valid_ratios: Tensor[B, L, 2] (rw, rh); the boxes are scaled by (rw, rh, rw, rh) of
                each level to be in units of the padded map.
            query_pos: Tensor[B, Q, C] positional queries (the same for every layer).
            padding_mask: Tensor[B, S] bool, True at padded tokens, or None.
            bbox_embed: box heads; head t gives the refinement after layer t (at least
                num_layers - 1 of them are used).

        Returns:
            hidden_states: Tensor[num_layers, B, Q, C], the output of each layer.
            references: Tensor[num_layers, B, Q, 4], the detached reference boxes that each layer
                took as input (references[0] = reference_points).
        """
        if len(bbox_embed) < self.num_layers - 1:
            raise ValueError(
                f"DeformableTransformerDecoder: bbox_embed must hold at least num_layers - 1 = "
                f"{self.num_layers - 1} heads, got {len(bbox_embed)}"
            )
        ratio_scale = torch.cat((valid_ratios, valid_ratios), dim=-1)[:, None].to(tgt.dtype)
        reference_points = reference_points.detach()
        output = tgt
        hidden_states, references = [], []
        for t, layer in enumerate(self.layers):
            references.append(reference_points)
            output = layer(
                output, query_pos, reference_points[:, :, None] * ratio_scale, memory,
                spatial_shapes, level_start_index, padding_mask,
            )
            hidden_states.append(output)
            if t + 1 < self.num_layers:  # the last refinement is nobody's input
                refined = bbox_embed[t](output) + inverse_sigmoid(reference_points)
                reference_points = refined.sigmoid().detach()
        return torch.stack(hidden_states), torch.stack(references)


class DeformableTransformer(nn.Module):
    """DETA's two-stage deformable transformer.

    Stages (each a public method; ``forward`` runs the three):
    - ``encode``: flatten the levels, add the level embedding to the position encoding, run the
      encoder;
    - ``select_queries``: encoder proposals (fixed anchors refined by the proposal heads), the
      choice of ``num_queries`` of them (NMS-based, or plain top-k without
      ``assign_first_stage``), and the query initialisation from the chosen, detached proposals;
    - ``decode``: the decoder with iterative refinement.

    Args:
        d_model: channels C.
        n_heads: attention heads of every attention.
        num_encoder_layers, num_decoder_layers: layer counts.
        d_ffn: hidden width of the FFNs.
        num_feature_levels: levels L.
        enc_n_points, dec_n_points: deformable sampling points per head and level.
        num_queries: decoder queries Q.
        assign_first_stage: select the queries with per-level NMS and quota (DETA); False takes
            the plain top-Q by objectness (the improved Deformable-DETR baseline).
        topk_per_level: candidates per level before the selection NMS.
        nms_threshold: IoU threshold of the selection NMS.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        d_ffn: int = 2048,
        num_feature_levels: int = 5,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        num_queries: int = 900,
        assign_first_stage: bool = True,
        topk_per_level: int = 1000,
        nms_threshold: float = 0.9,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("num_encoder_layers", num_encoder_layers),
            ("num_decoder_layers", num_decoder_layers),
            ("d_ffn", d_ffn),
            ("num_feature_levels", num_feature_levels),
            ("enc_n_points", enc_n_points),
            ("dec_n_points", dec_n_points),
            ("num_queries", num_queries),
            ("topk_per_level", topk_per_level),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"DeformableTransformer: {name} must be an int >= 1, got {value!r}"
                )
        if d_model % 4:
            # The box encoding gives d_model / 2 interleaved (sin, cos) channels per coordinate.
            raise ValueError(
                f"DeformableTransformer: d_model must be divisible by 4, got {d_model}"
            )
        self.d_model = d_model
        self.num_feature_levels = num_feature_levels
        self.num_queries = num_queries
        self.assign_first_stage = assign_first_stage
        self.topk_per_level = topk_per_level
        self.nms_threshold = nms_threshold

        self.encoder = DeformableTransformerEncoder(
            d_model, d_ffn, num_feature_levels, n_heads, enc_n_points, num_encoder_layers
        )
        self.decoder = DeformableTransformerDecoder(
            d_model, d_ffn, num_feature_levels, n_heads, dec_n_points, num_decoder_layers
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
        self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        self.pix_trans = nn.Linear(d_model, d_model)
        self.pix_trans_norm = nn.LayerNorm(d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform on every parameter of >= 2 dims, then the deformable attentions' own
        initialisation, and ``level_embed`` ~ N(0, 1); 1-d parameters keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    # ------------------------------------------------------------------ stages

    def encode(
        self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos_embeds: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """Run the encoder on the flattened levels.

        Args:
            srcs: L tensors [B, C, H_l, W_l], the projected features.
            masks: L tensors [B, H_l, W_l] bool, True at padded pixels.
            pos_embeds: L tensors [B, C, H_l, W_l], the position encodings.

        Returns:
            dict with ``memory`` [B, S, C], ``padding_mask`` [B, S] bool, ``spatial_shapes``
            [L, 2] int64, ``level_start_index`` [L] int64, ``valid_ratios`` [B, L, 2] (rw, rh).
        """
        self._check_levels(srcs, masks, pos_embeds)
        device = srcs[0].device
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        padding_mask = torch.cat([mask.flatten(1) for mask in masks], dim=1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[lvl]
                for lvl, pos in enumerate(pos_embeds)
            ],
            dim=1,
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.int64, device=device)
        sizes = [h * w for h, w in shapes]
        level_start_index = torch.as_tensor(
            [sum(sizes[:lvl]) for lvl in range(len(sizes))], dtype=torch.int64, device=device
        )
        valid_ratios = torch.stack([self._valid_ratio(mask) for mask in masks], dim=1)
        memory = self.encoder(
            src_flatten, spatial_shapes, level_start_index, valid_ratios, pos_flatten, padding_mask
        )
        return {
            "memory": memory,
            "padding_mask": padding_mask,
            "spatial_shapes": spatial_shapes,
            "level_start_index": level_start_index,
            "valid_ratios": valid_ratios,
        }

    def select_queries(
        self, encoded: dict[str, Tensor], class_embed: nn.ModuleList, bbox_embed: nn.ModuleList
    ) -> dict:
        """Encoder proposals, the choice of the queries and their initialisation.

        The proposal heads are ``class_embed[num_decoder_layers]`` and
        ``bbox_embed[num_decoder_layers]``; channel 0 of the proposal logits scores the tokens.
        The chosen box logits u are detached: ``init_reference = sigmoid(u)``; the sine encoding
        of sigmoid(u) through ``pos_trans`` and ``pos_trans_norm`` gives ``query_pos`` (first C
        channels) and ``tgt`` (last C), and ``tgt`` gets
        ``pix_trans_norm(pix_trans(output_memory))`` of the chosen tokens, detached.

        Args:
            encoded: the output of ``encode``.
            class_embed: classification heads, one per decoder layer and one for the proposals.
            bbox_embed: box heads, likewise.

        Returns:
            dict with ``tgt`` and ``query_pos`` [B, Q, C], ``init_reference`` [B, Q, 4],
            ``query_indices`` [B, Q] int64 (chosen tokens, by decreasing score), and
            ``enc_outputs`` = {``pred_logits`` [B, S, K], ``pred_boxes`` [B, S, 4] (cx, cy, w, h),
            ``anchors`` [B, S, 4] (cx, cy, w, h); invalid anchors are the unit box centred at
            (1, 1)}.
        """
        head = self.decoder.num_layers
        if len(class_embed) <= head or len(bbox_embed) <= head:
            raise ValueError(
                f"DeformableTransformer: class_embed and bbox_embed need num_decoder_layers + 1 = "
                f"{head + 1} heads (the last for the encoder proposals), got {len(class_embed)} "
                f"and {len(bbox_embed)}"
            )
        memory = encoded["memory"]
        b, s, c = memory.shape
        if s < self.num_queries:
            raise ValueError(
                f"DeformableTransformer: num_queries ({self.num_queries}) exceeds the number of "
                f"encoder tokens S = {s} of these feature maps"
            )
        spatial_shapes = encoded["spatial_shapes"]
        output_memory, proposal_logits = self.gen_encoder_output_proposals(
            memory, encoded["padding_mask"], spatial_shapes
        )
        enc_logits = class_embed[head](output_memory)
        enc_box_logits = bbox_embed[head](output_memory) + proposal_logits

        scores = enc_logits[..., 0].detach()
        if self.assign_first_stage:
            boxes = box_convert(enc_box_logits.detach().float().sigmoid(), "cxcywh", "xyxy")
            boxes = boxes.clamp(0, 1)
            sizes = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).to(memory.device)
            level_ids = torch.repeat_interleave(
                torch.arange(len(sizes), device=memory.device), sizes
            )
            query_indices = torch.stack(
                [
                    select_query_indices(
                        scores[i], boxes[i], level_ids, self.num_queries, len(sizes),
                        self.topk_per_level, self.nms_threshold,
                    )
                    for i in range(b)
                ]
            )
        else:
            query_indices = torch.topk(scores, self.num_queries, dim=1).indices

        box_logits = torch.gather(
            enc_box_logits, 1, query_indices[..., None].expand(-1, -1, 4)
        ).detach()
        init_reference = box_logits.sigmoid()
        pos = self.pos_trans_norm(
            self.pos_trans(box_sine_encoding(init_reference, self.d_model // 2).to(memory.dtype))
        )
        query_pos, tgt = pos.split(self.d_model, dim=-1)
        features = torch.gather(
            output_memory, 1, query_indices[..., None].expand(-1, -1, c)
        ).detach()
        tgt = tgt + self.pix_trans_norm(self.pix_trans(features))
        return {
            "tgt": tgt,
            "query_pos": query_pos,
            "init_reference": init_reference,
            "query_indices": query_indices,
            "enc_outputs": {
                "pred_logits": enc_logits,
                "pred_boxes": enc_box_logits.sigmoid(),
                "anchors": proposal_logits.sigmoid(),
            },
        }

    def decode(
        self, encoded: dict[str, Tensor], queries: dict, bbox_embed: nn.ModuleList
    ) -> dict[str, Tensor]:
        """Run the decoder from the selected queries.

        Args:
            encoded: the output of ``encode``.
            queries: the output of ``select_queries``.
            bbox_embed: box heads (``bbox_embed[t]`` refines the boxes after layer t).

        Returns:
            dict with ``hidden_states`` [num_decoder_layers, B, Q, C] and ``references``
            [num_decoder_layers, B, Q, 4] (the detached input boxes of each layer).
        """
        hidden_states, references = self.decoder(
            queries["tgt"],
            queries["init_reference"],
            encoded["memory"],
            encoded["spatial_shapes"],
            encoded["level_start_index"],
            encoded["valid_ratios"],
            queries["query_pos"],
            encoded["padding_mask"],
            bbox_embed,
        )
        return {"hidden_states": hidden_states, "references": references}

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos_embeds: Sequence[Tensor],
        class_embed: nn.ModuleList,
        bbox_embed: nn.ModuleList,
    ) -> dict:
        """
        Args:
            srcs: L tensors [B, C, H_l, W_l], the projected features.
            masks: L tensors [B, H_l, W_l] bool, True at padded pixels.
            pos_embeds: L tensors [B, C, H_l, W_l], the position encodings.
            class_embed: num_decoder_layers + 1 classification heads C -> K (the last scores the
                encoder proposals; its channel 0 is the objectness used to select queries).
            bbox_embed: num_decoder_layers + 1 box heads C -> 4 (box logit deltas).

        Returns:
            dict with ``hidden_states`` [num_decoder_layers, B, Q, C], ``references``
            [num_decoder_layers, B, Q, 4] (the input boxes of each decoder layer, detached),
            ``init_reference`` [B, Q, 4] (= references[0]), ``query_indices`` [B, Q],
            ``enc_outputs`` (see ``select_queries``), and ``memory`` [B, S, C],
            ``padding_mask`` [B, S], ``spatial_shapes`` [L, 2], ``level_start_index`` [L],
            ``valid_ratios`` [B, L, 2].
        """
        encoded = self.encode(srcs, masks, pos_embeds)
        queries = self.select_queries(encoded, class_embed, bbox_embed)
        decoded = self.decode(encoded, queries, bbox_embed)
        return {
            **decoded,
            "init_reference": queries["init_reference"],
            "query_indices": queries["query_indices"],
            "enc_outputs": queries["enc_outputs"],
            **encoded,
        }

    # ------------------------------------------------------------------ pieces

    def gen_encoder_output_proposals(
        self,
        memory: Tensor,
        padding_mask: Tensor,
        spatial_shapes: Tensor | Sequence[Sequence[int]],
    ) -> tuple[Tensor, Tensor]:
        """Fixed anchors of the encoder tokens and the memory that the proposal heads read.

        The anchors are ``encoder_anchor_logits``. Invalid tokens get +inf logits and a zeroed
        memory before ``enc_output`` and ``enc_output_norm``.

        Args:
            memory: Tensor[B, S, C] encoder output.
            padding_mask: Tensor[B, S] bool, True at padded tokens.
            spatial_shapes: Tensor[L, 2] (or a list) of (H_l, W_l).

        Returns:
            output_memory: Tensor[B, S, C].
            proposal_logits: Tensor[B, S, 4], inverse sigmoid of the anchors (+inf if invalid), in
                float32 or the wider dtype of memory.
        """
        dtype = torch.promote_types(memory.dtype, torch.float32)
        proposal_logits = encoder_anchor_logits(padding_mask, spatial_shapes, dtype)
        valid = torch.isfinite(proposal_logits).all(-1)
        output_memory = memory.masked_fill(~valid[..., None], 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, proposal_logits

    @staticmethod
    def _valid_ratio(mask: Tensor) -> Tensor:
        """Tensor[B, H, W] bool -> Tensor[B, 2] (valid columns / W, valid rows / H)."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float() / h
        valid_w = (~mask[:, 0, :]).sum(1).float() / w
        return torch.stack((valid_w, valid_h), dim=-1)

    def _check_levels(
        self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos_embeds: Sequence[Tensor]
    ) -> None:
        levels = self.num_feature_levels
        for name, seq in (("srcs", srcs), ("masks", masks), ("pos_embeds", pos_embeds)):
            if len(seq) != levels:
                raise ValueError(
                    f"DeformableTransformer: {name} must hold num_feature_levels = {levels} "
                    f"tensors, got {len(seq)}"
                )
        batch = srcs[0].shape[0] if srcs[0].dim() == 4 else None
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            if src.dim() != 4 or src.shape[:2] != (batch, self.d_model):
                raise ValueError(
                    f"DeformableTransformer: srcs[{lvl}] must be a [B, {self.d_model}, H, W] "
                    f"tensor with B = {batch}, got {tuple(src.shape)}"
                )
            h, w = src.shape[-2:]
            if mask.shape != (batch, h, w) or mask.dtype != torch.bool:
                raise ValueError(
                    f"DeformableTransformer: masks[{lvl}] must be a [{batch}, {h}, {w}] bool "
                    f"tensor, got {tuple(mask.shape)} {mask.dtype}"
                )
            if pos.shape != src.shape:
                raise ValueError(
                    f"DeformableTransformer: pos_embeds[{lvl}] must have the shape of srcs[{lvl}] "
                    f"{tuple(src.shape)}, got {tuple(pos.shape)}"
                )
