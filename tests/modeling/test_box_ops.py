import pytest
import torch
from torchvision.ops import box_iou

from assigndet.modeling.box_ops import boxes_to_ltrb, centerness, ltrb_to_boxes, paired_box_iou


def test_ltrb_round_trip_and_broadcast():
    points = torch.tensor([[10.0, 20.0], [0.0, 0.0], [50.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 30.0], [5.0, 10.0, 60.0, 12.0]])
    ltrb = boxes_to_ltrb(points[:, None, :], boxes[None, :, :])
    assert ltrb.shape == (3, 2, 4)
    assert torch.equal(ltrb[0, 0], torch.tensor([10.0, 20.0, 30.0, 10.0]))
    assert torch.equal(ltrb[1, 1], torch.tensor([-5.0, -10.0, 60.0, 12.0]))
    rebuilt = ltrb_to_boxes(points[:, None, :], ltrb)
    assert torch.allclose(rebuilt, boxes.expand(3, 2, 4))


def test_centerness_values():
    ltrb = torch.tensor([[5.0, 5.0, 5.0, 5.0], [2.0, 1.0, 6.0, 3.0], [0.0, 1.0, 4.0, 1.0]])
    expected = torch.tensor([1.0, (2 / 6 * 1 / 3) ** 0.5, 0.0])
    assert torch.allclose(centerness(ltrb), expected)


def test_paired_box_iou_matches_torchvision_diagonal():
    torch.manual_seed(0)
    xy = torch.rand(6, 2) * 20
    wh = torch.rand(6, 2) * 20 + 1
    a = torch.cat([xy, xy + wh], dim=1)
    xy2 = xy + torch.randn(6, 2) * 3
    b = torch.cat([xy2, xy2 + wh.flip(1)], dim=1)
    assert torch.allclose(paired_box_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6)
    # hand case: a 2x2 box against a 2x4 box sharing its left half
    one = paired_box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 4.0, 2.0]]))
    assert one.item() == pytest.approx(0.5)
    # disjoint and empty boxes give 0, not NaN
    boxes1 = torch.tensor([[0.0, 0, 1, 1], [3, 3, 3, 3]])
    boxes2 = torch.tensor([[2.0, 2, 3, 3], [3, 3, 3, 3]])
    zero = paired_box_iou(boxes1, boxes2)
    assert torch.equal(zero, torch.zeros(2))


def test_paired_box_iou_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        paired_box_iou(torch.zeros(2, 4), torch.zeros(3, 4))
