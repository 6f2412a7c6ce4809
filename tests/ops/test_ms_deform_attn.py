"""assigndet.ops.ms_deform_attn: the grid_sample path vs the per-point reference."""

from __future__ import annotations

import pytest
import torch

from assigndet import ops
from assigndet.ops import _extension

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def make_inputs(
    shapes=((6, 7), (3, 4), (1, 2)),
    n=2,
    lq=5,
    m=3,
    d=4,
    p=3,
    dtype=torch.float64,
    spread=0.3,
    padded_tokens=0,
):
    """Random inputs; locations reach `spread` beyond [0, 1] so some points fall off the map."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    value = torch.randn(n, s, m, d, dtype=dtype)
    if padded_tokens:
        # As the module does: padded tokens are zeroed before the op.
        mask = torch.zeros(n, s, dtype=torch.bool)
        mask[0, -padded_tokens:] = True
        mask[1, torch.randperm(s)[:padded_tokens]] = True
        value = value.masked_fill(mask[:, :, None, None], 0.0)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(n, lq, m, len(shapes) * p, dtype=dtype).softmax(-1)
    weights = weights.view(n, lq, m, len(shapes), p)
    return value, spatial_shapes, level_start_index, loc, weights


def test_some_points_fall_outside_the_map():
    _, _, _, loc, _ = make_inputs()
    assert bool(((loc < 0) | (loc > 1)).any())


@pytest.mark.parametrize("padded_tokens", [0, 9])
def test_forward_matches_reference(padded_tokens):
    inputs = make_inputs(padded_tokens=padded_tokens)
    out = ops.ms_deform_attn(*inputs)
    expected = ops.ms_deform_attn_reference(*inputs)
    assert out.shape == (2, 5, 3 * 4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padded_tokens", [0, 9])
def test_gradients_match_reference(padded_tokens):
    value, shapes, starts, loc, weights = make_inputs(padded_tokens=padded_tokens)
    grads = []
    for fn in (ops.ms_deform_attn, ops.ms_deform_attn_reference):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_gradcheck_tiny_case():
    value, shapes, starts, loc, weights = make_inputs(shapes=((2, 3), (1, 2)), n=1, lq=2, m=2, d=2)
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ops.ms_deform_attn(v, shapes, starts, sl, aw), leaves
    )


def test_hand_computed_bilinear_sample():
    # One 2x2 map [[0, 1], [2, 3]]; pixel centres at x, y in {0.25, 0.75}.
    value = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    starts = torch.tensor([0])
    points = [
        ((0.25, 0.25), 0.0),  # centre of pixel (0, 0)
        ((0.5, 0.5), 1.5),  # middle of the four pixels
        ((0.5, 0.25), 0.5),  # between pixels (0, 0) and (0, 1)
        ((0.0, 0.25), 0.0),  # half a pixel left of the map: 0.5 * 0 + 0.5 * pad
        ((1.0, 0.75), 1.5),  # half a pixel right of pixel (1, 1): 0.5 * 3
        ((1.25, 0.5), 0.0),  # a whole pixel off the map
    ]
    loc = torch.tensor([xy for xy, _ in points], dtype=torch.float64).view(1, 6, 1, 1, 1, 2)
    weights = torch.ones(1, 6, 1, 1, 1, dtype=torch.float64)
    expected = torch.tensor([v for _, v in points], dtype=torch.float64).view(1, 6, 1)
    for fn in (ops.ms_deform_attn, ops.ms_deform_attn_reference):
        torch.testing.assert_close(fn(value, shapes, starts, loc, weights), expected)


def test_float32_matches_float64():
    inputs = make_inputs()
    expected = ops.ms_deform_attn(*inputs)
    value, shapes, starts, loc, weights = inputs
    out = ops.ms_deform_attn(value.float(), shapes, starts, loc.float(), weights.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_no_warning_without_a_kernel(recwarn):
    ops.ms_deform_attn(*make_inputs())
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_compiled_kernel_is_dispatched_when_bound(monkeypatch):
    calls = []

    class FakeExtension:
        @staticmethod
        def ms_deform_attn_cpu(*args):
            calls.append(args)
            return torch.zeros(())

    monkeypatch.setattr(_extension, "_C", FakeExtension)
    inputs = make_inputs()
    out = ops.ms_deform_attn(*inputs)
    assert out.shape == () and len(calls) == 1
    assert all(a is b for a, b in zip(calls[0], inputs))


def _error(fn, *args) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("fn", [ops.ms_deform_attn, ops.ms_deform_attn_reference])
def test_shape_errors_name_the_bad_value(fn):
    value, shapes, starts, loc, weights = make_inputs()
    assert "value must be a [N, S, M, D] tensor, got (2, 56, 12)" in _error(
        fn, value.flatten(2), shapes, starts, loc, weights
    )
    assert "spatial_shapes must be a [L, 2] tensor of (H_l, W_l), got (3, 1)" in _error(
        fn, value, shapes[:, :1], starts, loc, weights
    )
    assert "level_start_index must be a [L] tensor with L = 3, got (2,)" in _error(
        fn, value, shapes, starts[:2], loc, weights
    )
    assert "sampling_locations must be a [N, Lq, M, L, P, 2] tensor with N = 2, M = 3, L = 3" in (
        _error(fn, value, shapes, starts, loc[:, :, :2], weights)
    )
    assert "attention_weights must be a [N, Lq, M, L, P] tensor of shape (2, 5, 3, 3, 3)" in (
        _error(fn, value, shapes, starts, loc, weights[..., :2])
    )
    assert "value has S = 55 tokens but spatial_shapes [(6, 7), (3, 4), (1, 2)] sum to 56" in (
        _error(fn, value[:, 1:], shapes, starts, loc, weights)
    )
    assert "level_start_index must be the running sums [0, 42, 54]" in _error(
        fn, value, shapes, starts + 1, loc, weights
    )


@pytest.mark.parametrize("fn", [ops.ms_deform_attn, ops.ms_deform_attn_reference])
def test_dtype_errors_name_the_bad_value(fn):
    value, shapes, starts, loc, weights = make_inputs()
    assert "value must be a floating tensor, got torch.int64" in _error(
        fn, value.long(), shapes, starts, loc, weights
    )
    assert "sampling_locations must have value's dtype torch.float64, got torch.float32" in _error(
        fn, value, shapes, starts, loc.float(), weights
    )
    assert "attention_weights must have value's dtype torch.float64, got torch.float32" in _error(
        fn, value, shapes, starts, loc, weights.float()
    )
    assert "spatial_shapes must be an integer tensor, got torch.float32" in _error(
        fn, value, shapes.float(), starts, loc, weights
    )


@pytest.mark.cuda
@needs_cuda
def test_cuda_matches_cpu_reference():
    inputs = make_inputs(padded_tokens=9)
    expected = ops.ms_deform_attn_reference(*inputs)
    cuda_inputs = [t.cuda() for t in inputs]
    torch.testing.assert_close(ops.ms_deform_attn(*cuda_inputs).cpu(), expected)
    leaves = [cuda_inputs[i].clone().requires_grad_(True) for i in (0, 3, 4)]
    out = ops.ms_deform_attn(leaves[0], cuda_inputs[1], cuda_inputs[2], leaves[1], leaves[2])
    out.sum().backward()
    cpu_leaves = [inputs[i].clone().requires_grad_(True) for i in (0, 3, 4)]
    ops.ms_deform_attn_reference(
        cpu_leaves[0], inputs[1], inputs[2], cpu_leaves[1], cpu_leaves[2]
    ).sum().backward()
    for got, want in zip(leaves, cpu_leaves):
        torch.testing.assert_close(got.grad.cpu(), want.grad)
