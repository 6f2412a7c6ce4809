"""ResNet state-dict names match detectron2's, so its checkpoints load key for key."""

import torch

from assigndet.config import get_cfg
from assigndet.modeling import build_backbone

# Every state-dict key of detectron2's R-50 (FrozenBN, OUT_FEATURES res2..res5), in order,
# written out from its naming rules: a Conv2d with its norm child gives
# ``<conv>.weight`` + ``<conv>.norm.{weight, bias, running_mean, running_var}``; block 0 of each
# stage has a ``shortcut`` (registered before conv1..conv3); stage depths are 3, 4, 6, 3.
R50_KEYS = """
stem.conv1.weight
stem.conv1.norm.weight
stem.conv1.norm.bias
stem.conv1.norm.running_mean
stem.conv1.norm.running_var
res2.0.shortcut.weight
res2.0.shortcut.norm.weight
res2.0.shortcut.norm.bias
res2.0.shortcut.norm.running_mean
res2.0.shortcut.norm.running_var
res2.0.conv1.weight
res2.0.conv1.norm.weight
res2.0.conv1.norm.bias
res2.0.conv1.norm.running_mean
res2.0.conv1.norm.running_var
res2.0.conv2.weight
res2.0.conv2.norm.weight
res2.0.conv2.norm.bias
res2.0.conv2.norm.running_mean
res2.0.conv2.norm.running_var
res2.0.conv3.weight
res2.0.conv3.norm.weight
res2.0.conv3.norm.bias
res2.0.conv3.norm.running_mean
res2.0.conv3.norm.running_var
res2.1.conv1.weight
res2.1.conv1.norm.weight
res2.1.conv1.norm.bias
res2.1.conv1.norm.running_mean
res2.1.conv1.norm.running_var
res2.1.conv2.weight
res2.1.conv2.norm.weight
res2.1.conv2.norm.bias
res2.1.conv2.norm.running_mean
res2.1.conv2.norm.running_var
res2.1.conv3.weight
res2.1.conv3.norm.weight
res2.1.conv3.norm.bias
res2.1.conv3.norm.running_mean
res2.1.conv3.norm.running_var
res2.2.conv1.weight
res2.2.conv1.norm.weight
res2.2.conv1.norm.bias
res2.2.conv1.norm.running_mean
res2.2.conv1.norm.running_var
res2.2.conv2.weight
res2.2.conv2.norm.weight
res2.2.conv2.norm.bias
res2.2.conv2.norm.running_mean
res2.2.conv2.norm.running_var
res2.2.conv3.weight
res2.2.conv3.norm.weight
res2.2.conv3.norm.bias
res2.2.conv3.norm.running_mean
res2.2.conv3.norm.running_var
res3.0.shortcut.weight
res3.0.shortcut.norm.weight
res3.0.shortcut.norm.bias
res3.0.shortcut.norm.running_mean
res3.0.shortcut.norm.running_var
res3.0.conv1.weight
res3.0.conv1.norm.weight
res3.0.conv1.norm.bias
res3.0.conv1.norm.running_mean
res3.0.conv1.norm.running_var
res3.0.conv2.weight
res3.0.conv2.norm.weight
res3.0.conv2.norm.bias
res3.0.conv2.norm.running_mean
res3.0.conv2.norm.running_var
res3.0.conv3.weight
res3.0.conv3.norm.weight
res3.0.conv3.norm.bias
res3.0.conv3.norm.running_mean
res3.0.conv3.norm.running_var
res3.1.conv1.weight
res3.1.conv1.norm.weight
res3.1.conv1.norm.bias
res3.1.conv1.norm.running_mean
res3.1.conv1.norm.running_var
res3.1.conv2.weight
res3.1.conv2.norm.weight
res3.1.conv2.norm.bias
res3.1.conv2.norm.running_mean
res3.1.conv2.norm.running_var
res3.1.conv3.weight
res3.1.conv3.norm.weight
res3.1.conv3.norm.bias
res3.1.conv3.norm.running_mean
res3.1.conv3.norm.running_var
res3.2.conv1.weight
res3.2.conv1.norm.weight
res3.2.conv1.norm.bias
res3.2.conv1.norm.running_mean
res3.2.conv1.norm.running_var
res3.2.conv2.weight
res3.2.conv2.norm.weight
res3.2.conv2.norm.bias
res3.2.conv2.norm.running_mean
res3.2.conv2.norm.running_var
res3.2.conv3.weight
res3.2.conv3.norm.weight
res3.2.conv3.norm.bias
res3.2.conv3.norm.running_mean
res3.2.conv3.norm.running_var
res3.3.conv1.weight
res3.3.conv1.norm.weight
res3.3.conv1.norm.bias
res3.3.conv1.norm.running_mean
res3.3.conv1.norm.running_var
res3.3.conv2.weight
res3.3.conv2.norm.weight
res3.3.conv2.norm.bias
res3.3.conv2.norm.running_mean
res3.3.conv2.norm.running_var
res3.3.conv3.weight
res3.3.conv3.norm.weight
res3.3.conv3.norm.bias
res3.3.conv3.norm.running_mean
res3.3.conv3.norm.running_var
res4.0.shortcut.weight
res4.0.shortcut.norm.weight
res4.0.shortcut.norm.bias
res4.0.shortcut.norm.running_mean
res4.0.shortcut.norm.running_var
res4.0.conv1.weight
res4.0.conv1.norm.weight
res4.0.conv1.norm.bias
res4.0.conv1.norm.running_mean
res4.0.conv1.norm.running_var
res4.0.conv2.weight
res4.0.conv2.norm.weight
res4.0.conv2.norm.bias
res4.0.conv2.norm.running_mean
res4.0.conv2.norm.running_var
res4.0.conv3.weight
res4.0.conv3.norm.weight
res4.0.conv3.norm.bias
res4.0.conv3.norm.running_mean
res4.0.conv3.norm.running_var
res4.1.conv1.weight
res4.1.conv1.norm.weight
res4.1.conv1.norm.bias
res4.1.conv1.norm.running_mean
res4.1.conv1.norm.running_var
res4.1.conv2.weight
res4.1.conv2.norm.weight
res4.1.conv2.norm.bias
res4.1.conv2.norm.running_mean
res4.1.conv2.norm.running_var
res4.1.conv3.weight
res4.1.conv3.norm.weight
res4.1.conv3.norm.bias
res4.1.conv3.norm.running_mean
res4.1.conv3.norm.running_var
res4.2.conv1.weight
res4.2.conv1.norm.weight
res4.2.conv1.norm.bias
res4.2.conv1.norm.running_mean
res4.2.conv1.norm.running_var
res4.2.conv2.weight
res4.2.conv2.norm.weight
res4.2.conv2.norm.bias
res4.2.conv2.norm.running_mean
res4.2.conv2.norm.running_var
res4.2.conv3.weight
res4.2.conv3.norm.weight
res4.2.conv3.norm.bias
res4.2.conv3.norm.running_mean
res4.2.conv3.norm.running_var
res4.3.conv1.weight
res4.3.conv1.norm.weight
res4.3.conv1.norm.bias
res4.3.conv1.norm.running_mean
res4.3.conv1.norm.running_var
res4.3.conv2.weight
res4.3.conv2.norm.weight
res4.3.conv2.norm.bias
res4.3.conv2.norm.running_mean
res4.3.conv2.norm.running_var
res4.3.conv3.weight
res4.3.conv3.norm.weight
res4.3.conv3.norm.bias
res4.3.conv3.norm.running_mean
res4.3.conv3.norm.running_var
res4.4.conv1.weight
res4.4.conv1.norm.weight
res4.4.conv1.norm.bias
res4.4.conv1.norm.running_mean
res4.4.conv1.norm.running_var
res4.4.conv2.weight
res4.4.conv2.norm.weight
res4.4.conv2.norm.bias
res4.4.conv2.norm.running_mean
res4.4.conv2.norm.running_var
res4.4.conv3.weight
res4.4.conv3.norm.weight
res4.4.conv3.norm.bias
res4.4.conv3.norm.running_mean
res4.4.conv3.norm.running_var
res4.5.conv1.weight
res4.5.conv1.norm.weight
res4.5.conv1.norm.bias
res4.5.conv1.norm.running_mean
res4.5.conv1.norm.running_var
res4.5.conv2.weight
res4.5.conv2.norm.weight
res4.5.conv2.norm.bias
res4.5.conv2.norm.running_mean
res4.5.conv2.norm.running_var
res4.5.conv3.weight
res4.5.conv3.norm.weight
res4.5.conv3.norm.bias
res4.5.conv3.norm.running_mean
res4.5.conv3.norm.running_var
res5.0.shortcut.weight
res5.0.shortcut.norm.weight
res5.0.shortcut.norm.bias
res5.0.shortcut.norm.running_mean
res5.0.shortcut.norm.running_var
res5.0.conv1.weight
res5.0.conv1.norm.weight
res5.0.conv1.norm.bias
res5.0.conv1.norm.running_mean
res5.0.conv1.norm.running_var
res5.0.conv2.weight
res5.0.conv2.norm.weight
res5.0.conv2.norm.bias
res5.0.conv2.norm.running_mean
res5.0.conv2.norm.running_var
res5.0.conv3.weight
res5.0.conv3.norm.weight
res5.0.conv3.norm.bias
res5.0.conv3.norm.running_mean
res5.0.conv3.norm.running_var
res5.1.conv1.weight
res5.1.conv1.norm.weight
res5.1.conv1.norm.bias
res5.1.conv1.norm.running_mean
res5.1.conv1.norm.running_var
res5.1.conv2.weight
res5.1.conv2.norm.weight
res5.1.conv2.norm.bias
res5.1.conv2.norm.running_mean
res5.1.conv2.norm.running_var
res5.1.conv3.weight
res5.1.conv3.norm.weight
res5.1.conv3.norm.bias
res5.1.conv3.norm.running_mean
res5.1.conv3.norm.running_var
res5.2.conv1.weight
res5.2.conv1.norm.weight
res5.2.conv1.norm.bias
res5.2.conv1.norm.running_mean
res5.2.conv1.norm.running_var
res5.2.conv2.weight
res5.2.conv2.norm.weight
res5.2.conv2.norm.bias
res5.2.conv2.norm.running_mean
res5.2.conv2.norm.running_var
res5.2.conv3.weight
res5.2.conv3.norm.weight
res5.2.conv3.norm.bias
res5.2.conv3.norm.running_mean
res5.2.conv3.norm.running_var
""".split()


def _r50(freeze_at=2, **resnets):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return build_backbone(cfg)


def test_r50_state_dict_keys_equal_detectron2():
    keys = list(_r50().state_dict())
    assert len(R50_KEYS) == 265
    assert keys == R50_KEYS


def test_r50_shapes_of_sampled_keys():
    sd = _r50().state_dict()
    assert sd["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["res2.0.shortcut.weight"].shape == (256, 64, 1, 1)
    assert sd["res2.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert sd["res2.1.conv1.weight"].shape == (64, 256, 1, 1)
    assert sd["res3.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["res4.5.conv3.weight"].shape == (1024, 256, 1, 1)
    assert sd["res5.2.conv3.norm.running_var"].shape == (2048,)


def test_bn_adds_only_num_batches_tracked():
    # FREEZE_AT 0: with the default 2, the stem and res2 would be converted to FrozenBN.
    keys = set(_r50(freeze_at=0, NORM="BN").state_dict())
    extra = keys - set(R50_KEYS)
    assert keys >= set(R50_KEYS)
    assert extra == {
        k.replace(".running_var", ".num_batches_tracked")
        for k in R50_KEYS
        if k.endswith(".running_var")
    }


def test_output_features_limit_built_stages():
    backbone = _r50(OUT_FEATURES=["res3"])
    keys = list(backbone.state_dict())
    assert not any(k.startswith(("res4.", "res5.")) for k in keys)
    assert keys == [k for k in R50_KEYS if k.startswith(("stem.", "res2.", "res3."))]
    out = backbone(torch.zeros(1, 3, 32, 32))
    assert list(out) == ["res3"] and out["res3"].shape == (1, 512, 4, 4)
