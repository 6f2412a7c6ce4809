"""DETA's two-stage deformable transformer on a tiny configuration: shapes, parameter names,
initialisation, proposals, query initialisation, gradient stops and padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from assigndet.layers import MSDeformAttn
from assigndet.projects.deta.position_encoding import box_sine_encoding, sine_position_encoding
from assigndet.projects.deta.query_selection import select_queries
from assigndet.projects.deta.transformer import (
    DeformableTransformer,
    DeformableTransformerDecoderLayer,
    DeformableTransformerEncoder,
    inverse_sigmoid,
)

D_MODEL, N_HEADS, LEVELS, LAYERS, QUERIES, D_FFN, CLASSES = 32, 2, 2, 2, 10, 64, 3
SHAPES = [(8, 8), (4, 4)]  # S = 80 tokens


class MLP(nn.Module):
    """The box head: C -> C -> C -> 4 with ReLU between."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


def build(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    args = dict(
        d_model=D_MODEL, n_heads=N_HEADS, num_encoder_layers=LAYERS, num_decoder_layers=LAYERS,
        d_ffn=D_FFN, num_feature_levels=LEVELS, enc_n_points=2, dec_n_points=2,
        num_queries=QUERIES,
    )
    transformer = DeformableTransformer(**{**args, **kwargs})
    class_embed = nn.ModuleList(nn.Linear(D_MODEL, CLASSES) for _ in range(LAYERS + 1))
    bbox_embed = nn.ModuleList(MLP(D_MODEL) for _ in range(LAYERS + 1))
    return transformer, class_embed, bbox_embed


def inputs(seed: int = 1):
    """Two images; the second is valid on 6 x 5 pixels of level 0 and 3 x 3 of level 1."""
    g = torch.Generator().manual_seed(seed)
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in SHAPES]
    masks[0][1, 6:] = True
    masks[0][1, :, 5:] = True
    masks[1][1, 3:] = True
    masks[1][1, :, 3:] = True
    srcs = [torch.randn(2, D_MODEL, h, w, generator=g) for h, w in SHAPES]
    pos = [sine_position_encoding(m, D_MODEL // 2) for m in masks]
    return srcs, masks, pos


def expected_state_dict_keys(enc_layers: int, dec_layers: int) -> set[str]:
    msda = ["sampling_offsets", "attention_weights", "value_proj", "output_proj"]
    wb = ("weight", "bias")
    keys = {"level_embed"}
    for n in range(enc_layers):
        p = f"encoder.layers.{n}."
        keys |= {f"{p}self_attn.{m}.{x}" for m in msda for x in wb}
        keys |= {f"{p}{m}.{x}" for m in ("norm1", "linear1", "linear2", "norm2") for x in wb}
    for n in range(dec_layers):
        p = f"decoder.layers.{n}."
        keys |= {f"{p}cross_attn.{m}.{x}" for m in msda for x in wb}
        keys |= {
            f"{p}self_attn.in_proj_weight",
            f"{p}self_attn.in_proj_bias",
            f"{p}self_attn.out_proj.weight",
            f"{p}self_attn.out_proj.bias",
        }
        keys |= {
            f"{p}{m}.{x}" for m in ("norm1", "norm2", "linear1", "linear2", "norm3") for x in wb
        }
    for m in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm", "pix_trans",
              "pix_trans_norm"):
        keys |= {f"{m}.{x}" for x in wb}
    return keys


def test_output_shapes():
    transformer, class_embed, bbox_embed = build()
    out = transformer(*inputs(), class_embed, bbox_embed)
    b, s = 2, 80
    assert out["hidden_states"].shape == (LAYERS, b, QUERIES, D_MODEL)
    assert out["references"].shape == (LAYERS, b, QUERIES, 4)
    assert out["init_reference"].shape == (b, QUERIES, 4)
    assert torch.equal(out["references"][0], out["init_reference"])
    assert out["query_indices"].shape == (b, QUERIES)
    assert out["query_indices"].dtype == torch.int64
    enc = out["enc_outputs"]
    assert enc["pred_logits"].shape == (b, s, CLASSES)
    assert enc["pred_boxes"].shape == (b, s, 4)
    assert enc["anchors"].shape == (b, s, 4)
    assert out["memory"].shape == (b, s, D_MODEL)
    assert out["padding_mask"].shape == (b, s)
    assert out["spatial_shapes"].tolist() == [[8, 8], [4, 4]]
    assert out["spatial_shapes"].dtype == torch.int64
    assert out["level_start_index"].tolist() == [0, 64]
    # Image 1: level 0 has 5 of 8 columns and 6 of 8 rows valid, level 1 3 of 4 of each.
    torch.testing.assert_close(out["valid_ratios"][1], torch.tensor([[5 / 8, 6 / 8], [0.75, 0.75]]))
    torch.testing.assert_close(out["valid_ratios"][0], torch.ones(2, 2))


def test_state_dict_keys_follow_the_official_names():
    transformer, _, _ = build()
    assert set(transformer.state_dict()) == expected_state_dict_keys(LAYERS, LAYERS)
    shapes = {k: tuple(v.shape) for k, v in transformer.state_dict().items()}
    assert shapes["level_embed"] == (LEVELS, D_MODEL)
    assert shapes["pos_trans.weight"] == (2 * D_MODEL, 2 * D_MODEL)
    assert shapes["decoder.layers.0.self_attn.in_proj_weight"] == (3 * D_MODEL, D_MODEL)
    assert shapes["encoder.layers.1.linear1.weight"] == (D_FFN, D_MODEL)
    # 3 levels, 4 encoder and 1 decoder layers give other counts of the same names.
    other, _, _ = build(num_feature_levels=3, num_encoder_layers=4, num_decoder_layers=1)
    assert set(other.state_dict()) == expected_state_dict_keys(4, 1)


def test_initialisation():
    transformer, _, _ = build()
    for m in transformer.modules():
        if isinstance(m, MSDeformAttn):  # re-initialised after the Xavier pass
            assert torch.all(m.sampling_offsets.weight == 0)
            assert torch.all(m.attention_weights.weight == 0)
            assert torch.all(m.attention_weights.bias == 0)
            assert torch.all(m.value_proj.bias == 0)
    # Xavier-uniform: within sqrt(6 / (fan_in + fan_out)).
    for name in ("pos_trans", "pix_trans", "enc_output"):
        w = getattr(transformer, name).weight
        bound = math.sqrt(6 / sum(w.shape))
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound
        assert not torch.all(getattr(transformer, name).bias == 0)  # 1-d: PyTorch's default
    w = transformer.encoder.layers[0].linear1.weight
    assert w.abs().max() <= math.sqrt(6 / sum(w.shape))
    # level_embed ~ N(0, 1): far outside its Xavier bound sqrt(6 / 34) = 0.42.
    assert transformer.level_embed.abs().max() > 1.0


def test_gen_encoder_output_proposals_anchors_and_validity():
    transformer, _, _ = build()
    # Six levels: 2 x 60, 1 x 30 and four 1 x 1 maps; anchor sizes 0.05 * 2^l (1.6 at level 5).
    shapes = [(2, 60), (1, 30), (1, 1), (1, 1), (1, 1), (1, 1)]
    s = 120 + 30 + 4
    memory = torch.randn(2, s, D_MODEL)
    padding_mask = torch.zeros(2, s, dtype=torch.bool)
    level0 = padding_mask[1, :120].view(2, 60)
    level0[:, 40:] = True  # image 1: 40 valid columns at level 0
    padding_mask[1, 120 + 20 : 150] = True  # and 20 at level 1
    output_memory, logits = transformer.gen_encoder_output_proposals(memory, padding_mask, shapes)
    anchors = logits.sigmoid()
    assert logits.shape == (2, s, 4)

    def expect(image, token, box):
        torch.testing.assert_close(anchors[image, token], torch.tensor(box), atol=1e-6, rtol=0)

    expect(0, 1, [1.5 / 60, 0.25, 0.05, 0.05])  # level 0, row 0, column 1
    expect(0, 60 + 58, [58.5 / 60, 0.75, 0.05, 0.05])  # row 1, column 58
    expect(1, 60 + 39, [39.5 / 40, 0.75, 0.05, 0.05])  # normalised to the 40 valid columns
    expect(0, 120 + 29, [29.5 / 30, 0.5, 0.1, 0.1])
    expect(1, 120 + 19, [19.5 / 20, 0.5, 0.1, 0.1])
    for lvl, size in ((2, 0.2), (3, 0.4), (4, 0.8)):
        expect(0, 150 + lvl - 2, [0.5, 0.5, size, size])

    invalid = torch.zeros(2, s, dtype=torch.bool)
    invalid[:, 150 + 3] = True  # level 5: size 1.6
    invalid[0, [0, 59, 60, 119]] = True  # cx = 0.5 / 60 < 0.01 and 59.5 / 60 > 0.99
    invalid[1] |= padding_mask[1]
    assert torch.all(logits[invalid] == float("inf"))
    assert torch.all(anchors[invalid] == 1.0)  # the unit box centred at (1, 1)
    assert torch.isfinite(logits[~invalid]).all()
    # Invalid tokens read a zeroed memory.
    zero_row = transformer.enc_output_norm(transformer.enc_output(torch.zeros(D_MODEL)))
    torch.testing.assert_close(output_memory[invalid], zero_row.expand(int(invalid.sum()), -1))
    valid_rows = transformer.enc_output_norm(transformer.enc_output(memory[~invalid]))
    torch.testing.assert_close(output_memory[~invalid], valid_rows)


def test_query_selection_and_initialisation():
    transformer, class_embed, bbox_embed = build()
    encoded = transformer.encode(*inputs())
    queries = transformer.select_queries(encoded, class_embed, bbox_embed)
    enc = queries["enc_outputs"]
    output_memory, proposals = transformer.gen_encoder_output_proposals(
        encoded["memory"], encoded["padding_mask"], encoded["spatial_shapes"]
    )
    torch.testing.assert_close(enc["anchors"], proposals.sigmoid())
    torch.testing.assert_close(enc["pred_logits"], class_embed[LAYERS](output_memory))
    box_logits = bbox_embed[LAYERS](output_memory) + proposals
    torch.testing.assert_close(enc["pred_boxes"], box_logits.sigmoid())
    level_ids = torch.tensor([0] * 64 + [1] * 16)
    for i in range(2):
        xyxy = torch.cat(
            (enc["pred_boxes"][i, :, :2] - enc["pred_boxes"][i, :, 2:] / 2,
             enc["pred_boxes"][i, :, :2] + enc["pred_boxes"][i, :, 2:] / 2), dim=-1
        ).clamp(0, 1)
        expected = select_queries(
            enc["pred_logits"][i, :, 0], xyxy, level_ids, QUERIES, LEVELS
        )
        assert torch.equal(queries["query_indices"][i], expected)
        idx = expected
        torch.testing.assert_close(queries["init_reference"][i], box_logits[i, idx].sigmoid())
        pos = transformer.pos_trans_norm(
            transformer.pos_trans(box_sine_encoding(box_logits[i, idx][None].sigmoid(), 16))
        )[0]
        torch.testing.assert_close(queries["query_pos"][i], pos[:, :D_MODEL])
        pix = transformer.pix_trans_norm(transformer.pix_trans(output_memory[i, idx]))
        torch.testing.assert_close(queries["tgt"][i], pos[:, D_MODEL:] + pix)


def test_plain_top_k_without_assign_first_stage():
    transformer, class_embed, bbox_embed = build(assign_first_stage=False)
    out = transformer(*inputs(), class_embed, bbox_embed)
    logits = out["enc_outputs"]["pred_logits"][..., 0]
    assert torch.equal(out["query_indices"], torch.topk(logits, QUERIES, dim=1).indices)


def test_gradient_stops():
    transformer, class_embed, bbox_embed = build()
    out = transformer(*inputs(), class_embed, bbox_embed)
    hidden, refs = out["hidden_states"], out["references"]
    assert not refs.requires_grad and not out["init_reference"].requires_grad
    assert hidden.requires_grad

    # Layer 0's box output keeps its gradient and has the value of layer 1's reference.
    box0 = (bbox_embed[0](hidden[0]) + inverse_sigmoid(refs[0])).sigmoid()
    torch.testing.assert_close(box0, refs[1])
    grads = torch.autograd.grad(box0.sum(), list(bbox_embed[0].parameters()), retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

    def unused(output, params):
        grads = torch.autograd.grad(output.sum(), params, retain_graph=True, allow_unused=True)
        return all(g is None for g in grads)

    # The refined boxes reach the next layer detached ...
    assert unused(hidden[1], list(bbox_embed[0].parameters()))
    # ... and the decoder sees neither the proposals' gradient (boxes, pix_trans input) nor the
    # selection's: nothing in it depends on the proposal heads or enc_output.
    first_stage = [
        *bbox_embed[LAYERS].parameters(), *class_embed[LAYERS].parameters(),
        *transformer.enc_output.parameters(), *transformer.enc_output_norm.parameters(),
    ]
    assert unused(hidden, first_stage)
    # The encoder outputs do depend on them, and the decoder on the encoder (raw memory).
    enc_boxes = out["enc_outputs"]["pred_boxes"]
    grads = torch.autograd.grad(enc_boxes.sum(), list(bbox_embed[LAYERS].parameters()))
    assert all(g is not None for g in grads)
    assert not unused(hidden, [transformer.encoder.layers[0].linear1.weight])


def test_decoder_cross_attention_inputs():
    transformer, class_embed, bbox_embed = build()
    seen = []
    hooks = [
        layer.cross_attn.register_forward_pre_hook(lambda m, args: seen.append(args))
        for layer in transformer.decoder.layers
    ]
    out = transformer(*inputs(), class_embed, bbox_embed)
    for h in hooks:
        h.remove()
    ratios = out["valid_ratios"]
    scale = torch.cat((ratios, ratios), dim=-1)[:, None]  # (rw, rh, rw, rh) per level
    for t, args in enumerate(seen):
        torch.testing.assert_close(args[1], out["references"][t][:, :, None] * scale)
        assert args[2] is out["memory"]  # the raw encoder memory
        assert args[5] is out["padding_mask"]
    # Image 1's boxes at level 0 are scaled by (5/8, 6/8, 5/8, 6/8).
    ref = out["references"][0][1, 0]
    torch.testing.assert_close(seen[0][1][1, 0, 0], ref * torch.tensor([5 / 8, 6 / 8] * 2))


def test_encoder_reference_points_by_hand():
    # One image; level 0 (2 x 4) valid on 2 rows and 3 columns, level 1 (1 x 2) on 1 x 1.
    ratios = torch.tensor([[[0.75, 1.0], [0.5, 1.0]]])
    ref = DeformableTransformerEncoder.get_reference_points([(2, 4), (1, 2)], ratios)
    assert ref.shape == (1, 10, 2, 2)
    # Level-0 pixel (1, 2), token 6: (2.5 / 3, 1.5 / 2) of the valid area.
    base = torch.tensor([2.5 / 3, 0.75])
    torch.testing.assert_close(ref[0, 6], torch.stack((base * ratios[0, 0], base * ratios[0, 1])))
    # Level-1 pixel (0, 1), token 9 (padded): (1.5 / 1, 0.5 / 1).
    base = torch.tensor([1.5, 0.5])
    torch.testing.assert_close(ref[0, 9], torch.stack((base * ratios[0, 0], base * ratios[0, 1])))


def test_decoder_layer_order():
    torch.manual_seed(0)
    layer = DeformableTransformerDecoderLayer(
        d_model=8, d_ffn=16, n_levels=1, n_heads=2, n_points=2
    )
    for norm in (layer.norm1, layer.norm2, layer.norm3):
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    tgt, pos = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    ref = torch.rand(1, 3, 1, 4) * 0.5 + 0.25
    memory = torch.randn(1, 12, 8)
    shapes, start = torch.tensor([[3, 4]]), torch.tensor([0])
    out = layer(tgt, pos, ref, memory, shapes, start)

    q = tgt + pos
    x = layer.norm2(tgt + layer.self_attn(q, q, tgt)[0])
    x = layer.norm1(x + layer.cross_attn(x + pos, ref, memory, shapes, start))
    x = layer.norm3(x + layer.linear2(torch.relu(layer.linear1(x))))
    torch.testing.assert_close(out, x)
    # norm3 comes last: with weight 0 its bias is the output.
    nn.init.zeros_(layer.norm3.weight)
    out = layer(tgt, pos, ref, memory, shapes, start)
    torch.testing.assert_close(out, layer.norm3.bias.expand(1, 3, 8))


def test_encoder_memory_ignores_padding():
    # Image A is unpadded (6 x 5 and 3 x 3); image B holds the same features with extra padded
    # rows and columns (8 x 8 and 4 x 4) full of other values. The position encodings are
    # normalised to the valid area and the reference points follow it, so B's valid tokens get
    # A's memory.
    transformer, class_embed, bbox_embed = build()
    g = torch.Generator().manual_seed(3)
    small, big = [(6, 5), (3, 3)], [(8, 8), (4, 4)]
    srcs_a = [torch.randn(1, D_MODEL, h, w, generator=g) for h, w in small]
    masks_a = [torch.zeros(1, h, w, dtype=torch.bool) for h, w in small]
    srcs_b, masks_b = [], []
    for (h, w), (hb, wb), src in zip(small, big, srcs_a):
        padded = 100 * torch.randn(1, D_MODEL, hb, wb, generator=g)
        padded[:, :, :h, :w] = src
        mask = torch.ones(1, hb, wb, dtype=torch.bool)
        mask[:, :h, :w] = False
        srcs_b.append(padded)
        masks_b.append(mask)
    pos_a = [sine_position_encoding(m, D_MODEL // 2) for m in masks_a]
    pos_b = [sine_position_encoding(m, D_MODEL // 2) for m in masks_b]
    enc_a = transformer.encode(srcs_a, masks_a, pos_a)
    enc_b = transformer.encode(srcs_b, masks_b, pos_b)
    valid_b = ~enc_b["padding_mask"][0]
    assert int(valid_b.sum()) == enc_a["memory"].shape[1] == 39
    torch.testing.assert_close(
        enc_b["memory"][0, valid_b], enc_a["memory"][0], atol=1e-5, rtol=1e-5
    )
    # The proposals of the valid tokens agree too (anchors are relative to the valid area).
    out_a, logits_a = transformer.gen_encoder_output_proposals(
        enc_a["memory"], enc_a["padding_mask"], enc_a["spatial_shapes"]
    )
    out_b, logits_b = transformer.gen_encoder_output_proposals(
        enc_b["memory"], enc_b["padding_mask"], enc_b["spatial_shapes"]
    )
    torch.testing.assert_close(logits_b[0, valid_b], logits_a[0])
    torch.testing.assert_close(out_b[0, valid_b], out_a[0], atol=1e-5, rtol=1e-5)


def test_deterministic_under_a_seed():
    t1, c1, b1 = build(seed=5)
    t2, c2, b2 = build(seed=5)
    for (k1, v1), (k2, v2) in zip(t1.state_dict().items(), t2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    out1 = t1(*inputs(), c1, b1)
    out2 = t2(*inputs(), c2, b2)
    assert torch.equal(out1["query_indices"], out2["query_indices"])
    assert torch.equal(out1["hidden_states"], out2["hidden_states"])
    assert torch.equal(out1["references"], out2["references"])
    t3, _, _ = build(seed=6)
    assert not torch.equal(t1.level_embed, t3.level_embed)


def test_inverse_sigmoid():
    x = torch.tensor([0.5, 0.25, 0.0, 1.0, 1.5, -0.5])
    expected = torch.tensor(
        [0.0, math.log(1 / 3), math.log(1e-5), -math.log(1e-5), -math.log(1e-5), math.log(1e-5)]
    )
    torch.testing.assert_close(inverse_sigmoid(x), expected)
    y = torch.tensor([0.3, 0.7])
    torch.testing.assert_close(inverse_sigmoid(y).sigmoid(), y)


def test_bad_inputs():
    transformer, class_embed, bbox_embed = build(num_queries=81)
    with pytest.raises(ValueError, match="num_queries \\(81\\) exceeds the number of encoder"):
        transformer(*inputs(), class_embed, bbox_embed)
    transformer, class_embed, bbox_embed = build()
    srcs, masks, pos = inputs()
    with pytest.raises(ValueError, match="srcs must hold num_feature_levels = 2 tensors, got 1"):
        transformer(srcs[:1], masks[:1], pos[:1], class_embed, bbox_embed)
    with pytest.raises(ValueError, match="masks\\[1\\] must be a \\[2, 4, 4\\] bool tensor"):
        transformer(srcs, [masks[0], masks[1].float()], pos, class_embed, bbox_embed)
    with pytest.raises(ValueError, match="need num_decoder_layers \\+ 1 = 3 heads"):
        transformer(srcs, masks, pos, class_embed[:2], bbox_embed[:2])
    with pytest.raises(ValueError, match="d_model must be divisible by 4"):
        DeformableTransformer(d_model=30, n_heads=2)
    with pytest.raises(ValueError, match="num_queries must be an int >= 1"):
        DeformableTransformer(d_model=32, n_heads=2, num_queries=0)
