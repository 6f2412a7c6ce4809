import pytest
import torch

from assigndet.modeling.postprocessing import detector_postprocess
from assigndet.structures import Instances


def test_rescale_clip_and_drop_empty():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [90.0, 40.0, 120.0, 60.0], [100.0, 0, 100, 9]])
    results = Instances(
        (50, 100),
        pred_boxes=boxes,
        scores=torch.tensor([0.9, 0.8, 0.7]),
        pred_classes=torch.tensor([0, 1, 2]),
    )
    out = detector_postprocess(results, 100, 150)  # y x2, x x1.5
    assert out.image_size == (100, 150)
    assert torch.allclose(
        out.pred_boxes, torch.tensor([[15.0, 10.0, 45.0, 50.0], [135.0, 80.0, 150.0, 100.0]])
    )
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])
    assert out.pred_classes.tolist() == [0, 1]
    # the input is left untouched
    assert torch.equal(results.pred_boxes, boxes)


def test_empty_results_and_bad_sizes():
    empty = Instances((20, 20), pred_boxes=torch.zeros(0, 4), scores=torch.zeros(0))
    out = detector_postprocess(empty, 40, 40)
    assert len(out) == 0 and out.image_size == (40, 40)
    with pytest.raises(ValueError, match="positive sizes"):
        detector_postprocess(empty, 0, 40)
