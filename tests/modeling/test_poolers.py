"""ROIPooler: FPN level assignment and pooled values against direct torchvision calls."""

import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from assigndet.modeling.poolers import ROIPooler, assign_boxes_to_levels


def _square(side: float, x0: float = 0.0) -> list[float]:
    return [x0, 0.0, x0 + side, side]


def test_level_assignment():
    boxes = torch.tensor(
        [_square(224), _square(112), _square(448), _square(223), _square(111.9), _square(10)]
    )
    levels = assign_boxes_to_levels([boxes], min_level=2, max_level=5)
    # floor(4 + log2(side / 224)) = 4, 3, 5, 3, 2 and -1 (clamped to 2); offsets from level 2.
    assert levels.tolist() == [2, 1, 3, 1, 0, 0]
    assert levels.dtype == torch.int64


def test_level_assignment_clamps_and_concatenates_images():
    big = torch.tensor([_square(4000)])
    tiny = torch.tensor([_square(1), [5.0, 5.0, 5.0, 5.0]])  # the second is empty
    levels = assign_boxes_to_levels([big, tiny], min_level=3, max_level=7)
    assert levels.tolist() == [4, 0, 0]
    levels = assign_boxes_to_levels([torch.tensor([_square(64)])], 3, 7, 32, 3)
    assert levels.tolist() == [1]  # canonical size and level are honoured


def _features(strides, channels=3, size=64):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, channels, size // s, size // s, generator=gen) for s in strides]


def test_single_level_equals_roi_align():
    (feature,) = _features([4])
    boxes = [torch.tensor([[1.0, 2.0, 30.5, 20.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)]
    pooler = ROIPooler(5, (0.25,), sampling_ratio=2, pooler_type="ROIAlignV2")
    out = pooler([feature], boxes)
    rois = torch.tensor([[0, 1.0, 2.0, 30.5, 20.0], [1, 0, 0, 8, 8], [1, 0, 0, 8, 8]])
    expected = roi_align(feature, rois, (5, 5), 0.25, 2, aligned=True)
    torch.testing.assert_close(out, expected)
    assert out.shape == (3, 3, 5, 5)


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignV2", "ROIPool"])
def test_multi_level_pools_each_box_from_its_level(pooler_type):
    strides = [8, 16, 32]  # levels 3..5
    features = _features(strides, size=128)
    # sides 50 -> level 1 (clamped to 3), 120 -> 3, 230 -> 4, 460 -> 5
    boxes = [
        torch.tensor([[3.0, 4.0, 53.0, 54.0], [0.0, 0.0, 230.0, 230.0]]),
        torch.tensor([[10.0, 10.0, 130.0, 130.0], [0.0, 0.0, 460.0, 460.0]]),
    ]
    pooler = ROIPooler(7, [1 / s for s in strides], sampling_ratio=0, pooler_type=pooler_type)
    out = pooler(features, boxes)
    image_of_box = [0, 0, 1, 1]
    level_of_box = [0, 1, 0, 2]
    for i, (box, image, level) in enumerate(zip(torch.cat(boxes), image_of_box, level_of_box)):
        rois = torch.cat([torch.tensor([float(image)]), box])[None]
        scale = 1 / strides[level]
        if pooler_type == "ROIPool":
            expected = roi_pool(features[level], rois, (7, 7), scale)
        else:
            expected = roi_align(
                features[level], rois, (7, 7), scale, 0, aligned=pooler_type == "ROIAlignV2"
            )
        torch.testing.assert_close(out[i : i + 1], expected)


def test_no_parameters_and_empty_inputs():
    features = _features([8, 16])
    pooler = ROIPooler(7, (1 / 8, 1 / 16), 0, "ROIAlignV2")
    assert len(pooler.state_dict()) == 0
    out = pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert out.shape == (0, 3, 7, 7)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pooler_type"):
        ROIPooler(7, (1 / 8,), 0, "RoIAlign")
    with pytest.raises(ValueError, match="power of 2"):
        ROIPooler(7, (1 / 6,), 0, "ROIAlign")
    with pytest.raises(ValueError, match="consecutive"):
        ROIPooler(7, (1 / 8, 1 / 32), 0, "ROIAlign")
    pooler = ROIPooler(7, (1 / 8, 1 / 16), 0, "ROIAlign")
    with pytest.raises(ValueError, match="2 levels"):
        pooler(_features([8]), [torch.zeros(0, 4)] * 2)
    with pytest.raises(ValueError, match="box lists"):
        pooler(_features([8, 16]), [torch.zeros(0, 4)])
