"""Matcher: IoU-threshold labels, low-quality matches and the no-GT case (detectron2 semantics)."""

import pytest
import torch

from assigndet.modeling.matcher import Matcher


def test_single_threshold():
    iou = torch.tensor([[0.6, 0.3, 0.0, 0.5], [0.2, 0.4, 0.55, 0.1]])
    matches, labels = Matcher([0.5], [0, 1])(iou)
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    assert matches.tolist() == [0, 1, 1, 0]
    assert labels.tolist() == [1, 0, 1, 1]  # 0.5 itself is foreground (>= threshold)


def test_ignore_band_boundaries():
    iou = torch.tensor([[0.29, 0.3, 0.69, 0.7, 1.0]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1])(iou)
    assert labels.tolist() == [0, -1, -1, 1, 1]


def test_ties_go_to_the_first_gt():
    iou = torch.tensor([[0.8], [0.8]])
    matches, _ = Matcher([0.5], [0, 1])(iou)
    assert matches.tolist() == [0]


def test_low_quality_matches():
    # GT 1's best prediction (col 2, IoU 0.4, tied by col 3) is below 0.7 but becomes positive.
    iou = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.1, 0.2, 0.4, 0.4]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1])(iou)
    assert labels.tolist() == [1, 0, -1, -1]
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 0, 1, 1]
    assert matches.tolist() == [0, 1, 1, 1]


def test_no_ground_truth_gives_the_first_label():
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 5))
    assert matches.tolist() == [0] * 5 and labels.tolist() == [0] * 5
    _, labels = Matcher([0.3, 0.7], [-1, 0, 1])(torch.zeros(0, 3))
    assert labels.tolist() == [-1, -1, -1]
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(2, 0))
    assert matches.numel() == 0 and labels.numel() == 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="> 0"):
        Matcher([0.0], [0, 1])
    with pytest.raises(ValueError, match="one label more"):
        Matcher([0.5], [0, -1, 1])
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        Matcher([0.5], [0, 2])
    with pytest.raises(ValueError, match="increasing"):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        Matcher([0.5], [0, 1])(torch.tensor([[-0.1]]))
    with pytest.raises(ValueError, match=r"\[G, R\]"):
        Matcher([0.5], [0, 1])(torch.zeros(3))
