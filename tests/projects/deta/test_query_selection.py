"""DETA's query selection on hand-built tokens.

Unless a test says otherwise, token k has the box ``strip(k)``, disjoint from every other strip, so
that only the per-level candidates, the quota and the fill-up decide the result.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from assigndet.projects.deta.query_selection import plain_topk_queries, select_queries


def strip(k: int) -> list[float]:
    """A box (x1, y1, x2, y2) in column k of 20, disjoint from the other columns."""
    return [k / 20, 0.0, (k + 0.5) / 20, 0.5]


def tokens(scores: list[float], levels: list[int], boxes: list[list[float]] | None = None):
    boxes = boxes if boxes is not None else [strip(k) for k in range(len(scores))]
    return (
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(levels, dtype=torch.int64),
    )


def test_quota_per_level_keeps_score_order():
    # Level 0: tokens 0-3, level 1: tokens 4-6. Scores in decreasing order: 0, 5, 2, 3, 1, 4, 6.
    scores, boxes, levels = tokens([5, 2, 4, 3, 1, 4.5, 0], [0, 0, 0, 0, 1, 1, 1])
    out = select_queries(scores, boxes, levels, num_queries=4, num_levels=2)
    # Two per level: 0 and 2 of level 0, 5 and 4 of level 1 (token 3 outranks 4 but is over quota).
    assert out.tolist() == [0, 5, 2, 4]
    assert out.dtype == torch.int64


def test_fill_up_from_any_level_in_score_order():
    # Level 1 has a single token: the quota gives 0, 1 (level 0) and 4; the best remaining
    # survivor, 2, fills the result and is placed by its score.
    scores, boxes, levels = tokens([5, 4, 3, 2, 1], [0, 0, 0, 0, 1])
    out = select_queries(scores, boxes, levels, num_queries=4, num_levels=2)
    assert out.tolist() == [0, 1, 2, 4]
    # 5 // 2 = 2 per level, then two fill-ups.
    scores, boxes, levels = tokens([5, 4, 3, 2, 1, 0], [0, 0, 0, 0, 1, 0])
    out = select_queries(scores, boxes, levels, num_queries=5, num_levels=2)
    assert out.tolist() == [0, 1, 2, 3, 4]


def test_nms_within_a_level_but_not_across_levels():
    a = [0.0, 0.0, 0.5, 0.5]
    a_95 = [0.0, 0.0, 0.5, 0.475]  # IoU 0.95 with a: suppressed by it
    a_85 = [0.0, 0.0, 0.5, 0.425]  # IoU 0.85 with a: kept
    boxes = [a, a_95, a, strip(15), a_85]
    scores, boxes, levels = tokens([3, 2, 1, 0, -1], [0, 0, 1, 1, 0], boxes)
    out = select_queries(scores, boxes, levels, num_queries=4, num_levels=2)
    # Token 1 is gone; token 2 (the same box as token 0, another level) stays.
    assert out.tolist() == [0, 2, 3, 4]


def test_nms_ranks_by_raw_logits():
    # sigmoid(20) and sigmoid(30) are both 1.0 in float32; the logits still order them, so the
    # later token 1 suppresses token 0.
    assert torch.sigmoid(torch.tensor(20.0)) == torch.sigmoid(torch.tensor(30.0))
    box = [0.1, 0.1, 0.6, 0.6]
    scores, boxes, levels = tokens([20, 30, 0], [0, 0, 0], [box, box, strip(15)])
    out = select_queries(scores, boxes, levels, num_queries=2, num_levels=1)
    assert out.tolist() == [1, 2]


def test_candidates_are_the_top_k_of_each_level():
    # Level 0: tokens 0-3 (scores 4, 3, 2, 1); level 1: tokens 4, 5 (scores 0, -1).
    scores, boxes, levels = tokens([4, 3, 2, 1, 0, -1], [0, 0, 0, 0, 1, 1])
    # All six tokens are candidates: quota 2 per level, then token 2 fills up.
    out = select_queries(scores, boxes, levels, num_queries=5, num_levels=2, topk_per_level=4)
    assert out.tolist() == [0, 1, 2, 4, 5]


def test_fallback_to_plain_top_k_with_a_warning(caplog):
    # With two candidates per level only four tokens survive, fewer than 5: the plain top-5 by
    # score replaces them, without NMS or quota (three tokens of level 0 against a quota of 2).
    scores, boxes, levels = tokens([4, 3, 2, 1, 0, -1], [0, 0, 0, 0, 1, 1])
    with caplog.at_level(logging.WARNING):
        out = select_queries(scores, boxes, levels, num_queries=5, num_levels=2, topk_per_level=2)
    assert out.tolist() == [0, 1, 2, 3, 4]
    assert "fewer than num_queries = 5" in caplog.text

    # The same when NMS removes too many: four copies of one box in level 0 leave one survivor.
    box = [0.1, 0.1, 0.6, 0.6]
    scores, boxes, levels = tokens([1, 3, 2, 0, -5], [0, 0, 0, 0, 1], [box] * 4 + [strip(15)])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = select_queries(scores, boxes, levels, num_queries=3, num_levels=2)
    assert out.tolist() == [1, 2, 0]
    assert "2 proposals survive NMS" in caplog.text


def test_no_warning_without_fallback(caplog):
    scores, boxes, levels = tokens([5, 4, 3, 2, 1], [0, 0, 0, 0, 1])
    with caplog.at_level(logging.WARNING):
        select_queries(scores, boxes, levels, num_queries=4, num_levels=2)
    assert caplog.text == ""


def test_small_levels_are_padded_with_tokens_of_other_levels():
    # Level 0: tokens 0-3 (scores 1, 4, 3, 2); level 1: token 4 (score 0). With two candidates
    # per level, level 0 gives tokens 1, 2 and level 1 gives token 4 padded with the lowest-index
    # token of another level, token 0, which keeps its level id. Token 3 is no candidate though
    # it outscores token 0.
    scores, boxes, levels = tokens([1, 4, 3, 2, 0], [0, 0, 0, 0, 1])
    out = select_queries(scores, boxes, levels, num_queries=4, num_levels=2, topk_per_level=2)
    assert out.tolist() == [1, 2, 0, 4]


def test_a_zero_area_box_can_be_selected_twice():
    # Token 0 (level 0) has a zero-area box; tokens 1 and 2 (level 1) share a box. With three
    # candidates per level, level 0's list is [0, 1, 2] (padded) and level 1's [1, 2, 0]: token 0
    # is a level-0 candidate twice, and two zero-area boxes never suppress each other (IoU 0/0).
    point = [0.5, 0.5, 0.5, 0.5]
    box = [0.1, 0.1, 0.3, 0.3]
    scores, boxes, levels = tokens([3, 0, -1], [0, 1, 1], [point, box, box])
    out = select_queries(scores, boxes, levels, num_queries=3, num_levels=2, topk_per_level=3)
    # Survivors [0, 0, 1]; quota 1 per level gives 0 and 1, the second 0 fills up.
    assert out.tolist() == [0, 0, 1]


def reference_selection(scores, boxes, levels, num_queries, num_levels, topk, threshold):
    """A direct transcription of the procedure, with torchvision's NMS."""
    s = len(scores)
    candidates = []
    for lvl in range(num_levels):
        own = sorted((i for i in range(s) if levels[i] == lvl), key=lambda i: -scores[i])
        others = [i for i in range(s) if levels[i] != lvl]  # padding: lowest index first
        candidates += (own + others)[: min(topk, s)]
    cand = torch.tensor(candidates)
    keep = torchvision.ops.batched_nms(
        torch.tensor(boxes)[cand], torch.tensor(scores)[cand], torch.tensor(levels)[cand],
        threshold,
    )
    survivors = cand[keep].tolist()
    if len(survivors) < num_queries:
        return sorted(range(s), key=lambda i: -scores[i])[:num_queries]
    taken, counts = [], [0] * num_levels
    for pos, i in enumerate(survivors):
        if counts[levels[i]] < num_queries // num_levels:
            counts[levels[i]] += 1
            taken.append(pos)
    rest = [pos for pos in range(len(survivors)) if pos not in taken]
    taken = sorted(taken + rest[: num_queries - len(taken)])
    return [survivors[pos] for pos in taken]


@pytest.mark.parametrize("topk,num_queries", [(40, 30), (60, 40), (8, 30)])
def test_matches_a_direct_transcription_on_random_tokens(topk, num_queries):
    # Three levels of 150, 40 and 10 tokens with clustered boxes, so that NMS removes many.
    g = torch.Generator().manual_seed(1)
    s = 200
    levels = [0] * 150 + [1] * 40 + [2] * 10
    centres = torch.rand(6, 2, generator=g)[torch.randint(0, 6, (s,), generator=g)]
    centres = centres + 0.01 * torch.randn(s, 2, generator=g)
    sizes = 0.2 + 0.02 * torch.rand(s, 2, generator=g)
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=1).clamp(0, 1)
    scores = torch.randn(s, generator=g)
    out = select_queries(
        scores, boxes, torch.tensor(levels), num_queries, 3, topk_per_level=topk
    )
    expected = reference_selection(
        scores.tolist(), boxes.tolist(), levels, num_queries, 3, topk, 0.9
    )
    assert out.tolist() == expected
    assert len(out) == num_queries
    assert (scores[out][1:] <= scores[out][:-1]).all()


def test_plain_topk_queries():
    out = plain_topk_queries(torch.tensor([0.5, 2.0, -1.0, 1.0]), 2)
    assert out.tolist() == [1, 3]


def test_bad_inputs():
    scores, boxes, levels = tokens([3, 2, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="num_queries \\(4\\) exceeds the number of tokens S = 3"):
        select_queries(scores, boxes, levels, num_queries=4, num_levels=2)
    with pytest.raises(ValueError, match="num_queries \\(4\\) exceeds"):
        plain_topk_queries(scores, 4)
    with pytest.raises(ValueError, match="boxes must be a floating \\[3, 4\\] tensor"):
        select_queries(scores, boxes[:2], levels, num_queries=2, num_levels=2)
    with pytest.raises(ValueError, match="level_ids must lie in \\[0, num_levels = 2\\)"):
        select_queries(scores, boxes, torch.tensor([0, 2, 1]), num_queries=2, num_levels=2)
    with pytest.raises(ValueError, match="level_ids must be an integer \\[3\\] tensor"):
        select_queries(scores, boxes, levels.float(), num_queries=2, num_levels=2)
    with pytest.raises(ValueError, match="num_levels must be an int >= 1"):
        select_queries(scores, boxes, levels, num_queries=2, num_levels=0)
    with pytest.raises(ValueError, match="scores must be a floating \\[S\\] tensor"):
        select_queries(scores[None], boxes, levels, num_queries=2, num_levels=2)
