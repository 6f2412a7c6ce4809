import torch

from assigndet.evaluation.duplicates import DuplicateRateEvaluator, duplicate_mask
from assigndet.structures import Instances


def test_duplicate_mask_hand_case():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # best of class 0
            [0.0, 0.0, 10.0, 11.0],  # IoU 10/11 with it, same class: duplicate
            [0.0, 0.0, 10.0, 10.0],  # same box, other class: not a duplicate
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with the first: not a duplicate
            [0.0, 0.0, 10.0, 10.0],  # below the score threshold: not counted
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2])
    classes = torch.tensor([0, 0, 1, 0, 0])
    assert duplicate_mask(boxes, scores, classes).tolist() == [False, True, False, False]
    # the order of the input does not matter, only the scores
    perm = torch.tensor([3, 1, 4, 0, 2])
    mask = duplicate_mask(boxes[perm], scores[perm], classes[perm])
    assert mask.tolist() == [False, True, False, False]


def test_equal_scores_count_one_duplicate():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3)
    mask = duplicate_mask(boxes, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([2, 2, 2]))
    assert mask.tolist() == [False, True, True]


def test_evaluator_sums_over_images():
    evaluator = DuplicateRateEvaluator()
    first = Instances(
        (20, 20),
        pred_boxes=torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]),
        scores=torch.tensor([0.9, 0.8]),
        pred_classes=torch.tensor([3, 3]),
    )
    second = Instances(
        (20, 20),
        pred_boxes=torch.zeros((0, 4)),
        scores=torch.zeros(0),
        pred_classes=torch.zeros(0, dtype=torch.int64),
    )
    evaluator.process([{}, {}], [{"instances": first}, {"instances": second}])
    result = evaluator.evaluate()["duplicates"]
    assert result == {"rate": 50.0, "num_duplicates": 1.0, "num_detections": 2.0}
    evaluator.reset()
    assert evaluator.evaluate()["duplicates"]["rate"] == 0.0
