import math

import pytest
import torch

from assigndet.config import get_cfg
from assigndet.solver import build_lr_scheduler


def _lrs(num_iters, **solver):
    cfg = get_cfg()
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(num_iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_linear_warmup_then_multistep():
    lrs = _lrs(
        20, BASE_LR=1.0, MAX_ITER=20, STEPS=(10, 15), GAMMA=0.1, WARMUP_ITERS=5,
        WARMUP_FACTOR=0.2, WARMUP_METHOD="linear",
    )
    for t in range(5):  # f + (1 - f) * t / W
        assert lrs[t] == pytest.approx(0.2 + 0.8 * t / 5)
    assert lrs[5] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.01)
    assert lrs[19] == pytest.approx(0.01)


def test_constant_warmup():
    lrs = _lrs(8, BASE_LR=0.5, MAX_ITER=8, STEPS=(6,), WARMUP_ITERS=3, WARMUP_FACTOR=0.1,
               WARMUP_METHOD="constant")
    assert lrs[:3] == pytest.approx([0.05] * 3)
    assert lrs[3:6] == pytest.approx([0.5] * 3)
    assert lrs[6:] == pytest.approx([0.05] * 2)


def test_cosine():
    lrs = _lrs(
        100, LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR=2.0, BASE_LR_END=0.2, MAX_ITER=100,
        WARMUP_ITERS=10, WARMUP_FACTOR=0.001,
    )
    e = 0.1

    def cosine(t):
        return 2.0 * (e + 0.5 * (1 - e) * (1 + math.cos(math.pi * t / 100)))

    assert lrs[0] == pytest.approx(2.0 * 0.001)
    # linear warmup reaches the cosine value at the end of warmup
    assert lrs[5] == pytest.approx(2.0 * 0.001 + (cosine(10) - 2.0 * 0.001) * 0.5)
    for t in (10, 37, 50, 99):
        assert lrs[t] == pytest.approx(cosine(t))


def test_steps_beyond_max_iter_ignored_and_errors():
    lrs = _lrs(10, BASE_LR=1.0, MAX_ITER=10, STEPS=(5, 10, 30), WARMUP_ITERS=0)
    assert lrs[4] == 1.0 and lrs[5] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="SOLVER.STEPS must be positive and strictly increasing"):
        _lrs(1, MAX_ITER=10, STEPS=(6, 3))
    with pytest.raises(ValueError, match="Unknown SOLVER.LR_SCHEDULER_NAME 'Poly'"):
        _lrs(1, LR_SCHEDULER_NAME="Poly")
    with pytest.raises(ValueError, match="SOLVER.WARMUP_METHOD must be 'linear' or 'constant'"):
        _lrs(1, MAX_ITER=10, WARMUP_METHOD="exp")


def test_state_dict_restores_curve():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(["BASE_LR", 1.0, "MAX_ITER", 10, "STEPS", (4,), "WARMUP_ITERS", 2])
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(3):
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    expected = []
    for _ in range(5):
        opt.step()
        sched.step()
        expected.append(opt.param_groups[0]["lr"])
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    got = []
    for _ in range(5):
        opt2.step()
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == pytest.approx(expected)
