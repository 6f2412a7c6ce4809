import pytest
import torch

from assigndet.structures import BoxMode, ImageList, Instances, clip_boxes_, nonempty_boxes


def test_instances_fields_length_check_and_indexing():
    inst = Instances((10, 20), boxes=torch.zeros(3, 4), labels=torch.tensor([1, 2, 3]))
    assert len(inst) == 3 and inst.image_size == (10, 20)
    with pytest.raises(ValueError, match="'scores' has length 2"):
        inst.scores = torch.zeros(2)
    sub = inst[torch.tensor([True, False, True])]
    assert sub.labels.tolist() == [1, 3]
    assert inst[1].labels.tolist() == [2]
    assert inst[-1].labels.tolist() == [3]
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = inst.nope


def test_instances_cat_and_to():
    a = Instances((5, 5), x=torch.arange(2), names=["a", "b"])
    b = Instances((5, 5), x=torch.arange(3), names=["c", "d", "e"])
    c = Instances.cat([a, b])
    assert c.x.tolist() == [0, 1, 0, 1, 2] and c.names == ["a", "b", "c", "d", "e"]
    assert c.to(torch.float64).x.dtype == torch.float64
    with pytest.raises(ValueError, match="image sizes differ"):
        Instances.cat([a, Instances((6, 5), x=torch.arange(1), names=["z"])])


def test_image_list_pads_to_divisibility():
    images = [torch.ones(3, 5, 7), torch.ones(3, 9, 4)]
    batch = ImageList.from_tensors(images, size_divisibility=8)
    assert batch.tensor.shape == (2, 3, 16, 8)
    assert batch.image_sizes == [(5, 7), (9, 4)]
    assert batch[1].shape == (3, 9, 4)
    assert batch.tensor[0, :, 5:, :].abs().sum() == 0  # padding at the bottom/right is zero
    with pytest.raises(ValueError, match="same C"):
        ImageList.from_tensors([torch.ones(3, 2, 2), torch.ones(1, 2, 2)])


def test_box_mode_and_box_helpers():
    assert BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [1, 2, 4, 6]
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 8.0], [3.0, 3.0, 3.0, 9.0]])
    clip_boxes_(boxes, (6, 20))
    assert boxes.tolist() == [[0.0, 2.0, 20.0, 6.0], [3.0, 3.0, 3.0, 6.0]]
    assert nonempty_boxes(boxes).tolist() == [True, False]


def test_instances_pickle_and_deepcopy():
    import copy
    import pickle

    inst = Instances((4, 6), gt_boxes=torch.ones(2, 4), gt_classes=torch.tensor([0, 3]))
    for clone in (pickle.loads(pickle.dumps(inst)), copy.deepcopy(inst)):
        assert clone.image_size == (4, 6)
        assert torch.equal(clone.gt_classes, inst.gt_classes)
