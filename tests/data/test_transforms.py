import numpy as np
import pytest

from assigndet.data.transforms import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    RandomApply,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    TransformList,
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


def test_crop_transform_image_and_boxes_by_hand():
    img = np.arange(6 * 8).reshape(6, 8, 1).astype(np.uint8)  # pixel value = 8 * y + x
    t = CropTransform(x0=2, y0=1, w=4, h=3)
    out = t.apply_image(img)
    assert out.shape == (3, 4, 1)
    assert out[0, 0, 0] == 8 * 1 + 2 and out[2, 3, 0] == 8 * 3 + 5
    boxes = np.array(
        [
            [3.0, 2.0, 5.0, 3.5],  # inside: shifted by (-2, -1)
            [0.0, 0.0, 4.0, 7.0],  # cut on the left, top and bottom
            [6.5, 1.0, 8.0, 2.0],  # right of the crop: zero width after clipping
        ]
    )
    np.testing.assert_allclose(
        t.apply_box(boxes), [[1.0, 1.0, 3.0, 2.5], [0.0, 0.0, 2.0, 3.0], [4.0, 0.0, 4.0, 1.0]]
    )
    # The kept box still covers the same pixels: value 8 * 2 + 3 sits at (1, 1) of the crop.
    assert out[1, 1, 0] == 8 * 2 + 3
    with pytest.raises(ValueError, match=r"does not fit in a 3x8"):
        t.apply_image(img[:3])
    with pytest.raises(ValueError, match="w=0"):
        CropTransform(0, 0, 0, 3)


def test_random_crop_relative_and_absolute_sizes():
    img = np.zeros((100, 50, 3), dtype=np.uint8)
    np.random.seed(0)
    t = RandomCrop("relative", (0.5, 0.25)).get_transform(img)
    assert isinstance(t, CropTransform) and (t.h, t.w) == (50, 13)  # 12.5 rounds to 13
    assert 0 <= t.y0 <= 50 and 0 <= t.x0 <= 37
    t = RandomCrop("absolute", (40, 80)).get_transform(img)
    assert (t.h, t.w) == (40, 50)  # the width is capped by the image
    assert t.x0 == 0 and t.apply_image(img).shape == (40, 50, 3)
    sizes = [RandomCrop("relative_range", (0.5, 0.8)).get_crop_size((100, 50)) for _ in range(300)]
    hs, ws = zip(*sizes)
    assert 50 <= min(hs) <= 53 and 97 <= max(hs) <= 100
    assert 40 <= min(ws) <= 41 and 49 <= max(ws) <= 50


def test_random_crop_absolute_range_bounds_and_offsets():
    np.random.seed(123)
    crop = RandomCrop("absolute_range", [384, 600])
    big = [crop.get_crop_size((500, 700)) for _ in range(3000)]
    hs, ws = zip(*big)
    assert set(hs) == set(range(384, 501))  # [min(H, 384), min(H, 600)], both ends drawn
    assert set(ws) == set(range(384, 601))
    # A side shorter than the lower bound is kept whole; the other one is drawn in [384, 450].
    small = {crop.get_crop_size((300, 450)) for _ in range(1000)}
    assert {h for h, _ in small} == {300} and {w for _, w in small} == set(range(384, 451))

    img = np.zeros((420, 400, 1), dtype=np.uint8)
    x0s, y0s = set(), set()
    for _ in range(2000):
        t = crop.get_transform(img)
        assert 384 <= t.h <= 420 and 384 <= t.w <= 400
        assert t.x0 + t.w <= 400 and t.y0 + t.h <= 420
        x0s.add(t.x0)
        y0s.add(t.y0)
    assert min(x0s) == 0 and max(x0s) == 400 - 384 and max(y0s) == 420 - 384


@pytest.mark.parametrize(
    "crop_type, size, message",
    [
        ("random", (0.5, 0.5), r"INPUT.CROP.TYPE.*'random'"),
        ("relative", (0.5,), r"INPUT.CROP.SIZE.*two numbers"),
        ("relative", 0.5, r"INPUT.CROP.SIZE.*two numbers"),
        ("relative_range", (0.0, 0.5), r"INPUT.CROP.SIZE.*\(0, 1\].*\[0.0, 0.5\]"),
        ("absolute", (10, 2.5), r"INPUT.CROP.SIZE.*integers.*2.5"),
        ("absolute_range", (600, 384), r"INPUT.CROP.SIZE.*min <= max.*\[600, 384\]"),
    ],
)
def test_random_crop_rejects_bad_arguments(crop_type, size, message):
    with pytest.raises(ValueError, match=message):
        RandomCrop(crop_type, size)


def test_random_apply_probability_and_order():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    augs = [ResizeShortestEdge(20, sample_style="choice"), RandomCrop("absolute", (10, 30))]
    assert isinstance(RandomApply(augs, 0.0).get_transform(img), NoOpTransform)
    np.random.seed(0)
    t = RandomApply(augs, 1.0).get_transform(img)
    assert isinstance(t, TransformList)
    resize, crop = t.transforms
    assert (resize.new_h, resize.new_w) == (20, 30)
    # The crop was drawn on the resized image: its offsets fit in 20x30.
    assert (crop.h, crop.w, crop.x0) == (10, 30, 0) and 0 <= crop.y0 <= 10
    out, ts = apply_augmentations([RandomApply(augs, 1.0)], img)
    assert out.shape == (10, 30, 3)
    y0 = ts[0].transforms[1].y0
    np.testing.assert_allclose(
        apply_transforms_to_boxes(ts, np.array([[0.0, 10.0, 60.0, 30.0]])),
        [[0.0, max(5.0 - y0, 0.0), 30.0, min(15.0 - y0, 10.0)]],
    )
    applied = sum(isinstance(RandomApply(augs, 0.3).get_transform(img), TransformList)
                  for _ in range(500))  # fmt: skip
    assert 110 < applied < 190
    with pytest.raises(ValueError, match=r"prob.*\[0, 1\].*1.5"):
        RandomApply(augs, 1.5)
    with pytest.raises(TypeError, match="list"):
        RandomApply(augs[0], 0.5)
