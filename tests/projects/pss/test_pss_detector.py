import pytest
import torch

from assigndet.modeling import build_model
from assigndet.projects.pss.detector import top_detections
from assigndet.utils.testing import random_detection_batch, tiny_dense_detector_cfg

NUM_CLASSES = 3


def _tiny_cfg(meta_arch="FCOS_PSS", **overrides):
    cfg = tiny_dense_detector_cfg(meta_arch, NUM_CLASSES)
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _batch():
    return random_detection_batch(
        [(64, 96), (64, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], [[10.0, 8.0, 50.0, 50.0]]],
        [[0, 2], [1]],
    )


def _build(meta_arch="FCOS_PSS", **overrides):
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(meta_arch, **overrides))
    # boxes of one stride each way, so that no untrained detection is empty after clipping
    torch.nn.init.constant_(model.head.bbox_pred.bias, 1.0)
    return model


def _pss_grads(model):
    """Gradients of the PSS losses alone, by parameter name (None when none reached it)."""
    model.train()
    model.zero_grad()
    losses = model(_batch())
    (losses["loss_pss"] + losses["loss_pss_rank"]).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _reached(grads, prefix):
    found = [g for n, g in grads.items() if n.startswith(prefix)]
    assert found, prefix
    return any(g is not None and g.abs().sum() > 0 for g in found)


@pytest.mark.parametrize("meta_arch", ["FCOS_PSS", "ATSS_PSS"])
def test_training_returns_base_and_pss_losses(meta_arch):
    model = _build(meta_arch)
    model.train()
    losses = model(_batch())
    base = "fcos" if meta_arch == "FCOS_PSS" else "atss"
    assert set(losses) == {f"loss_{base}_cls", f"loss_{base}_loc", f"loss_{base}_ctr", "loss_pss",
                           "loss_pss_rank"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    assert model.pss_head.pss_logits.weight.grad.abs().sum() > 0


def test_stop_gradient_keeps_pss_loss_out_of_the_towers():
    # With the score factors detached, the PSS losses can reach the detector only through the
    # PSS convs' input: the stop-gradient must leave every base parameter without gradient.
    grads = _pss_grads(_build(**{"MODEL.PSS.DETACH_SCORE_FACTORS": True}))
    assert _reached(grads, "pss_head.")
    for prefix in ("head.", "backbone."):
        assert not _reached(grads, prefix), prefix

    grads = _pss_grads(_build(**{"MODEL.PSS.DETACH_SCORE_FACTORS": True,
                                 "MODEL.PSS.STOP_GRADIENT": False}))
    assert _reached(grads, "head.bbox_tower.") and _reached(grads, "backbone.")
    assert not _reached(grads, "head.cls_tower.")


def test_default_lets_pss_loss_reach_the_score_factors_only():
    grads = _pss_grads(_build())
    # sigma(cls) and sigma(ctr) stay attached inside P (the fact sheet's reading of the paper)
    assert _reached(grads, "head.cls_logits.") and _reached(grads, "head.ctrness.")
    # the box predictor is not in P, and nothing flows back through the PSS convs' input
    assert not _reached(grads, "head.bbox_pred.")
    no_stop = _pss_grads(_build(**{"MODEL.PSS.STOP_GRADIENT": False}))
    tower = [n for n in grads if n.startswith("head.bbox_tower.")]
    assert any(not torch.allclose(grads[n], no_stop[n]) for n in tower)


def test_top_detections_hand_case():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    strides = torch.tensor([8.0, 8.0])
    box_reg = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 1.0, 2.0]]])
    scores = torch.tensor([[[0.1, 0.6], [0.9, 0.2]]])
    boxes, top_scores, classes = top_detections(points, strides, box_reg, scores.log(), 3)
    assert classes.tolist() == [[0, 1, 1]]
    assert top_scores[0].tolist() == pytest.approx([0.9, 0.6, 0.2])
    expected = [[8.0, 0.0, 20.0, 20.0], [-4.0, -4.0, 12.0, 12.0], [8.0, 0.0, 20.0, 20.0]]
    assert boxes[0].tolist() == expected


def test_end_to_end_inference_is_the_top_scored_pairs_without_nms():
    model = _build(**{"TEST.DETECTIONS_PER_IMAGE": 50})
    model.eval()
    batch = _batch()[:1]  # no padding: every location lies inside the image
    with torch.no_grad():
        outputs = model(batch)
        images = model.preprocess_image(batch)
        locations, cls_logits, box_reg, ctr_logits, pss = model.predict(images)
        expected = pss.sigmoid()[..., None] * cls_logits.sigmoid() * ctr_logits.sigmoid()[..., None]
    for i, out in enumerate(outputs):
        inst = out["instances"]
        assert len(inst) == 50
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])
        top = expected[i].flatten().topk(50).values
        assert torch.allclose(inst.scores, top, rtol=1e-4)


def test_use_nms_runs_the_base_detector():
    pss = _build(**{"MODEL.PSS.USE_NMS": True})
    fcos = _build("FCOS")
    missing, unexpected = fcos.load_state_dict(pss.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("pss_head.") for k in unexpected)
    pss.eval()
    fcos.eval()
    with torch.no_grad():
        a, b = pss(_batch()), fcos(_batch())
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].scores, y["instances"].scores)
        assert torch.equal(x["instances"].pred_boxes, y["instances"].pred_boxes)


def test_train_only_pss_freezes_the_base_detector():
    model = _build(**{"MODEL.PSS.TRAIN_ONLY_PSS": True})
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("pss_head.") for n in trainable)
    assert not model.backbone.training and model.pss_head.training
    losses = model(_batch())
    assert set(losses) == {"loss_pss", "loss_pss_rank"}
    sum(losses.values()).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("pss_"))


def test_export_forward_matches_inference():
    model = _build()
    model.eval()
    image = _batch()[1]["image"]  # 64 x 64: a multiple of the largest stride
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
        boxes, scores, classes = model.export_forward(image[None].float())
    assert torch.allclose(boxes[0], expected.pred_boxes, atol=1e-4)
    assert torch.allclose(scores[0], expected.scores)
    assert torch.equal(classes[0], expected.pred_classes)


def test_unknown_matcher_is_named():
    model = _build(**{"MODEL.PSS.MATCHER": "greedy"})
    model.train()
    with pytest.raises(ValueError, match="MODEL.PSS.MATCHER"):
        model(_batch())
