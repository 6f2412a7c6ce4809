import pytest
import torch
from torch import nn

from assigndet.modeling.meta_arch import model_io
from assigndet.structures import Instances


def test_register_pixel_statistics():
    module = nn.Module()
    model_io.register_pixel_statistics(module, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert module.pixel_mean.shape == module.pixel_std.shape == (3, 1, 1)
    assert module.pixel_std.flatten().tolist() == [4.0, 5.0, 6.0]
    assert "pixel_mean" not in module.state_dict()
    persistent = nn.Module()
    model_io.register_pixel_statistics(persistent, [1.0], [2.0], persistent=True)
    assert set(persistent.state_dict()) == {"pixel_mean", "pixel_std"}
    with pytest.raises(ValueError, match=r"MODEL.PIXEL_MEAN \[1.0, 2.0\] and MODEL.PIXEL_STD"):
        model_io.register_pixel_statistics(nn.Module(), [1.0, 2.0], [1.0])


def test_batch_images_normalises_pads_and_names_bad_inputs():
    mean, std = torch.full((3, 1, 1), 10.0), torch.full((3, 1, 1), 2.0)
    inputs = [{"image": torch.full((3, 5, 7), 14, dtype=torch.uint8)}]
    images = model_io.batch_images(inputs, mean, std, 4, "M")
    assert images.tensor.shape == (1, 3, 8, 8) and images.image_sizes == [(5, 7)]
    assert images.tensor[0, :, :5, :7].eq(2.0).all()
    with pytest.raises(KeyError, match=r"M input 1 has no 'image'; it has \['file_name'\]"):
        model_io.batch_images(inputs + [{"file_name": "x"}], mean, std, 4, "M")


def test_gt_instances_and_rescale_detections():
    inst = Instances((10, 20), gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0).long())
    assert len(model_io.gt_instances([{"instances": inst}], torch.device("cpu"), "M")) == 1
    with pytest.raises(KeyError, match=r"M training inputs \[0\] have no 'instances'"):
        model_io.gt_instances([{}], torch.device("cpu"), "M")
    result = Instances((10, 20), pred_boxes=torch.tensor([[2.0, 2.0, 10.0, 6.0]]))
    (out,) = model_io.rescale_detections([result], [{"height": 20, "width": 40}], [(10, 20)])
    assert out["instances"].image_size == (20, 40)
    assert out["instances"].pred_boxes.tolist() == [[4.0, 4.0, 20.0, 12.0]]
