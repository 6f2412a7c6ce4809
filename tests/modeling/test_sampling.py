"""subsample_labels: counts, ignored labels and seeded draws."""

import torch

from assigndet.modeling.sampling import subsample_labels

BG = 3


def _labels(num_pos: int, num_neg: int, num_ignored: int) -> torch.Tensor:
    labels = torch.cat(
        [
            torch.arange(num_pos) % BG,
            torch.full((num_neg,), BG),
            torch.full((num_ignored,), -1),
        ]
    )
    return labels[torch.randperm(len(labels))]


def test_positive_fraction_is_honoured():
    labels = _labels(10, 50, 7)
    pos, neg = subsample_labels(labels, 20, 0.25, BG)
    assert len(pos) == 5 and len(neg) == 15
    assert ((labels[pos] >= 0) & (labels[pos] != BG)).all()
    assert (labels[neg] == BG).all()
    assert len(set(pos.tolist())) == 5 and len(set(neg.tolist())) == 15
    assert pos.dtype == torch.int64


def test_too_few_positives_are_filled_with_negatives():
    pos, neg = subsample_labels(_labels(2, 50, 5), 20, 0.25, BG)
    assert len(pos) == 2 and len(neg) == 18


def test_too_few_of_both_gives_all():
    labels = _labels(3, 4, 5)
    pos, neg = subsample_labels(labels, 20, 0.5, BG)
    assert len(pos) == 3 and len(neg) == 4
    assert sorted(torch.cat([pos, neg]).tolist()) == torch.nonzero(labels != -1)[:, 0].tolist()


def test_draws_follow_the_seed():
    labels = _labels(30, 60, 0)
    torch.manual_seed(7)
    first = subsample_labels(labels, 16, 0.5, BG)
    torch.manual_seed(7)
    second = subsample_labels(labels, 16, 0.5, BG)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    third = subsample_labels(labels, 16, 0.5, BG)
    assert not torch.equal(first[0], third[0])
