import pytest
import torch
from torch import nn

from assigndet.config import get_cfg
from assigndet.solver import build_optimizer, get_default_optimizer_params


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)
        self.norm = nn.GroupNorm(2, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _group_of(optimizer, param):
    matches = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(matches) == 1
    return matches[0]


def _cfg(**solver):
    cfg = get_cfg()
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_norm_and_bias_weight_decay_and_lr():
    model = TinyNet()
    cfg = _cfg(
        BASE_LR=0.1, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_NORM=0.0, WEIGHT_DECAY_BIAS=0.0,
        BIAS_LR_FACTOR=2.0,
    )
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    conv_w = _group_of(opt, model.backbone[0].weight)
    assert (conv_w["lr"], conv_w["weight_decay"]) == (0.1, 1e-4)
    bn_w = _group_of(opt, model.backbone[1].weight)
    assert (bn_w["lr"], bn_w["weight_decay"]) == (0.1, 0.0)
    gn_w = _group_of(opt, model.norm.weight)
    assert gn_w["weight_decay"] == 0.0
    head_b = _group_of(opt, model.head.bias)
    assert (head_b["lr"], head_b["weight_decay"]) == (0.2, 0.0)
    # a norm's bias is a bias: the bias override wins over the norm weight decay
    assert _group_of(opt, model.norm.bias)["lr"] == 0.2
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert not any(p is model.frozen.weight for p in all_params)
    assert len(all_params) == 7  # conv w, bn w/b, head w/b, gn w/b
    assert len({id(p) for p in all_params}) == len(all_params)


def test_groups_are_merged():
    model = TinyNet()
    groups = get_default_optimizer_params(model, base_lr=0.1, weight_decay=1e-4,
                                          weight_decay_norm=0.0)
    # two distinct hyper-parameter sets: weights with decay, norm parameters without
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 1e-4]
    assert sum(len(g["params"]) for g in groups) == 7


def test_lr_factor_func_and_overrides():
    model = TinyNet()
    groups = get_default_optimizer_params(
        model,
        base_lr=1.0,
        weight_decay=0.5,
        lr_factor_func=lambda name: 0.1 if name.startswith("backbone.") else 1.0,
        overrides={"weight": {"weight_decay": 0.25}},
    )
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model.backbone[0].weight)] == pytest.approx(0.1)
    assert lr_of[id(model.head.weight)] == 1.0
    assert wd_of[id(model.head.weight)] == 0.25
    assert wd_of[id(model.head.bias)] == 0.5


def test_backbone_multiplier_adamw_and_nesterov():
    model = TinyNet()
    opt = build_optimizer(_cfg(OPTIMIZER="ADAMW", BASE_LR=0.01, BACKBONE_MULTIPLIER=0.1), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert _group_of(opt, model.backbone[0].weight)["lr"] == pytest.approx(0.001)
    assert _group_of(opt, model.head.weight)["lr"] == pytest.approx(0.01)
    opt = build_optimizer(_cfg(NESTEROV=True, MOMENTUM=0.8), model)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8


def test_unknown_optimizer_and_clip_type():
    with pytest.raises(ValueError, match="Unknown SOLVER.OPTIMIZER 'LBFGS'"):
        build_optimizer(_cfg(OPTIMIZER="LBFGS"), TinyNet())
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="CLIP_TYPE 'global'; expected 'value', 'norm' or"):
        build_optimizer(cfg, TinyNet())


def _clipped_grads(clip_type, clip_value, grads):
    cfg = _cfg(BASE_LR=0.0, WEIGHT_DECAY=0.0, MOMENTUM=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2))
    model.b = nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg, model)
    model.a.grad, model.b.grad = grads[0].clone(), grads[1].clone()
    opt.step()
    return model.a.grad, model.b.grad


def test_gradient_clipping_modes():
    grads = (torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5]))
    a, b = _clipped_grads("value", 1.0, grads)
    assert a.tolist() == [1.0, 1.0] and b.tolist() == [0.0, 0.5]
    a, b = _clipped_grads("norm", 1.0, grads)  # each tensor on its own
    assert torch.allclose(a, torch.tensor([0.6, 0.8]), atol=1e-5)
    assert torch.allclose(b, torch.tensor([0.0, 0.5]))
    a, b = _clipped_grads("full_model", 1.0, grads)  # one global norm: sqrt(25 + 0.25)
    scale = 1.0 / (25.25**0.5)
    assert torch.allclose(a, grads[0] * scale, atol=1e-5)
    assert torch.allclose(b, grads[1] * scale, atol=1e-5)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.sampling_offsets = nn.Linear(2, 2)
        self.value_proj = nn.Linear(2, 2)


class DetrLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.res2 = nn.Conv2d(3, 2, 1)
        self.backbone.res5 = nn.Conv2d(2, 2, 1)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList([_Attention(), _Attention()])


def test_lr_multiplier_names_compose_with_backbone_multiplier():
    model = DetrLike()
    cfg = _cfg(OPTIMIZER="ADAMW", BASE_LR=2e-4, BACKBONE_MULTIPLIER=0.1,
               LR_MULTIPLIER_NAMES=["sampling_offsets", "res2"], LR_MULTIPLIER_VALUES=[0.1, 0.5])
    opt = build_optimizer(cfg, model)
    lr = {name: _group_of(opt, p)["lr"] for name, p in model.named_parameters()}
    for layer in (0, 1):
        for kind in ("weight", "bias"):
            assert lr[f"transformer.layers.{layer}.sampling_offsets.{kind}"] == pytest.approx(2e-5)
            assert lr[f"transformer.layers.{layer}.value_proj.{kind}"] == pytest.approx(2e-4)
    assert lr["backbone.res2.weight"] == pytest.approx(2e-4 * 0.1 * 0.5)
    assert lr["backbone.res5.weight"] == pytest.approx(2e-5)
    assert len(opt.param_groups) == 3  # 2e-4; 2e-5 (offsets and res5 merged); 1e-5


def test_lr_multiplier_first_match_wins():
    model = DetrLike()
    cfg = _cfg(BASE_LR=1.0, LR_MULTIPLIER_NAMES=["layers.1", "sampling_offsets"],
               LR_MULTIPLIER_VALUES=[0.5, 0.1])
    opt = build_optimizer(cfg, model)
    attn0, attn1 = model.transformer.layers
    assert _group_of(opt, attn1.sampling_offsets.weight)["lr"] == pytest.approx(0.5)
    assert _group_of(opt, attn0.sampling_offsets.weight)["lr"] == pytest.approx(0.1)
    assert _group_of(opt, attn0.value_proj.weight)["lr"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "names, values, message",
    [
        (["sampling_offsets"], [], r"LR_MULTIPLIER_NAMES \(1 entries.*LR_MULTIPLIER_VALUES \(0"),
        (["sampling_ofsets"], [0.1], r"LR_MULTIPLIER_NAMES entry 'sampling_ofsets'"),
        ([""], [0.1], r"LR_MULTIPLIER_NAMES entries must be non-empty strings, got ''"),
        (["value_proj"], [-1.0], r"LR_MULTIPLIER_VALUES entries must be numbers >= 0, got -1.0"),
    ],
)
def test_lr_multiplier_errors(names, values, message):
    cfg = _cfg(LR_MULTIPLIER_NAMES=names, LR_MULTIPLIER_VALUES=values)
    with pytest.raises(ValueError, match=message):
        build_optimizer(cfg, DetrLike())


def test_lr_multiplier_name_of_a_frozen_parameter_is_accepted():
    model = DetrLike()
    model.backbone.requires_grad_(False)
    opt = build_optimizer(_cfg(LR_MULTIPLIER_NAMES=["res2"], LR_MULTIPLIER_VALUES=[0.5]), model)
    assert sum(len(g["params"]) for g in opt.param_groups) == 8  # the transformer's only
