"""assigndet.layers.MSDeformAttn: parameters, initialisation, reference kinds and masking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from assigndet.layers import MSDeformAttn

SHAPES = ((8, 10), (4, 5), (2, 3), (1, 2), (1, 1))


def levels(shapes=SHAPES):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]), int(sizes.sum())


def identity_projections(attn: MSDeformAttn) -> None:
    for layer in (attn.value_proj, attn.output_proj):
        nn.init.eye_(layer.weight)
        nn.init.zeros_(layer.bias)


def test_state_dict_names_and_shapes_of_deta():
    attn = MSDeformAttn(d_model=256, n_levels=5, n_heads=8, n_points=4)
    assert {k: tuple(v.shape) for k, v in attn.state_dict().items()} == {
        "sampling_offsets.weight": (320, 256),
        "sampling_offsets.bias": (320,),
        "attention_weights.weight": (160, 256),
        "attention_weights.bias": (160,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }
    assert MSDeformAttn().n_levels == 4


def test_initial_values():
    attn = MSDeformAttn(n_levels=5)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    bound = math.sqrt(6.0 / (256 + 256))  # Xavier-uniform for a 256 x 256 weight
    for layer in (attn.value_proj, attn.output_proj):
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound
    # Head m points along 2*pi*m/8, pushed out to the unit square (diagonals are (+-1, +-1));
    # point p sits at (p + 1) times that.
    directions = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]
    bias = attn.sampling_offsets.bias.view(8, 5, 4, 2)
    for m, d in enumerate(directions):
        expected = torch.tensor(d, dtype=torch.float32) * torch.arange(1.0, 5.0)[:, None]
        for l in range(5):
            torch.testing.assert_close(bias[m, l], expected)


def _line_input(w: int, h: int, d_model: int) -> torch.Tensor:
    """One level whose channel 0 is the column index j (pixel centre x = (j + 0.5) / W)."""
    x = torch.zeros(1, h * w, d_model)
    x[0, :, 0] = torch.arange(w, dtype=torch.float32).repeat(h)
    return x


@pytest.mark.parametrize(
    "reference, expected",
    [
        # Points: offsets (p + 1, 0) pixels from x = 0.5 -> columns 4.5 + 1..4, mean 7.
        (torch.tensor([0.5, 0.5]), 7.0),
        # Boxes: x = 0.5 + (p + 1) / 4 * 0.4 / 2 = 0.55, 0.6, 0.65, 0.7 -> columns 5..6.5 (mean
        # 5.75); the last point lies on the box's right border (0.7).
        (torch.tensor([0.5, 0.5, 0.4, 0.6]), 5.75),
    ],
)
def test_initial_sampling_locations_by_hand(reference, expected):
    attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=1, n_points=4)
    identity_projections(attn)
    shapes, starts, _ = levels(((3, 10),))
    out = attn(
        torch.randn(1, 1, 4), reference.view(1, 1, 1, -1), _line_input(10, 3, 4), shapes, starts
    )
    # Bilinear sampling of a map linear in x is exact between pixel centres.
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(expected))


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_output_shape_for_both_reference_kinds(ref_dim):
    attn = MSDeformAttn(d_model=32, n_levels=5, n_heads=4, n_points=3)
    shapes, starts, s = levels()
    reference = torch.rand(2, 7, 5, ref_dim)
    out = attn(torch.randn(2, 7, 32), reference, torch.randn(2, s, 32), shapes, starts)
    assert out.shape == (2, 7, 32)
    out.sum().backward()
    assert attn.sampling_offsets.weight.grad is not None
    assert attn.attention_weights.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_padded_positions_have_no_influence(ref_dim):
    attn = MSDeformAttn(d_model=32, n_levels=5, n_heads=4, n_points=3)
    nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    shapes, starts, s = levels()
    query, reference = torch.randn(2, 7, 32), torch.rand(2, 7, 5, ref_dim)
    x = torch.randn(2, s, 32)
    mask = torch.rand(2, s) < 0.4
    changed = torch.where(mask[..., None], torch.randn(2, s, 32) * 100, x)
    out = attn(query, reference, x, shapes, starts, mask)
    torch.testing.assert_close(attn(query, reference, changed, shapes, starts, mask), out)
    # Without the mask the same change does move the output.
    assert not torch.allclose(attn(query, reference, changed, shapes, starts), out)


def test_forward_equals_the_fact_sheet_formula():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).double()
    nn.init.normal_(attn.sampling_offsets.weight, std=0.3)
    nn.init.normal_(attn.attention_weights.weight)
    nn.init.eye_(attn.output_proj.weight)
    nn.init.zeros_(attn.output_proj.bias)
    shapes, starts, s = levels(((4, 6), (2, 3)))
    query = torch.randn(1, 3, 16, dtype=torch.float64)
    x = torch.randn(1, s, 16, dtype=torch.float64)
    boxes = torch.rand(1, 3, 2, 4, dtype=torch.float64)
    out = attn(query, boxes, x, shapes, starts)
    # The formula written out with scalar loops, for query 1 and head 1 (output channels 8..15).
    value = attn.value_proj(x).view(1, s, 2, 8)
    offsets = attn.sampling_offsets(query).view(1, 3, 2, 2, 2, 2)
    weights = attn.attention_weights(query).view(1, 3, 2, 4).softmax(-1).view(1, 3, 2, 2, 2)
    head = torch.zeros(8, dtype=torch.float64)
    for l, ((h, w), start) in enumerate(zip(shapes.tolist(), starts.tolist())):
        level = value[0, start : start + h * w, 1].view(h, w, 8)
        for p in range(2):
            cx, cy, bw, bh = boxes[0, 1, l].tolist()
            x_loc = cx + offsets[0, 1, 1, l, p, 0].item() / 2 * bw * 0.5
            y_loc = cy + offsets[0, 1, 1, l, p, 1].item() / 2 * bh * 0.5
            px, py = x_loc * w - 0.5, y_loc * h - 0.5
            x0, y0 = math.floor(px), math.floor(py)
            for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                if 0 <= xi < w and 0 <= yi < h:
                    bilinear = (1 - abs(px - xi)) * (1 - abs(py - yi))
                    head = head + weights[0, 1, 1, l, p] * bilinear * level[yi, xi]
    assert head.abs().sum() > 0
    torch.testing.assert_close(out[0, 1, 8:], head)


def test_errors_name_the_bad_value():
    attn = MSDeformAttn(d_model=32, n_levels=5, n_heads=4, n_points=3)
    shapes, starts, s = levels()
    query, x = torch.randn(2, 7, 32), torch.randn(2, s, 32)
    with pytest.raises(ValueError, match=r"reference_points must be a \[2, 7, 5, 2 or 4\] tensor"):
        attn(query, torch.rand(2, 7, 5, 3), x, shapes, starts)
    with pytest.raises(ValueError, match=r"reference_points .* got \(2, 7, 4, 2\)"):
        attn(query, torch.rand(2, 7, 4, 2), x, shapes, starts)
    with pytest.raises(ValueError, match=r"query must be a \[N, Lq, 32\] tensor, got \(2, 7, 16\)"):
        attn(query[..., :16], torch.rand(2, 7, 5, 2), x, shapes, starts)
    with pytest.raises(ValueError, match=r"input_spatial_shapes must be a \[5, 2\] tensor"):
        attn(query, torch.rand(2, 7, 5, 2), x, shapes[:4], starts[:4])
    with pytest.raises(ValueError, match=r"input_padding_mask must be a \[2, 109\] bool tensor"):
        attn(query, torch.rand(2, 7, 5, 2), x, shapes, starts, torch.zeros(2, s))
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        MSDeformAttn(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"n_levels must be an int >= 1, got 0"):
        MSDeformAttn(n_levels=0)


def test_runs_under_bfloat16_autocast():
    """Projections in bfloat16, sampling in float32: the output is close to float32's."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 5], [2, 3]])
    start = torch.tensor([0, 20])
    query = torch.randn(1, 3, 16)
    value = torch.randn(1, 26, 16)
    ref = torch.rand(1, 3, 2, 2)
    expected = attn(query, ref, value, shapes, start)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(query, ref, value, shapes, start)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)
