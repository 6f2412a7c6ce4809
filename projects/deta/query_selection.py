"""DETA's choice of the encoder tokens that become decoder queries (one image).

The proposals of a two-stage DETA overlap heavily, because the first stage is trained with IoU
assignment (several positives per object). ``select_queries`` therefore runs NMS before taking
the top queries, and spreads them over the feature levels:

1. candidates: for each level, the ``topk_per_level`` tokens of highest sigmoid(score) among that
   level's tokens; a level with fewer tokens is padded with tokens of other levels (score 0 in its
   ranking, taken by increasing index), which keep their own level id below;
2. NMS at ``nms_threshold`` within each level (never across levels), ranked by the raw logits;
   the survivors come by decreasing score;
3. with fewer than ``num_queries`` survivors, the plain top ``num_queries`` tokens by logit
   replace them (a warning is logged);
4. walking the survivors in score order, each level keeps at most ``num_queries // num_levels``;
   the best remaining survivors of any level fill the result up to ``num_queries``.

The result is exactly ``num_queries`` token indices in decreasing score order. A token can appear
twice only if it was a candidate twice and its box has zero area (NMS never suppresses
zero-area boxes).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from assigndet.ops import batched_nms

__all__ = ["plain_topk_queries", "select_queries"]

logger = logging.getLogger(__name__)


def _describe(t: object) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__


def _check_count(fn: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{fn}: {name} must be an int >= 1, got {value!r}")


def _check_scores(fn: str, scores: Tensor, num_queries: int) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 1 or not scores.is_floating_point():
        desc = _describe(scores)
        raise ValueError(f"{fn}: scores must be a floating [S] tensor, got {desc}")
    _check_count(fn, "num_queries", num_queries)
    if scores.shape[0] < num_queries:
        raise ValueError(
            f"{fn}: num_queries ({num_queries}) exceeds the number of tokens S = {scores.shape[0]}"
        )


def plain_topk_queries(scores: Tensor, num_queries: int) -> Tensor:
    """The ``num_queries`` highest-scored tokens (the selection without NMS).

    Args:
        scores: Tensor[S] float, objectness logits.
        num_queries: how many to take (<= S).

    Returns:
        Tensor[num_queries] int64 token indices by decreasing score.
    """
    _check_scores("plain_topk_queries", scores, num_queries)
    return torch.topk(scores.detach(), num_queries).indices


def select_queries(
    scores: Tensor,
    boxes: Tensor,
    level_ids: Tensor,
    num_queries: int,
    num_levels: int,
    topk_per_level: int = 1000,
    nms_threshold: float = 0.9,
) -> Tensor:
    """Query selection with per-level NMS and a per-level quota (module docstring).

    Args:
        scores: Tensor[S] float, objectness logits of the tokens.
        boxes: Tensor[S, 4] float, the tokens' proposal boxes (x1, y1, x2, y2), in [0, 1].
        level_ids: Tensor[S] int64, the feature level of each token, in [0, num_levels).
        num_queries: how many tokens to select (<= S).
        num_levels: number of feature levels L.
        topk_per_level: candidates taken per level before NMS (capped at S).
        nms_threshold: IoU above which a lower-scored box of the same level is suppressed.

    Returns:
        Tensor[num_queries] int64 token indices by decreasing score.
    """
    fn = "select_queries"
    _check_scores(fn, scores, num_queries)
    _check_count(fn, "num_levels", num_levels)
    _check_count(fn, "topk_per_level", topk_per_level)
    s = scores.shape[0]
    if not isinstance(boxes, Tensor) or boxes.shape != (s, 4) or not boxes.is_floating_point():
        raise ValueError(
            f"{fn}: boxes must be a floating [{s}, 4] tensor, got {_describe(boxes)}"
        )
    if (
        not isinstance(level_ids, Tensor)
        or level_ids.shape != (s,)
        or level_ids.is_floating_point()
        or level_ids.dtype == torch.bool
    ):
        raise ValueError(
            f"{fn}: level_ids must be an integer [{s}] tensor, got {_describe(level_ids)}"
        )
    low, high = int(level_ids.min()), int(level_ids.max())
    if low < 0 or high >= num_levels:
        raise ValueError(
            f"{fn}: level_ids must lie in [0, num_levels = {num_levels}), got values in "
            f"[{low}, {high}]"
        )

    scores, boxes = scores.detach().float(), boxes.detach().float()
    levels = torch.arange(num_levels, device=level_ids.device)
    in_level = level_ids[None, :] == levels[:, None]  # [L, S]
    # A stable sort makes the padding of small levels (their zero entries) deterministic: the
    # lowest-index tokens of the other levels.
    ranked = torch.sort(
        scores.sigmoid()[None, :] * in_level, dim=1, descending=True, stable=True
    ).indices
    candidates = ranked[:, : min(topk_per_level, s)].flatten()
    keep = batched_nms(boxes[candidates], scores[candidates], level_ids[candidates], nms_threshold)
    survivors = candidates[keep]
    if survivors.numel() < num_queries:
        logger.warning(
            "select_queries: %d proposals survive NMS, fewer than num_queries = %d; taking the "
            "plain top-%d by score instead",
            survivors.numel(),
            num_queries,
            num_queries,
        )
        return plain_topk_queries(scores, num_queries)

    # survivors are in score order; the quota keeps the first num_queries // L of each level.
    survivor_levels = level_ids[survivors][None, :] == levels[:, None]  # [L, K]
    in_quota = (survivor_levels & (survivor_levels.cumsum(1) <= num_queries // num_levels)).any(0)
    # The fill-up: the first survivors outside the quota, as many as are missing.
    missing = num_queries - in_quota.sum()
    fill = ~in_quota & ((~in_quota).cumsum(0) <= missing)
    return survivors[in_quota | fill]
