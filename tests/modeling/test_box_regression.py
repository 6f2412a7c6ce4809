"""Box2BoxTransform: detectron2's centre/size deltas, hand-computed values and round trips."""

import math

import pytest
import torch

from assigndet.modeling.box_regression import Box2BoxTransform


def test_get_deltas_known_values():
    # src: centre (5, 5), 10 x 10; target: centre (11, 7), 20 x 10.
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[1.0, 2.0, 21.0, 12.0]])
    deltas = Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).get_deltas(src, target)
    expected = torch.tensor([[10 * 6 / 10, 10 * 2 / 10, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(deltas, expected)


def test_width_has_no_plus_one():
    # Widths are x2 - x1 = 4 and 8 (with +1 they would be 5 and 9, giving other deltas).
    src = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    target = torch.tensor([[0.0, 0.0, 8.0, 4.0]])
    deltas = Box2BoxTransform((1.0, 1.0, 1.0, 1.0)).get_deltas(src, target)
    torch.testing.assert_close(deltas, torch.tensor([[0.5, 0.0, math.log(2.0), 0.0]]))


def test_apply_deltas_known_values():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[6.0, 2.0, 5 * math.log(2.0), 0.0]])
    out = Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).apply_deltas(deltas, boxes)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 21.0, 12.0]]))


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (30, 30, 15, 15)]
)
def test_round_trip(weights):
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 100
    src = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=gen) * 50], dim=1)
    xy = torch.rand(50, 2, generator=gen) * 100
    target = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=gen) * 50], dim=1)
    transform = Box2BoxTransform(weights)
    decoded = transform.apply_deltas(transform.get_deltas(src, target), src)
    torch.testing.assert_close(decoded, target, atol=1e-3, rtol=1e-5)


def test_class_specific_columns_decode_independently():
    transform = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])
    d1 = torch.randn(2, 4)
    d2 = torch.randn(2, 4)
    out = transform.apply_deltas(torch.cat([d1, d2], dim=1), boxes)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[:, :4], transform.apply_deltas(d1, boxes))
    torch.testing.assert_close(out[:, 4:], transform.apply_deltas(d2, boxes))


def test_scale_is_clamped_before_exp():
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = transform.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), boxes)
    # log(1000 / 16) caps each side at 1000 px, centred on (8, 8).
    torch.testing.assert_close(out, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))
    assert torch.isfinite(out).all()


def test_half_precision_deltas_decode_in_float32():
    transform = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    out = transform.apply_deltas(torch.zeros(3, 4, dtype=torch.float16), torch.ones(3, 4) * 2)
    assert out.dtype == torch.float32


def test_bad_inputs_raise():
    transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive width and height"):
        transform.get_deltas(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"\[R, 4k\]"):
        transform.apply_deltas(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="4 numbers"):
        Box2BoxTransform((1.0, 1.0, 1.0))
