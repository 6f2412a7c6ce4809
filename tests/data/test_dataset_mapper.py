import numpy as np
import pytest
import torch
from PIL import Image

from assigndet.config import get_cfg
from assigndet.data import DatasetMapper, read_image
from assigndet.data.dataset_mapper import build_augmentation
from assigndet.data.transforms import (
    Augmentation,
    CropTransform,
    RandomApply,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
)
from assigndet.structures import BoxMode

RED, GREEN, GREY = (0, 0, 255), (0, 255, 0), (90, 90, 90)  # BGR


def _scene(files, tmp_path):
    """A 60x90 grey image with a red block [10, 5, 40, 25) and a green one [60, 30, 85, 55)."""
    path = files.image(
        tmp_path / "scene.png",
        60,
        90,
        [(10, 5, 40, 25, RED), (60, 30, 85, 55, GREEN)],
        background=GREY,
    )
    return {
        "file_name": str(path),
        "height": 60,
        "width": 90,
        "image_id": 7,
        "annotations": [
            {"bbox": [10, 5, 30, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [60, 30, 85, 55], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
             "iscrowd": 0},
        ],
    }  # fmt: skip


def _check_boxes_on_objects(out, colours_rgb_or_bgr):
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    inst = out["instances"]
    assert inst.gt_boxes.dtype == torch.float32 and inst.gt_classes.dtype == torch.int64
    assert inst.image_size == tuple(image.shape[:2])
    for box, cls in zip(inst.gt_boxes.tolist(), inst.gt_classes.tolist()):
        x0, y0, x1, y1 = box
        # Pixels well inside the box are the object's colour (bilinear blurs the edges).
        inner = image[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
        assert inner.size > 0
        assert (np.abs(inner - colours_rgb_or_bgr[cls]) <= 2).all(), (box, cls)
        # Two pixels outside each side (where inside the image), the colour is gone.
        h, w = image.shape[:2]
        cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
        outside = [(cy, int(x0) - 2), (cy, int(x1) + 1), (int(y0) - 2, cx), (int(y1) + 1, cx)]
        for y, x in outside:
            if 0 <= y < h and 0 <= x < w:
                assert not (np.abs(image[y, x] - colours_rgb_or_bgr[cls]) <= 2).all(), (box, y, x)


@pytest.mark.parametrize("flip", ["horizontal", "vertical", None])
def test_boxes_stay_on_objects_after_resize_and_flip(files, tmp_path, flip):
    d = _scene(files, tmp_path)
    augs = [ResizeShortestEdge((120,), 1000, "choice")]
    if flip:
        augs.append(RandomFlip(1.0, horizontal=flip == "horizontal", vertical=flip == "vertical"))
    mapper = DatasetMapper(None, True, augmentations=augs, image_format="BGR")
    out = mapper(d)
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 120, 180)
    assert (out["height"], out["width"], out["image_id"]) == (60, 90, 7)
    assert out["file_name"] == d["file_name"]
    boxes = out["instances"].gt_boxes
    expected = torch.tensor([[20.0, 10.0, 80.0, 50.0], [120.0, 60.0, 170.0, 110.0]])
    if flip == "horizontal":
        expected[:, [0, 2]] = 180 - expected[:, [2, 0]]
    elif flip == "vertical":
        expected[:, [1, 3]] = 120 - expected[:, [3, 1]]
    torch.testing.assert_close(boxes, expected)
    _check_boxes_on_objects(out, {0: np.array(RED), 1: np.array(GREEN)})
    assert "annotations" not in d or len(d["annotations"]) == 2  # the input is left intact


def test_rgb_format_and_shrinking(files, tmp_path):
    d = _scene(files, tmp_path)
    augs = [ResizeShortestEdge((45,), 1000, "choice")]
    out = DatasetMapper(None, True, augmentations=augs, image_format="RGB")(d)
    assert tuple(out["image"].shape) == (3, 45, 68)  # 90 * 0.75 = 67.5 -> 68
    _check_boxes_on_objects(out, {0: np.array(RED[::-1]), 1: np.array(GREEN[::-1])})


def test_crowd_and_degenerate_boxes_are_not_targets(files, tmp_path):
    d = _scene(files, tmp_path)
    d["annotations"] += [
        {"bbox": [0, 0, 30, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 1},
        # Entirely right of the image: nothing left after clipping.
        {"bbox": [95, 10, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
        # Sticks out at the bottom: clipped to the image.
        {"bbox": [5, 50, 10, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 4},
    ]
    mapper = DatasetMapper(None, True, augmentations=[], image_format="BGR")
    inst = mapper(d)["instances"]
    assert inst.gt_classes.tolist() == [0, 1, 4]
    torch.testing.assert_close(inst.gt_boxes[2], torch.tensor([5.0, 50.0, 15.0, 60.0]))


def test_no_annotations_gives_empty_instances(files, tmp_path):
    d = _scene(files, tmp_path)
    d["annotations"] = []
    inst = DatasetMapper(None, True, augmentations=[], image_format="BGR")(d)["instances"]
    assert inst.gt_boxes.shape == (0, 4) and inst.gt_classes.shape == (0,)


def test_from_config_train_and_test(files, tmp_path):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (30, 40)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 90
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.INPUT.RANDOM_FLIP = "none"
    d = _scene(files, tmp_path)
    train = DatasetMapper(cfg, True)
    assert [type(a) for a in train.augmentations] == [ResizeShortestEdge]
    shorts = {train(d)["image"].shape[1] for _ in range(20)}
    assert shorts <= set(range(30, 41)) and len(shorts) > 1

    out = DatasetMapper(cfg, False)(d)
    assert "instances" not in out and "annotations" not in out
    assert tuple(out["image"].shape) == (3, 67, 100)  # short side 90 capped by the long side
    assert (out["height"], out["width"]) == (60, 90)

    explicit = DatasetMapper(**DatasetMapper.from_config(cfg, True))
    assert explicit.is_train and explicit.image_format == "BGR"
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ValueError, match="RANDOM_FLIP.*diagonal"):
        DatasetMapper(cfg, True)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.FORMAT = "YUV"
    with pytest.raises(ValueError, match="INPUT.FORMAT.*YUV"):
        DatasetMapper(cfg, True)
    with pytest.raises(TypeError, match="cfg"):
        DatasetMapper(None, True)


def test_missing_image_names_path_and_id(files, tmp_path):
    d = _scene(files, tmp_path)
    d["file_name"] = str(tmp_path / "gone.png")
    mapper = DatasetMapper(None, True, augmentations=[], image_format="BGR")
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*image_id 7"):
        mapper(d)


def test_size_mismatch_names_file(files, tmp_path):
    d = _scene(files, tmp_path)
    d["height"] = 61
    mapper = DatasetMapper(None, False, augmentations=[], image_format="BGR")
    with pytest.raises(ValueError, match=r"scene\.png.*60x90.*61x90"):
        mapper(d)


def test_undecodable_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"Cannot decode.*bad\.jpg"):
        read_image(str(bad))


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 high x 40 wide with a white left band; orientation 6 means "rotate 90 degrees
    # clockwise to display", so the upright image is 40 x 20 with the band at the top.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    out = read_image(str(path), "RGB")
    assert out.shape == (40, 20, 3)
    assert out[:8].mean() > 200 and out[12:].mean() < 50
    assert read_image(str(path), "L").shape == (40, 20, 1)


class _FixedCrop(Augmentation):
    def __init__(self, x0, y0, w, h):
        self.args = (x0, y0, w, h)

    def get_transform(self, image):
        return CropTransform(*self.args)


def test_crop_clips_cut_boxes_and_drops_those_outside(files, tmp_path):
    d = _scene(files, tmp_path)
    d["annotations"].append(  # overlaps the red block and the crop's left edge
        {"bbox": [30, 40, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2}
    )
    # Columns [45, 90) of the 60x90 image: the red block [10, 40) is gone, the green one stays,
    # the third box [30, 50) keeps [45, 50). Then the 60x45 crop is resized to 160x120.
    augs = [_FixedCrop(45, 0, 45, 60), ResizeShortestEdge((120,), 1000, "choice")]
    out = DatasetMapper(None, True, augmentations=augs, image_format="BGR")(d)
    assert tuple(out["image"].shape) == (3, 160, 120)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [1, 2]
    scale = 120 / 45
    expected = torch.tensor([[15.0, 30.0, 40.0, 55.0], [0.0, 40.0, 5.0, 50.0]]) * scale
    torch.testing.assert_close(inst.gt_boxes, expected)
    green_only = {**out, "instances": inst[inst.gt_classes == 1]}
    _check_boxes_on_objects(green_only, {1: np.array(GREEN)})


def test_build_augmentation_with_crop():
    cfg = get_cfg()
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = [384, 600]
    augs = build_augmentation(cfg, True)  # detectron2's: always crop, then resize, then flip
    assert [type(a) for a in augs] == [RandomCrop, ResizeShortestEdge, RandomFlip]
    assert augs[0].crop_size == (384, 600) and augs[1].max_size == 1333

    cfg.INPUT.CROP.PROBABILITY = 0.5
    cfg.INPUT.CROP.RESIZE_BEFORE = [400, 500, 600]
    augs = build_augmentation(cfg, True)
    assert [type(a) for a in augs] == [RandomApply, ResizeShortestEdge, RandomFlip]
    branch = augs[0]
    assert branch.prob == 0.5
    assert [type(a) for a in branch.augmentations] == [ResizeShortestEdge, RandomCrop]
    before = branch.augmentations[0]
    assert before.short_edge_length == (400, 500, 600) and before.sample_style == "choice"
    assert before.get_output_shape(100, 1000, 400, before.max_size) == (400, 4000)  # no cap
    assert [type(a) for a in build_augmentation(cfg, False)] == [ResizeShortestEdge]

    cfg.INPUT.CROP.PROBABILITY = 1.5
    with pytest.raises(ValueError, match=r"INPUT.CROP.PROBABILITY.*1.5"):
        build_augmentation(cfg, True)
    cfg.INPUT.CROP.PROBABILITY = 0.5
    cfg.INPUT.CROP.RESIZE_BEFORE = [400, 0]
    with pytest.raises(ValueError, match=r"INPUT.CROP.RESIZE_BEFORE.*\[400, 0\]"):
        build_augmentation(cfg, True)
    cfg.INPUT.CROP.RESIZE_BEFORE = []
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [0.5, 0.5]
    with pytest.raises(ValueError, match=r"INPUT.CROP.SIZE.*'absolute'.*\[0.5, 0.5\]"):
        build_augmentation(cfg, True)


def test_mapper_with_crop_from_config_keeps_exactly_the_visible_objects(files, tmp_path):
    d = _scene(files, tmp_path)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)  # no final resize: boxes stay on whole pixels
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.PROBABILITY = 0.5
    cfg.INPUT.CROP.RESIZE_BEFORE = [60, 120]  # x1 or x2
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = [30, 50]
    mapper = DatasetMapper(cfg, True)
    colours = {0: np.array(RED), 1: np.array(GREEN)}
    np.random.seed(0)
    cropped = dropped = 0
    for _ in range(40):
        out = mapper(d)
        image = out["image"].permute(1, 2, 0).numpy().astype(int)
        cropped += image.shape[:2] != (60, 90)
        inst = out["instances"]
        assert inst.image_size == image.shape[:2]
        dropped += len(inst) < 2
        for cls, colour in colours.items():
            # Pixels of the object's colour must be exactly the pixels of its box, if kept. x2
            # upsampling blends edges: pixels inside keep >= 56 % of the object (channel error
            # <= 72), those outside <= 25 % (error >= 124).
            expected = np.zeros(image.shape[:2], dtype=bool)
            for box in inst.gt_boxes[inst.gt_classes == cls].tolist():
                x0, y0, x1, y1 = (int(v) for v in box)
                assert [x0, y0, x1, y1] == box and x1 > x0 and y1 > y0
                expected[y0:y1, x0:x1] = True
            assert ((np.abs(image - colour).max(axis=2) <= 100) == expected).all(), (cls, inst)
    assert 10 < cropped < 30 and dropped > 0
