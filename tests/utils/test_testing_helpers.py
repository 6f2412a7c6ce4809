import pytest

from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg


def test_tiny_cfg_levels_and_error():
    assert tiny_dense_detector_cfg(top_levels=0).MODEL.FCOS.IN_FEATURES == ["p3", "p4", "p5"]
    assert len(tiny_dense_detector_cfg(top_levels=2).MODEL.FCOS.IN_FEATURES) == 5
    with pytest.raises(ValueError, match=r"top_levels must be 0 \(P3-P5\) or 2 \(P3-P7\); got 1"):
        tiny_dense_detector_cfg(top_levels=1)


def test_random_batch_shapes_and_output_size():
    batch = random_detection_batch([(8, 12)], [[[1.0, 2.0, 5.0, 6.0]]], [[2]], output_scale=2)
    assert batch[0]["image"].shape == (3, 8, 12)
    assert (batch[0]["height"], batch[0]["width"]) == (16, 24)
    assert batch[0]["instances"].gt_classes.tolist() == [2]
