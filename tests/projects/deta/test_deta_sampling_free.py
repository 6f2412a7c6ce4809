"""DETA with MODEL.SAMPLING_FREE.ENABLED: cross-entropy classification, guided scaling of the
decoder and encoder classifiers, the prior counts and biases, and nothing changed when off."""

from __future__ import annotations

import math

import pytest
import torch
from test_deta_model import _tiny_deta_cfg as tiny_deta_cfg

from assigndet.layers import prior_bias
from assigndet.modeling import build_model
from assigndet.projects.deta.criterion import DETACriterion, deta_layer_losses
from assigndet.utils.events import EventStorage
from assigndet.utils.testing import random_detection_batch

LN3 = math.log(3.0)
GT_BOX = [0.3, 0.3, 0.2, 0.2]
OFF_BOX = [0.35, 0.3, 0.2, 0.2]  # L1 0.05 to GT_BOX
FAR_BOX = [0.9, 0.9, 0.05, 0.05]  # overlaps none of the GT boxes
BOX_KEYS = {f"loss_{n}{s}" for n in ("bbox", "giou") for s in ("", "_0", "_enc")}


def bce(z: float, t: int) -> float:
    """Sigmoid cross-entropy of one logit z with target t, written out."""
    return math.log1p(math.exp(-z)) if t else math.log1p(math.exp(z))


def bce_sum(logits: torch.Tensor, onehot: list[list[int]]) -> float:
    return sum(
        bce(float(z), t) for row, trow in zip(logits.tolist(), onehot) for z, t in zip(row, trow)
    )


def _tiny_cfg(*sf_opts):
    cfg = tiny_deta_cfg("iou")
    cfg.merge_from_list(list(sf_opts))
    return cfg


def _batch():
    # padded 80 x 96: levels 10x12, 5x6, 3x3 (80 / 32 rounds up), 2x2
    return random_detection_batch(
        [(64, 96), (80, 64)],
        [[[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 90.0, 60.0]], [[10.0, 10.0, 50.0, 70.0]]],
        [[0, 2], [1]],
    )


def outputs_of(final_boxes, aux_boxes, reference, anchors, enc_boxes, k=2, seed=0) -> dict:
    """Outputs of a 1-image model with the given boxes and seeded random logits (two background
    queries appended, so that stage 2's cap int(Q / 4) allows a positive)."""
    gen = torch.Generator().manual_seed(seed)
    final_boxes, reference = final_boxes + [FAR_BOX] * 2, reference + [FAR_BOX] * 2
    aux_boxes = [b + [FAR_BOX] * 2 for b in aux_boxes]
    q, s = len(final_boxes), len(anchors)

    def leaf(x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)[None].clone().requires_grad_(True)

    return {
        "pred_logits": leaf(torch.randn(q, k, generator=gen)),
        "pred_boxes": leaf(final_boxes),
        "init_reference": torch.tensor([reference]),
        "aux_outputs": [
            {"pred_logits": leaf(torch.randn(q, k, generator=gen)), "pred_boxes": leaf(b)}
            for b in aux_boxes
        ],
        "enc_outputs": {
            "pred_logits": leaf(torch.randn(s, k, generator=gen)),
            "pred_boxes": leaf(enc_boxes),
            "anchors": torch.tensor([anchors]),
        },
    }


def _one_gt_outputs():
    return outputs_of(
        final_boxes=[OFF_BOX, FAR_BOX],
        aux_boxes=[[GT_BOX, FAR_BOX]],
        reference=[GT_BOX, FAR_BOX],
        anchors=[GT_BOX, FAR_BOX, [0.7, 0.2, 0.1, 0.1]],
        enc_boxes=[OFF_BOX, GT_BOX, GT_BOX],
    )


ONE_GT = [{"labels": torch.tensor([1]), "boxes": torch.tensor([GT_BOX])}]


def test_sampling_free_layer_loss_is_sigmoid_ce_by_hand():
    # 3 queries, K = 2; query 0 <-> class 1, query 2 <-> class 0, query 1 background
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0], [-LN3, LN3]]], requires_grad=True)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], FAR_BOX, [0.25, 0.25, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([1, 0]), "boxes": boxes[0, [0, 2]].clone()}]
    pairs = [(torch.tensor([0, 2]), torch.tensor([0, 1]))]
    losses = deta_layer_losses(logits, boxes, pairs, targets, 2.0, sampling_free=True)
    expected = (
        math.log(2) + math.log(4 / 3)  # q0: logit 0 negative, p 0.75 positive
        + 2 * math.log(2)  # q1: two background logits 0
        + math.log(4) + math.log(4)  # q2: p 0.25 positive, p 0.75 negative
    )
    assert losses["loss_ce"].item() == pytest.approx(expected / 2, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    losses["loss_ce"].backward()
    p = torch.sigmoid(logits.detach())
    onehot = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    torch.testing.assert_close(logits.grad, (p - onehot) / 2)


def test_guided_losses_equal_delta_times_box_losses_and_log_raw_ce():
    crit = DETACriterion(num_classes=2, sampling_free=True, delta_clamp=(1e-2, 1e2))
    with torch.no_grad():
        crit.guided_dec.log_delta.fill_(math.log(2.0))
        crit.guided_enc.log_delta.fill_(math.log(0.5))
    out = _one_gt_outputs()
    with EventStorage() as storage:
        losses = crit(out, ONE_GT)
    assert set(losses) == BOX_KEYS | {"loss_ce_dec", "loss_ce_enc", "loss_delta_dec",
                                      "loss_delta_enc"}
    dec_loc = sum(losses[k] for k in BOX_KEYS if not k.endswith("_enc")).item()
    enc_loc = (losses["loss_bbox_enc"] + losses["loss_giou_enc"]).item()
    assert dec_loc > 0 and enc_loc > 0
    assert losses["loss_ce_dec"].item() == pytest.approx(2.0 * dec_loc, rel=1e-5)
    assert losses["loss_ce_enc"].item() == pytest.approx(0.5 * enc_loc, rel=1e-5)
    assert losses["loss_delta_dec"].item() == pytest.approx(-math.log(2.0), rel=1e-6)
    assert losses["loss_delta_enc"].item() == pytest.approx(-math.log(0.5), rel=1e-6)

    # the raw per-layer values: decoder query 0 <-> class 1 (pairs from the reference), the
    # encoder on channel 0 only with token 0 positive; N_box = 1
    raw = {k: storage.history(k).latest() for k in ("sf_deta_ce", "sf_deta_ce_0", "sf_deta_ce_enc")}
    dec_target = [[0, 1]] + [[0, 0]] * 3
    assert raw["sf_deta_ce"] == pytest.approx(bce_sum(out["pred_logits"][0].detach(), dec_target),
                                              rel=1e-5)
    aux = out["aux_outputs"][0]["pred_logits"][0].detach()
    assert raw["sf_deta_ce_0"] == pytest.approx(bce_sum(aux, dec_target), rel=1e-5)
    enc = out["enc_outputs"]["pred_logits"][0, :, :1].detach()
    assert raw["sf_deta_ce_enc"] == pytest.approx(bce_sum(enc, [[1], [0], [0]]), rel=1e-5)
    assert storage.history("sf_deta_dec_delta").latest() == pytest.approx(2.0, rel=1e-6)
    assert storage.history("sf_deta_dec_cls_raw").latest() == pytest.approx(
        raw["sf_deta_ce"] + raw["sf_deta_ce_0"], rel=1e-5
    )

    # gradient of the final layer's logits: g * delta * (sigmoid - y), g = dec_loc / sum CE
    sum(losses.values()).backward()
    g = dec_loc / (raw["sf_deta_ce"] + raw["sf_deta_ce_0"])
    y = torch.tensor([dec_target], dtype=torch.float32)
    expected = g * 2.0 * (torch.sigmoid(out["pred_logits"].detach()) - y)
    torch.testing.assert_close(out["pred_logits"].grad, expected, rtol=1e-4, atol=1e-7)
    # the encoder's unused channels get no gradient
    assert not out["enc_outputs"]["pred_logits"].grad[..., 1:].any()


def test_unguided_gives_raw_ce_times_class_weight_and_no_delta():
    crit = DETACriterion(num_classes=2, sampling_free=True, guided=False, weight_class=3.0)
    assert crit.guided_dec is None and not list(crit.parameters())
    out = _one_gt_outputs()
    with EventStorage() as storage:
        losses = crit(out, ONE_GT)
    assert set(losses) == BOX_KEYS | {"loss_ce_dec", "loss_ce_enc"}
    raw_dec = storage.history("sf_deta_ce").latest() + storage.history("sf_deta_ce_0").latest()
    assert losses["loss_ce_dec"].item() == pytest.approx(3.0 * raw_dec, rel=1e-5)
    assert losses["loss_ce_enc"].item() == pytest.approx(
        3.0 * storage.history("sf_deta_ce_enc").latest(), rel=1e-5
    )


@pytest.mark.parametrize("matcher", ["iou", "hungarian"])
def test_batch_without_gt_is_finite_with_a_gradient_on_delta(matcher):
    crit = DETACriterion(num_classes=2, matcher=matcher, sampling_free=True)
    out = _one_gt_outputs()
    if matcher == "hungarian":
        del out["init_reference"], out["enc_outputs"]["anchors"]
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = crit(out, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce_dec"].item() > 0  # the ratio falls back to 1: delta * CE
    sum(losses.values()).backward()
    for guide in (crit.guided_dec, crit.guided_enc):
        grad = guide.log_delta.grad
        assert grad is not None and torch.isfinite(grad) and grad != 0
    assert torch.isfinite(out["pred_logits"].grad).all() and out["pred_logits"].grad.any()


def test_prior_counts_on_a_hand_built_case():
    anchors = torch.tensor([[GT_BOX, FAR_BOX, [0.7, 0.2, 0.1, 0.1]]] * 2)  # B = 2, S = 3
    targets = [
        ONE_GT[0],
        {"labels": torch.tensor([0, 1, 2]),
         "boxes": torch.tensor([GT_BOX, [0.7, 0.2, 0.1, 0.1], [0.7, 0.2, 0.11, 0.1]])},
    ]
    crit = DETACriterion(num_classes=3, sampling_free=True)
    counts = crit.sampling_free_prior_counts(anchors, targets, num_queries=20)
    # encoder: image 0 token 0; image 1 token 0 and token 2 (paired with two GTs, counted once)
    assert [float(x) for x in counts["deta_enc"]] == [3.0, 6.0]
    # decoder: min(G * 4, int(20 * 0.25) = 5) per image = 4 + 5, of 2 * 20 * 3 outputs
    assert [float(x) for x in counts["deta_dec"]] == [9.0, 120.0]
    assert all(x.dtype == torch.float64 for pair in counts.values() for x in pair)
    # no balancing: one positive per GT (its low-quality match) on the decoder
    unbalanced = DETACriterion(num_classes=3, max_k=None).sampling_free_prior_counts(
        anchors, targets, num_queries=20
    )
    assert float(unbalanced["deta_dec"][0]) == 4.0
    # Hungarian: one-to-one, exact
    hungarian = DETACriterion(num_classes=3, matcher="hungarian").sampling_free_prior_counts(
        anchors, targets, num_queries=2
    )
    assert [float(x) for x in hungarian["deta_enc"]] == [1.0 + 3.0, 6.0]
    assert [float(x) for x in hungarian["deta_dec"]] == [1.0 + 2.0, 12.0]


def test_tiny_deta_sampling_free_trains_and_counts_on_the_real_anchors(monkeypatch):
    torch.manual_seed(0)
    model = build_model(_tiny_cfg("MODEL.SAMPLING_FREE.ENABLED", True))
    assert {k for k in model.state_dict() if k.startswith("criterion.")} == {
        "criterion.guided_dec.log_delta", "criterion.guided_enc.log_delta"
    }
    seen = {}
    forward = model.criterion.forward

    def spy_forward(outputs, targets):
        seen["anchors"] = outputs["enc_outputs"]["anchors"].detach()
        return forward(outputs, targets)

    monkeypatch.setattr(model.criterion, "forward", spy_forward)
    batch = _batch()
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == BOX_KEYS | {"loss_ce_dec", "loss_ce_enc", "loss_delta_dec",
                                      "loss_delta_enc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.criterion.guided_dec.log_delta.grad is not None
    assert model.class_embed[0].weight.grad.any() and model.class_embed[-1].weight.grad.any()

    # the prior counts see exactly the anchors of the forward, without running the network
    counted = {}
    counts_fn = model.criterion.sampling_free_prior_counts

    def spy_counts(anchors, targets, num_queries):
        counted["anchors"], counted["num_queries"] = anchors, num_queries
        return counts_fn(anchors, targets, num_queries)

    monkeypatch.setattr(model.criterion, "sampling_free_prior_counts", spy_counts)
    monkeypatch.setattr(model.backbone, "forward", lambda *a: pytest.fail("network ran"))
    with torch.no_grad():
        counts = model.sampling_free_prior_counts(batch)
    assert seen["anchors"].shape == (2, 120 + 30 + 9 + 4, 4)
    assert torch.equal(counted["anchors"], seen["anchors"]) and counted["num_queries"] == 20
    assert set(counts) == {"deta_dec", "deta_enc"}
    # decoder: min(2 * 4, 5) + min(1 * 4, 5) positives of 2 images x 20 queries x 3 classes
    assert [float(x) for x in counts["deta_dec"]] == [9.0, 120.0]
    fg, total = (float(x) for x in counts["deta_enc"])
    assert total == 2 * 163 and 3 <= fg <= 12


def test_priors_set_the_biases_and_construction_follows_the_switches():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg("MODEL.SAMPLING_FREE.ENABLED", True))
    model.set_sampling_free_prior({"deta_dec": 1e-3, "deta_enc": 0.02})
    for head in model.class_embed[:2]:
        torch.testing.assert_close(head.bias, torch.full((3,), prior_bias(1e-3)))
    torch.testing.assert_close(model.class_embed[2].bias, torch.full((3,), prior_bias(0.02)))
    with pytest.raises(KeyError, match="unknown classifiers"):
        model.set_sampling_free_prior({"deta": 0.1})

    fixed = build_model(_tiny_cfg("MODEL.SAMPLING_FREE.ENABLED", True,
                                  "MODEL.SAMPLING_FREE.PRIOR_PROB", 1e-4))
    for head in fixed.class_embed:
        torch.testing.assert_close(head.bias, torch.full((3,), prior_bias(1e-4)))
    flat = build_model(_tiny_cfg("MODEL.SAMPLING_FREE.ENABLED", True,
                                 "MODEL.SAMPLING_FREE.PRIOR_INIT", False,
                                 "MODEL.SAMPLING_FREE.GUIDED", False))
    assert all(not head.bias.any() for head in flat.class_embed)
    assert flat.sampling_free_prior_counts(_batch()) == {}
    assert not any(k.startswith("criterion.") for k in flat.state_dict())


def test_disabled_is_unchanged_whatever_the_other_keys():
    def run(*opts):
        torch.manual_seed(0)
        model = build_model(_tiny_cfg(*opts)).train()
        return model, model(_batch())

    base, base_losses = run()
    other, other_losses = run("MODEL.SAMPLING_FREE.PRIOR_PROB", 1e-4,
                              "MODEL.SAMPLING_FREE.PRIOR_INIT", False,
                              "MODEL.SAMPLING_FREE.GUIDED", False)
    assert set(base_losses) == {f"loss_{k}{s}" for k in ("ce", "bbox", "giou")
                                for s in ("", "_0", "_enc")}
    assert base_losses.keys() == other_losses.keys()
    for key in base_losses:
        assert torch.equal(base_losses[key], other_losses[key])
    assert base.state_dict().keys() == other.state_dict().keys()
    assert not any(k.startswith("criterion.") for k in base.state_dict())
    for head in base.class_embed:
        torch.testing.assert_close(head.bias, torch.full((3,), -math.log(99.0)))
