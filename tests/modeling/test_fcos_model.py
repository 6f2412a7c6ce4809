import pytest
import torch

import assigndet.modeling.meta_arch.fcos  # noqa: F401  (registers FCOS)
from assigndet.modeling import build_model
from assigndet.modeling.meta_arch.fcos import FCOS, compute_locations
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

NUM_CLASSES = 3


def _tiny_cfg():
    return tiny_dense_detector_cfg("FCOS", NUM_CLASSES, fpn_channels=32, top_levels=2)


def _batch():
    return random_detection_batch(
        [(64, 80), (56, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 76.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]],
        [[0, 2], [1]],
        output_scale=2,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_tiny_cfg())


def test_compute_locations_are_cell_centres():
    (p3, p4) = compute_locations([(2, 3), (1, 2)], [8, 16], torch.device("cpu"))
    assert p3.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert p4.tolist() == [[8, 8], [24, 8]]


def test_training_forward_gives_finite_losses_and_gradients(model):
    model.train()
    losses = model(_batch())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    model.zero_grad()
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.head.scales[0].scale.grad is not None
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_training_without_instances_is_an_error(model):
    model.train()
    batch = _batch()
    del batch[1]["instances"]
    with pytest.raises(KeyError, match=r"FCOS training inputs \[1\] have no 'instances'"):
        model(batch)


def test_inference_at_the_output_size(model):
    model.eval()
    doubled = [{"image": x["image"], "height": x["height"], "width": x["width"]} for x in _batch()]
    same = [{"image": x["image"]} for x in doubled]  # no output size: the input size
    model.score_threshold = 0.0  # the untrained classifier is below the default threshold
    try:
        with torch.no_grad():
            outputs, at_input_size = model(doubled), model(same)
    finally:
        model.score_threshold = 0.05
    assert len(outputs) == 2
    for out, ref, x in zip(outputs, at_input_size, doubled):
        inst, ref = out["instances"], ref["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert ref.image_size == tuple(x["image"].shape[-2:])
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= model.max_detections_per_image
        assert inst.pred_classes.dtype == torch.int64
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        boxes = inst.pred_boxes
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= x["width"]).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= x["height"]).all()
        # height and width were doubled: the same detections with boxes scaled by 2
        assert torch.allclose(boxes, ref.pred_boxes * 2, atol=1e-4)
        assert torch.equal(inst.scores, ref.scores)
        assert torch.equal(inst.pred_classes, ref.pred_classes)


def test_untrained_model_detects_nothing_at_the_default_threshold(model):
    model.eval()
    batch = _batch()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    # sigmoid(prior bias) = 0.01 < 0.05; no "height"/"width" means the input size
    assert [len(o["instances"]) for o in outputs] == [0, 0]
    assert outputs[0]["instances"].image_size == (64, 80)


def test_sgd_steps_on_one_batch_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg())
    model.train()
    batch = _batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(5):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.8 * totals[0], totals


def test_explicit_constructor_matches_config():
    cfg = _tiny_cfg()
    kwargs = FCOS.from_config(cfg)
    kwargs["score_threshold"] = 0.3
    model = FCOS(**kwargs)
    assert model.score_threshold == 0.3
    assert model.size_ranges[-1] == (512.0, float("inf"))
    assert "pixel_mean" not in model.state_dict()
    kwargs["norm_reg_targets"] = False
    with pytest.raises(ValueError, match="head was built with norm_reg_targets=True"):
        FCOS(**kwargs)


def test_config_errors():
    cfg = _tiny_cfg()
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 64]
    with pytest.raises(ValueError, match=r"FPN_STRIDES \[8, 16, 32, 64, 64\] do not match"):
        build_model(cfg)
    cfg = _tiny_cfg()
    cfg.MODEL.FCOS.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    with pytest.raises(ValueError, match=r"names \['p2'\]"):
        build_model(cfg)
    cfg = _tiny_cfg()
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256]
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST"):
        build_model(cfg)
