"""IoU-threshold matching of predictions (anchors, proposals) to ground truth (detectron2's
``Matcher``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Matcher"]


class Matcher:
    """Give each prediction its best ground truth and a label from that match's quality.

    Every prediction (column of the ``[G, R]`` quality matrix) is matched to the ground truth of
    highest quality (the first one on ties). Its label comes from the interval of ``thresholds``
    that this quality falls in: with thresholds ``[t1, t2]`` and labels ``[l0, l1, l2]``,
    quality < t1 gives l0, t1 <= quality < t2 gives l1, and quality >= t2 gives l2. Labels are
    1 (positive), 0 (negative) or -1 (ignored).

    Args:
        thresholds: increasing thresholds, the first one > 0.
        labels: ``len(thresholds) + 1`` labels in {-1, 0, 1}.
        allow_low_quality_matches: also label 1 every prediction that is the best match (ties
            included) of some ground truth, whatever its quality (Faster R-CNN's RPN rule).
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"Matcher thresholds must be non-empty and > 0; got {thresholds}")
        if any(low > high for low, high in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be increasing; got {thresholds}")
        labels = [int(label) for label in labels]
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher labels must be -1, 0 or 1; got {labels}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher needs one label more than thresholds; got thresholds {thresholds} "
                f"and labels {labels}"
            )
        self.thresholds = [-math.inf, *thresholds, math.inf]
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> tuple[Tensor, Tensor]:
        """Match the R predictions of a ``[G, R]`` quality matrix (e.g. IoU, all >= 0).

        Returns:
            ``matches`` ``[R]`` int64: index of each prediction's ground truth (0 when there is
            none); ``match_labels`` ``[R]`` int8: its label. With no ground truth (G = 0) every
            prediction gets ``labels[0]``.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                "Matcher needs a [G, R] quality matrix; got shape "
                f"{tuple(match_quality_matrix.shape)}"
            )
        num_predictions = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            matches = match_quality_matrix.new_zeros((num_predictions,), dtype=torch.int64)
            match_labels = match_quality_matrix.new_full(
                (num_predictions,), self.labels[0], dtype=torch.int8
            )
            return matches, match_labels
        if not bool((match_quality_matrix >= 0).all()):
            raise ValueError("Matcher: the match quality matrix must be >= 0 everywhere")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_ones(matches.shape, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_range = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_range] = label

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    @staticmethod
    def set_low_quality_matches_(match_labels: Tensor, match_quality_matrix: Tensor) -> None:
        """Label 1 every prediction that ties for the highest quality of some ground truth.

        The prediction keeps the ground truth it was matched to (its own argmax), which may differ
        from the ground truth that made it positive; this is the Faster R-CNN rule.
        """
        highest_quality_foreach_gt = match_quality_matrix.max(dim=1).values
        _, pred_inds = torch.nonzero(
            match_quality_matrix == highest_quality_foreach_gt[:, None], as_tuple=True
        )
        match_labels[pred_inds] = 1
