"""Random foreground/background sampling of labelled anchors or proposals."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> tuple[Tensor, Tensor]:
    """Draw at most ``num_samples`` elements, at most a ``positive_fraction`` of them positive.

    Elements labelled -1 are ignored, ``bg_label`` are negatives and any other label positive.
    Up to ``int(num_samples * positive_fraction)`` positives are drawn; negatives fill the rest,
    as far as there are enough of each. Draws use ``torch.randperm``, so the global seed fixes
    them.

    Args:
        labels: ``[N]`` integer labels.
        num_samples: total number of elements to draw.
        positive_fraction: in [0, 1].
        bg_label: the label of negatives.

    Returns:
        ``(pos_idx, neg_idx)``: 1-D int64 indices into ``labels`` of the drawn positives and
        negatives.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"subsample_labels: positive_fraction must be in [0, 1]; got {positive_fraction}"
        )
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
