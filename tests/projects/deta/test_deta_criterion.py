"""DETA's criterion on hand-computed cases: focal, L1 and GIoU terms, N_box normalisation,
binary encoder targets, pair reuse (IoU assignment) versus re-matching (Hungarian)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assigndet.projects.deta.criterion import (
    DETACriterion,
    deta_layer_losses,
    num_boxes_normaliser,
)

LN3 = math.log(3.0)
FAR_BOX = [0.9, 0.9, 0.05, 0.05]  # overlaps none of the GT boxes used below


def focal(z: float, t: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Focal loss of one logit z with target t, written out."""
    p = 1.0 / (1.0 + math.exp(-z))
    if t:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def focal_sum(logits: torch.Tensor, onehot: list[list[int]]) -> float:
    """Sum of the focal terms of a [N, K] logit matrix against a [N, K] 0/1 target."""
    return sum(
        focal(float(z), t) for row, trow in zip(logits.tolist(), onehot) for z, t in zip(row, trow)
    )


def pairs_of(*pairs: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    g = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return q, g


def hand_case():
    """One image, 3 queries, K = 2, GT 0 (class 1) and GT 1 (class 0).

    Query 0 <-> GT 0: pred (0.5, 0.5, 0.2, 0.4) vs (0.5, 0.5, 0.2, 0.2): L1 0.2; the GT lies
    inside the prediction, IoU = 0.04 / 0.08 = 0.5 and the enclosing box is the prediction, so
    1 - GIoU = 0.5.
    Query 2 <-> GT 1: pred (0.45, 0.25, 0.1, 0.1) = [0.4, 0.5] x [0.2, 0.3] vs GT
    [0.2, 0.3] x [0.2, 0.3]: L1 0.2; IoU 0, union 0.02, enclosing 0.03, GIoU = -1/3, so
    1 - GIoU = 4/3.
    Query 1 is background.
    """
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0], [-LN3, LN3]]], requires_grad=True)
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.4], FAR_BOX, [0.45, 0.25, 0.1, 0.1]]], requires_grad=True
    )
    targets = [
        {
            "labels": torch.tensor([1, 0]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]]),
        }
    ]
    return logits, boxes, [pairs_of((0, 0), (2, 1))], targets


# focal terms of the hand case, in closed form (sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25)
HAND_CE = (
    0.75 * 0.25 * math.log(2)  # q0 ch0: logit 0, background
    + 0.25 * 0.25**2 * math.log(4 / 3)  # q0 ch1: p 0.75, positive
    + 2 * 0.75 * 0.25 * math.log(2)  # q1: two background logits 0
    + 0.25 * 0.75**2 * math.log(4)  # q2 ch0: p 0.25, positive
    + 0.75 * 0.75**2 * math.log(4)  # q2 ch1: p 0.75, background
)
HAND_L1 = 0.2 + 0.2
HAND_GIOU = 0.5 + 4 / 3


def test_layer_losses_hand_computed():
    logits, boxes, pairs, targets = hand_case()
    losses = deta_layer_losses(logits, boxes, pairs, targets, num_boxes=2.0)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_ce"].item() == pytest.approx(HAND_CE / 2, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1 / 2, rel=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(HAND_GIOU / 2, rel=1e-5)
    sum(losses.values()).backward()
    # the background query gets a class gradient but no box gradient
    assert logits.grad[0, 1].abs().sum() > 0
    assert torch.equal(boxes.grad[0, 1], torch.zeros(4))


def test_normalised_by_gt_count_not_by_positives():
    logits, boxes, pairs, targets = hand_case()
    # a third GT that no query is paired with: same terms, divided by 3 instead of 2
    targets[0]["labels"] = torch.tensor([1, 0, 1])
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], torch.tensor([[0.7, 0.3, 0.1, 0.1]])])
    num_boxes = num_boxes_normaliser(targets, logits.device)
    assert num_boxes.item() == 3.0
    losses = deta_layer_losses(logits, boxes, pairs, targets, num_boxes)
    assert losses["loss_ce"].item() == pytest.approx(HAND_CE / 3, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(HAND_L1 / 3, rel=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(HAND_GIOU / 3, rel=1e-5)


def test_num_boxes_counts_the_batch_and_clamps_at_one():
    def t(g: int) -> dict:
        return {"labels": torch.zeros(g, dtype=torch.int64), "boxes": torch.rand(g, 4)}

    assert num_boxes_normaliser([t(2), t(1), t(0)], torch.device("cpu")).item() == 3.0
    assert num_boxes_normaliser([t(0), t(0)], torch.device("cpu")).item() == 1.0


def test_query_paired_with_two_gts_keeps_last_label_and_adds_both_box_terms():
    logits = torch.tensor([[[LN3, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    gt = [[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.4]]
    boxes = torch.tensor([[gt[0], FAR_BOX, FAR_BOX]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor(gt)}]
    background = 4 * focal(0.0, 0)  # queries 1 and 2
    # GT 1 (class 1) written last: query 0's target is [0, 1]
    losses = deta_layer_losses(logits, boxes, [pairs_of((0, 0), (0, 1))], targets, 2.0)
    assert losses["loss_ce"].item() == pytest.approx(
        (focal(LN3, 0) + focal(0.0, 1) + background) / 2, rel=1e-6
    )
    # box terms: exact match with GT 0 (0, 0) plus L1 0.2 and 1 - GIoU 0.5 with GT 1
    assert losses["loss_bbox"].item() == pytest.approx(0.2 / 2, rel=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.5 / 2, rel=1e-5)
    # GT 0 (class 0) written last: query 0's target is [1, 0]
    swapped = deta_layer_losses(logits, boxes, [pairs_of((0, 1), (0, 0))], targets, 2.0)
    assert swapped["loss_ce"].item() == pytest.approx(
        (focal(LN3, 1) + focal(0.0, 0) + background) / 2, rel=1e-6
    )
    # a duplicated pair counts twice
    twice = deta_layer_losses(logits, boxes, [pairs_of((0, 1), (0, 1))], targets, 2.0)
    assert twice["loss_bbox"].item() == pytest.approx(2 * 0.2 / 2, rel=1e-6)


GT_BOX = [0.3, 0.3, 0.2, 0.2]
OFF_BOX = [0.35, 0.3, 0.2, 0.2]  # shifted by 0.05: L1 0.05 to GT_BOX


def model_outputs(
    final_boxes, aux_boxes, reference, anchors, enc_boxes, k: int = 2, seed: int = 0
) -> dict:
    """Outputs of a 1-image model with the given per-query boxes and seeded random logits.

    Two background queries (FAR_BOX everywhere) are appended to the decoder's: stage 2 keeps at
    most int(Q * 0.25) positives, so Q = 4 is the least that allows one.
    """
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


ONE_GT = [{"labels": torch.tensor([1]), "boxes": torch.tensor([GT_BOX])}]


def test_encoder_uses_binary_targets_on_channel_zero():
    # anchor 0 is the GT box (IoU 1), the others overlap nothing: the only stage-1 pair is (0, 0)
    out = model_outputs(
        final_boxes=[GT_BOX, FAR_BOX],
        aux_boxes=[],
        reference=[GT_BOX, FAR_BOX],
        anchors=[GT_BOX, FAR_BOX, [0.7, 0.2, 0.1, 0.1]],
        enc_boxes=[OFF_BOX, GT_BOX, GT_BOX],
    )
    losses = DETACriterion(num_classes=2)(out, ONE_GT)
    enc_logits = out["enc_outputs"]["pred_logits"][0].detach()
    # the GT is class 1, but the encoder target is channel 0 of token 0
    expected_ce = focal_sum(enc_logits, [[1, 0], [0, 0], [0, 0]])
    assert losses["loss_ce_enc"].item() == pytest.approx(1.0 * expected_ce, rel=1e-5)
    assert losses["loss_bbox_enc"].item() == pytest.approx(5.0 * 0.05, rel=1e-5)
    # IoU of OFF_BOX with GT_BOX: overlap 0.15 x 0.2 over union 0.05, no enclosing gap
    assert losses["loss_giou_enc"].item() == pytest.approx(2.0 * (1 - 0.03 / 0.05), rel=1e-5)
    # the decoder target of the same GT is channel 1
    dec_logits = out["pred_logits"][0].detach()
    assert losses["loss_ce"].item() == pytest.approx(
        focal_sum(dec_logits, [[0, 1]] + [[0, 0]] * 3), rel=1e-5
    )


def test_iou_mode_pairs_come_from_init_reference_and_serve_every_layer():
    # the reference puts query 0 on the GT; the final layer predicts query 1 on it instead
    common = dict(reference=[GT_BOX, FAR_BOX], anchors=[GT_BOX], enc_boxes=[GT_BOX])
    out = model_outputs(final_boxes=[OFF_BOX, GT_BOX], aux_boxes=[[GT_BOX, OFF_BOX]], **common)
    losses = DETACriterion(num_classes=2)(out, ONE_GT)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * 0.05, rel=1e-5)  # query 0, not 1
    assert losses["loss_bbox_0"].item() == pytest.approx(0.0, abs=1e-6)  # same pair, query 0
    # (1 - GIoU of a box with itself is ~5e-6, not 0: the 1e-7 eps of the paired GIoU)
    assert losses["loss_giou_0"].item() == pytest.approx(0.0, abs=1e-5)

    # aux layers identical to the final layer give identical losses
    same = model_outputs(final_boxes=[OFF_BOX, GT_BOX], aux_boxes=[], **common)
    same["aux_outputs"] = [
        {"pred_logits": same["pred_logits"], "pred_boxes": same["pred_boxes"]} for _ in range(5)
    ]
    losses = DETACriterion(num_classes=2)(same, ONE_GT)
    assert {k for k in losses if k[-1].isdigit()} == {
        f"loss_{n}_{t}" for n in ("ce", "bbox", "giou") for t in range(5)
    }
    for t in range(5):
        for name in ("loss_ce", "loss_bbox", "loss_giou"):
            assert torch.equal(losses[f"{name}_{t}"], losses[name])


def test_hungarian_mode_rematches_every_layer():
    common = dict(
        reference=[GT_BOX, FAR_BOX], anchors=[GT_BOX, FAR_BOX], enc_boxes=[FAR_BOX, GT_BOX]
    )
    out = model_outputs(final_boxes=[GT_BOX, FAR_BOX], aux_boxes=[[FAR_BOX, GT_BOX]], **common)
    del out["init_reference"], out["enc_outputs"]["anchors"]  # not needed without IoU assignment
    losses = DETACriterion(num_classes=2, matcher="hungarian")(out, ONE_GT)
    # each layer is matched to the query that sits on the GT: zero box losses everywhere
    for suffix in ("", "_0", "_enc"):
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(0.0, abs=1e-6)
        assert losses[f"loss_giou{suffix}"].item() == pytest.approx(0.0, abs=1e-5)
    aux_logits = out["aux_outputs"][0]["pred_logits"][0].detach()
    assert losses["loss_ce_0"].item() == pytest.approx(
        focal_sum(aux_logits, [[0, 0], [0, 1]] + [[0, 0]] * 2), rel=1e-5
    )
    # binary encoder targets: token 1 on channel 0
    enc_logits = out["enc_outputs"]["pred_logits"][0].detach()
    assert losses["loss_ce_enc"].item() == pytest.approx(
        focal_sum(enc_logits, [[0, 0], [1, 0]]), rel=1e-5
    )


@pytest.mark.parametrize("matcher", ["iou", "hungarian"])
def test_image_without_gt_gives_background_only_with_finite_gradients(matcher):
    out = model_outputs(
        final_boxes=[GT_BOX, FAR_BOX],
        aux_boxes=[[GT_BOX, FAR_BOX]],
        reference=[GT_BOX, FAR_BOX],
        anchors=[GT_BOX, FAR_BOX, GT_BOX],
        enc_boxes=[GT_BOX, FAR_BOX, GT_BOX],
    )
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = DETACriterion(num_classes=2, matcher=matcher)(out, empty)
    assert len(losses) == 9
    for suffix, logits in (
        ("", out["pred_logits"]),
        ("_0", out["aux_outputs"][0]["pred_logits"]),
        ("_enc", out["enc_outputs"]["pred_logits"]),
    ):
        background = [[0, 0]] * logits.shape[1]
        # N_box = 0 clamps to 1
        assert losses[f"loss_ce{suffix}"].item() == pytest.approx(
            focal_sum(logits[0].detach(), background), rel=1e-5
        )
        assert losses[f"loss_bbox{suffix}"].item() == 0.0
        assert losses[f"loss_giou{suffix}"].item() == 0.0
    sum(losses.values()).backward()
    for leaf in (out["pred_logits"], out["pred_boxes"], out["enc_outputs"]["pred_boxes"]):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    assert torch.equal(out["pred_boxes"].grad, torch.zeros_like(out["pred_boxes"]))


def test_weights_scale_every_loss():
    def run(**weights: float) -> dict[str, torch.Tensor]:
        out = model_outputs(
            final_boxes=[OFF_BOX, FAR_BOX],
            aux_boxes=[[OFF_BOX, FAR_BOX]],
            reference=[GT_BOX, FAR_BOX],
            anchors=[GT_BOX, FAR_BOX],
            enc_boxes=[OFF_BOX, FAR_BOX],
        )
        return DETACriterion(num_classes=2, **weights)(out, ONE_GT)

    unit = run(weight_class=1.0, weight_bbox=1.0, weight_giou=1.0)
    default = run()
    custom = run(weight_class=3.0, weight_bbox=7.0, weight_giou=11.0)
    assert set(unit) == set(default) == set(custom) and len(unit) == 9
    for key in unit:
        assert unit[key].item() > 0
        factor = {"ce": (1.0, 3.0), "bbox": (5.0, 7.0), "giou": (2.0, 11.0)}[key.split("_")[1]]
        assert default[key].item() == pytest.approx(factor[0] * unit[key].item(), rel=1e-6)
        assert custom[key].item() == pytest.approx(factor[1] * unit[key].item(), rel=1e-6)


def test_bad_inputs_raise_clear_errors():
    logits, boxes, pairs, targets = hand_case()
    with pytest.raises(ValueError, match=r"labels'\] must lie in \[0, 2\)"):
        bad = [{"labels": torch.tensor([1, 2]), "boxes": targets[0]["boxes"]}]
        deta_layer_losses(logits, boxes, pairs, bad, 2.0)
    with pytest.raises(ValueError, match="pred_boxes must be"):
        deta_layer_losses(logits, boxes[:, :2], pairs, targets, 2.0)
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be a \[G, 4\]"):
        bad = [{"labels": targets[0]["labels"], "boxes": torch.rand(3, 4)}]
        deta_layer_losses(logits, boxes, pairs, bad, 2.0)
    with pytest.raises(ValueError, match=r"gt_idx must lie in \[0, 2\)"):
        deta_layer_losses(logits, boxes, [pairs_of((0, 2))], targets, 2.0)
    with pytest.raises(ValueError, match="matcher must be"):
        DETACriterion(num_classes=2, matcher="ota")

    def outputs() -> dict:
        return model_outputs([GT_BOX], [[GT_BOX]], [GT_BOX], [GT_BOX], [GT_BOX])

    criterion = DETACriterion(num_classes=2)
    for path in (("init_reference",), ("enc_outputs",), ("enc_outputs", "anchors")):
        out = outputs()
        parent = out if len(path) == 1 else out[path[0]]
        del parent[path[-1]]
        with pytest.raises(KeyError, match=repr(path[-1])):
            criterion(out, ONE_GT)
    out = outputs()
    del out["aux_outputs"][0]["pred_boxes"]
    with pytest.raises(KeyError, match=r"aux_outputs'\]\[0\] has no 'pred_boxes'"):
        criterion(out, ONE_GT)
    with pytest.raises(ValueError, match="K = num_classes = 3"):
        DETACriterion(num_classes=3)(outputs(), ONE_GT)
    with pytest.raises(ValueError, match="list of 1 dicts"):
        criterion(outputs(), ONE_GT * 2)


def _two_rank_worker(rank: int, tmp: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(tmp, 'init')}", rank=rank, world_size=2
    )
    try:
        logits, boxes, pairs, targets = hand_case()
        if rank == 1:  # rank 0 has 2 GTs, rank 1 none: N_box = (2 + 0) / 2 = 1 on both ranks
            targets = [{"labels": targets[0]["labels"][:0], "boxes": targets[0]["boxes"][:0]}]
            pairs = [pairs_of()]
        num_boxes = num_boxes_normaliser(targets, logits.device)
        losses = deta_layer_losses(logits, boxes, pairs, targets, num_boxes)
        result = {"num_boxes": num_boxes.item(), **{k: v.item() for k, v in losses.items()}}
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_num_boxes_is_averaged_over_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_two_rank_worker, args=(tmp,), nprocs=2)
        rank0, rank1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    assert rank0["num_boxes"] == rank1["num_boxes"] == 1.0
    # rank 0 divides by 1 instead of its own count 2
    assert rank0["loss_ce"] == pytest.approx(HAND_CE, rel=1e-6)
    assert rank0["loss_giou"] == pytest.approx(HAND_GIOU, rel=1e-5)
    all_background = 0.75 * 0.25 * math.log(2) * 3 + 0.75 * 0.75**2 * math.log(4) * 2
    all_background += 0.75 * 0.25**2 * math.log(4 / 3)  # q2 ch0: logit -ln 3, background
    assert rank1["loss_ce"] == pytest.approx(all_background, rel=1e-6)
    assert rank1["loss_bbox"] == 0.0
