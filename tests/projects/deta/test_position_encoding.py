"""The sine encodings of pixels and of proposal boxes, against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from assigndet.projects.deta.position_encoding import box_sine_encoding, sine_position_encoding

TWO_PI = 2 * math.pi


def channels(v: float, n: int, temperature: float = 10000.0) -> list[float]:
    """n interleaved (sin, cos) channels of the angle v, frequencies temperature^(-2j/n)."""
    out = []
    for j in range(n // 2):
        w = temperature ** (-2 * j / n)
        out += [math.sin(v * w), math.cos(v * w)]
    return out


def padded_mask() -> torch.Tensor:
    """Two 3x4 images: the first unpadded, the second valid on rows 0-1 and columns 0-2."""
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, 2, :] = True
    mask[1, :, 3] = True
    return mask


def test_sine_position_encoding_hand_values():
    pos = sine_position_encoding(padded_mask(), num_pos_feats=4)
    assert pos.shape == (2, 8, 3, 4)
    assert pos.dtype == torch.float32
    eps = 1e-6
    # Image 1, pixel (i=1, j=2): second valid row of 2, third valid column of 3.
    y = TWO_PI * (2 - 0.5) / (2 + eps)
    x = TWO_PI * (3 - 0.5) / (3 + eps)
    expected = torch.tensor(channels(y, 4) + channels(x, 4))
    torch.testing.assert_close(pos[1, :, 1, 2], expected, rtol=0, atol=1e-6)
    # Image 1, padded pixel (i=1, j=3): the column count stays at 3 over the padding.
    x = TWO_PI * (3 - 0.5) / (3 + eps)
    torch.testing.assert_close(pos[1, 4:, 1, 3], torch.tensor(channels(x, 4)), rtol=0, atol=1e-6)
    # Image 0 is normalised by its own (unpadded) size: pixel (0, 3).
    y = TWO_PI * 0.5 / (3 + eps)
    x = TWO_PI * 3.5 / (4 + eps)
    expected = torch.tensor(channels(y, 4) + channels(x, 4))
    torch.testing.assert_close(pos[0, :, 0, 3], expected, rtol=0, atol=1e-6)


def test_sine_position_encoding_frequencies_at_full_width():
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    pos = sine_position_encoding(mask)  # 128 per axis, as in DETA
    assert pos.shape == (1, 256, 2, 5)
    y = TWO_PI * 1.5 / (2 + 1e-6)  # row 1
    x = TWO_PI * 3.5 / (5 + 1e-6)  # column 3
    j = 10
    w = 10000.0 ** (-2 * j / 128)
    assert pos[0, 2 * j, 1, 3].item() == pytest.approx(math.sin(y * w), abs=1e-6)
    assert pos[0, 2 * j + 1, 1, 3].item() == pytest.approx(math.cos(y * w), abs=1e-6)
    assert pos[0, 128 + 2 * j, 1, 3].item() == pytest.approx(math.sin(x * w), abs=1e-6)
    assert pos[0, 128 + 2 * j + 1, 1, 3].item() == pytest.approx(math.cos(x * w), abs=1e-6)


def test_sine_position_encoding_puts_y_first():
    # Transposing the image swaps the roles of the axes: the y half of the transposed image's
    # encoding is the x half of the original's, transposed.
    mask = padded_mask()
    pos = sine_position_encoding(mask, num_pos_feats=6)
    pos_t = sine_position_encoding(mask.transpose(1, 2).contiguous(), num_pos_feats=6)
    torch.testing.assert_close(pos_t[:, :6], pos[:, 6:].transpose(2, 3))
    torch.testing.assert_close(pos_t[:, 6:], pos[:, :6].transpose(2, 3))
    # y varies down a column, x along a row.
    assert torch.equal(pos[0, :6, 1, 0], pos[0, :6, 1, 3])
    assert not torch.equal(pos[0, :6, 0, 0], pos[0, :6, 1, 0])


def test_box_sine_encoding_channel_order():
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    enc = box_sine_encoding(boxes, num_pos_feats=4)
    assert enc.shape == (1, 1, 16)
    expected = []
    for v in (0.1, 0.2, 0.3, 0.4):  # cx, cy, w, h
        expected += channels(TWO_PI * v, 4)
    torch.testing.assert_close(enc[0, 0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_box_sine_encoding_shapes_and_dtype():
    boxes = torch.rand(2, 5, 4, dtype=torch.float64)
    enc = box_sine_encoding(boxes)
    assert enc.shape == (2, 5, 512)
    assert enc.dtype == torch.float64
    # Channel 2j + 1 of coordinate c is cos(2 pi v w_j).
    v, j = boxes[1, 3, 2].item(), 7
    w = 10000.0 ** (-2 * j / 128)
    assert enc[1, 3, 2 * 128 + 2 * j + 1].item() == pytest.approx(math.cos(TWO_PI * v * w))
    assert box_sine_encoding(boxes.half()).dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="mask must be a \\[B, H, W\\] bool"):
        sine_position_encoding(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="mask must be a \\[B, H, W\\] bool"):
        sine_position_encoding(torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_pos_feats must be an even int"):
        sine_position_encoding(torch.zeros(1, 3, 4, dtype=torch.bool), num_pos_feats=5)
    with pytest.raises(ValueError, match="boxes must be a \\[B, Q, 4\\]"):
        box_sine_encoding(torch.rand(5, 4))
    with pytest.raises(ValueError, match="floating"):
        box_sine_encoding(torch.ones(1, 5, 4, dtype=torch.int64))
