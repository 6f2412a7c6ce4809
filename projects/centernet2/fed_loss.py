"""Federated loss (LVIS; CenterNet2 paper, appendix D): the sigmoid classification loss of an
iteration covers only a subset S of the classes, the classes present in the batch plus random
others drawn by a power of their image frequency, so that rare, unannotated classes are not
pushed down in images that were never checked for them."""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor

__all__ = ["fed_loss_classes", "load_class_freq"]


def load_class_freq(path: str, freq_weight: float, num_classes: int | None = None) -> Tensor:
    """Per-class sampling weight ``image_count ** freq_weight``, ``[K]`` float32.

    Args:
        path: JSON list of ``{"id": ..., "image_count": ...}`` per class (LVIS's
            ``lvis_v1_train_cat_info.json`` format; ``tools/class_frequency.py`` writes one for a
            COCO-format dataset); sorted by id, the i-th entry is contiguous class i.
        freq_weight: the exponent (0.5: square-root frequency).
        num_classes: when given, the file must list exactly this many classes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH = {path!r} does not exist; the federated loss needs "
            "the per-class image counts (write them with tools/class_frequency.py)"
        )
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "id" in e and "image_count" in e for e in entries
    ):
        raise ValueError(
            f"{path}: expected a JSON list of {{'id': ..., 'image_count': ...}} per class"
        )
    if num_classes is not None and len(entries) != num_classes:
        raise ValueError(
            f"{path} lists {len(entries)} classes but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}"
        )
    counts = torch.tensor(
        [float(e["image_count"]) for e in sorted(entries, key=lambda e: e["id"])]
    )
    return counts.pow(freq_weight)


def fed_loss_classes(
    gt_classes: Tensor, num_sample_classes: int, num_classes: int, weight: Tensor | None
) -> Tensor:
    """The class subset S of one loss call: every class in ``gt_classes`` and, while
    ``|S| < num_sample_classes``, others drawn without replacement with probability proportional to
    ``weight`` (uniform when None). The background index (``num_classes``) counts toward the
    size of S when it occurs in ``gt_classes`` but is never drawn.

    Args:
        gt_classes: ``[R]`` int64 labels in ``[0, K]`` (K = background).
        num_sample_classes: the target size of S (50 in CenterNet2).
        num_classes: K.
        weight: ``[K]`` sampling weights (see :func:`load_class_freq`), or None.

    Returns:
        ``[|S|]`` int64 class indices, the present ones first.
    """
    present = torch.unique(gt_classes)
    prob = torch.ones(num_classes + 1, device=gt_classes.device)
    prob[-1] = 0.0
    if len(present) >= num_sample_classes:
        return present
    if weight is not None:
        prob[:num_classes] = weight.to(prob)
    prob[present] = 0.0
    num_draw = min(num_sample_classes - len(present), int((prob > 0).sum()))
    if num_draw == 0:
        return present
    drawn = torch.multinomial(prob, num_draw, replacement=False)
    return torch.cat([present, drawn])
