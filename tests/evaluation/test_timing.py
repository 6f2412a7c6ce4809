import pytest
import torch
from torch import nn

import assigndet.projects  # noqa: F401  (registers FCOS_PSS)
from assigndet.evaluation.timing import run_inference_stages, time_inference
from assigndet.modeling import build_model
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg


def _tiny_model(meta_architecture: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = tiny_dense_detector_cfg(meta_architecture)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # keep candidates so NMS has work
    return build_model(cfg).eval()


def _batches() -> list[list[dict]]:
    batch = random_detection_batch([(64, 96), (80, 64)], [[], []], [[], []], output_scale=1.5)
    return [batch[:1], batch[1:]]


@pytest.mark.parametrize("meta_architecture", ["FCOS", "FCOS_PSS"])
def test_inference_stages_give_exactly_the_forward(meta_architecture):
    """The two timed stages (network, post-processing) in a row give the model's output."""
    model = _tiny_model(meta_architecture)
    batch = _batches()[0]
    assert [name for name, _ in model.inference_stages()] == ["network", "postprocess"]
    with torch.no_grad():
        expected = model(batch)[0]["instances"]
        got = run_inference_stages(model, batch)[0]["instances"]
    assert len(got) == len(expected) > 0
    assert got.image_size == expected.image_size == (96, 144)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_time_inference_splits_dense_detectors():
    model = _tiny_model("FCOS_PSS")
    with torch.no_grad():
        times = time_inference(model, _batches(), runs=3, num_iter=2, warmup=1)
    assert set(times) == {"total", "network", "postprocess"}
    for name, values in times.items():
        assert len(values) == 3, name
        assert all(t > 0 for t in values), name


def test_time_inference_gives_only_the_total_for_other_models():
    class Identity(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return [{"instances": None} for _ in batch]

    times = time_inference(Identity(), _batches(), runs=2, num_iter=3, warmup=0)
    assert set(times) == {"total"}
    assert len(times["total"]) == 2
