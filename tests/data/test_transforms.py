import numpy as np
import pytest

from assigndet.data.transforms import (
    HFlipTransform,
    NoOpTransform,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    VFlipTransform,
    apply_augmentations,
    apply_transforms_to_boxes,
)


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1067)),  # 1066.67 rounds up
        (427, 640, 800, 1333, (800, 1199)),  # 1199.06
        (300, 1000, 800, 1333, (400, 1333)),  # long side capped
        (101, 50, 25, 1000, (51, 25)),  # 50.5 -> int(50.5 + 0.5) = 51
        (200, 200, 100, 1000, (100, 100)),
    ],
)
def test_resize_output_shape_rounding(h, w, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(h, w, short, max_size) == expected


def test_resize_sampling_choice_and_range():
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    choice = ResizeShortestEdge((50, 70), 1000, "choice")
    shorts = {choice.get_transform(img).new_h for _ in range(50)}
    assert shorts == {50, 70}
    ranged = ResizeShortestEdge((50, 53), 1000, "range")
    shorts = {ranged.get_transform(img).new_h for _ in range(200)}
    assert shorts == {50, 51, 52, 53}
    assert isinstance(ResizeShortestEdge(0, 1000, "choice").get_transform(img), NoOpTransform)
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge(50, 100, "uniform")
    with pytest.raises(ValueError, match=r"\(min, max\)"):
        ResizeShortestEdge((1, 2, 3), 100, "range")


def test_resize_image_and_boxes():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[2:4, 4:8] = 255
    t = ResizeTransform(10, 20, 20, 40)
    out = t.apply_image(img)
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8
    boxes = t.apply_box(np.array([[4.0, 2.0, 8.0, 4.0]]))
    np.testing.assert_allclose(boxes, [[8.0, 4.0, 16.0, 8.0]])
    assert (out[5:7, 9:15] == 255).all()
    grey = np.zeros((10, 20, 1), dtype=np.uint8)
    assert t.apply_image(grey).shape == (20, 40, 1)
    with pytest.raises(ValueError, match="10x20"):
        t.apply_image(np.zeros((11, 20, 3), dtype=np.uint8))


def test_flips_map_boxes_onto_the_flipped_pixels():
    img = np.zeros((10, 20), dtype=np.uint8)
    img[1:4, 2:7] = 1  # box [2, 1, 7, 4]
    box = np.array([[2.0, 1.0, 7.0, 4.0]])
    h = HFlipTransform(20)
    ((x0, y0, x1, y1),) = h.apply_box(box).astype(int)
    flipped = h.apply_image(img)
    assert (x0, y0, x1, y1) == (13, 1, 18, 4) and flipped[y0:y1, x0:x1].all()
    assert flipped.sum() == img.sum()
    v = VFlipTransform(10)
    ((x0, y0, x1, y1),) = v.apply_box(box).astype(int)
    flipped = v.apply_image(img)
    assert (x0, y0, x1, y1) == (2, 6, 7, 9) and flipped[y0:y1, x0:x1].all()


def test_random_flip_probability_and_chain():
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    always = RandomFlip(1.0, horizontal=False, vertical=True)
    assert isinstance(always.get_transform(img), VFlipTransform)
    never = RandomFlip(0.0)
    assert isinstance(never.get_transform(img), NoOpTransform)
    flips = sum(isinstance(RandomFlip(0.5).get_transform(img), HFlipTransform) for _ in range(400))
    assert 150 < flips < 250
    with pytest.raises(ValueError, match="either"):
        RandomFlip(horizontal=True, vertical=True)

    out, ts = apply_augmentations([ResizeShortestEdge(8, 100, "choice"), always], img)
    assert out.shape == (8, 12, 3)
    np.testing.assert_allclose(
        apply_transforms_to_boxes(ts, np.array([[0.0, 0.0, 3.0, 1.0]])), [[0.0, 6.0, 6.0, 8.0]]
    )
