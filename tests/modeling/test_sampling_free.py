import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from assigndet.config import get_cfg
from assigndet.layers import prior_bias
from assigndet.modeling.losses import (
    GuidedLossScaling,
    guidance_ratio,
    optimal_prior_prob,
    sigmoid_ce_loss,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 0 else x + math.log1p(math.exp(-x))


def _bce(x: float, y: int) -> float:
    """-y log sigmoid(x) - (1 - y) log(1 - sigmoid(x))."""
    return _softplus(-x) if y == 1 else _softplus(x)


# ----------------------------------------------------------------------------- prior


def _assignment():
    """Three images of a K = 4 sigmoid head: labels per location, -1 ignored, 4 background."""
    image0 = torch.tensor([0, 3] + [4] * 96 + [-1] * 2)  # 100 locations, 2 positives, 2 ignored
    image1 = torch.tensor([4] * 50)  # 50 locations, no positive
    image2 = torch.tensor([1, 1, 2] + [4] * 45 + [-1] * 2)  # 50 locations, 3 positives, 2 ignored
    return [image0, image1, image2], 4


def test_optimal_prior_prob_on_hand_built_assignment():
    labels, num_classes = _assignment()
    positives = torch.stack([((lab >= 0) & (lab < num_classes)).sum() for lab in labels])
    valid = torch.stack([(lab >= 0).sum() for lab in labels]) * num_classes
    assert positives.tolist() == [2, 0, 3] and valid.tolist() == [98 * 4, 50 * 4, 48 * 4]
    # 5 positive outputs among (98 + 50 + 48) x 4 = 784 outputs
    prob = optimal_prior_prob(positives, valid)
    assert prob == pytest.approx(5 / 784, rel=1e-12)
    assert optimal_prior_prob(5, 784) == prob
    assert prior_bias(prob) == pytest.approx(-math.log(779 / 5), rel=1e-12)
    assert 1 / (1 + math.exp(-prior_bias(prob))) == pytest.approx(prob, rel=1e-12)


def test_optimal_prior_prob_clamps():
    assert optimal_prior_prob(0, 784) == 1e-6
    assert optimal_prior_prob(1, 10**8) == 1e-6  # 1e-8 below the clamp
    assert optimal_prior_prob(784, 784) == 0.5
    assert optimal_prior_prob(1, 784, min_prob=0.01, max_prob=0.1) == 0.01
    assert optimal_prior_prob(700, 784, min_prob=0.01, max_prob=0.1) == 0.1


def test_optimal_prior_prob_errors():
    with pytest.raises(ValueError, match="num_samples must be > 0"):
        optimal_prior_prob(0, 0)
    with pytest.raises(ValueError, match="exceeds num_samples"):
        optimal_prior_prob(5, 4)
    with pytest.raises(ValueError, match="num_foreground must be >= 0"):
        optimal_prior_prob(-1, 4)
    with pytest.raises(ValueError, match="num_samples must be >= 0"):
        optimal_prior_prob(torch.tensor([1, 2]), torch.tensor([10, -1]))
    with pytest.raises(ValueError, match="min_prob <= max_prob"):
        optimal_prior_prob(1, 4, min_prob=0.5, max_prob=0.1)


def test_prior_bias_official_constants():
    assert prior_bias(1e-5) == pytest.approx(-11.5129, abs=1e-4)
    assert prior_bias(1e-4) == pytest.approx(-9.2102, abs=1e-4)
    assert prior_bias(0.01) == pytest.approx(-4.5951, abs=1e-4)
    assert prior_bias(0.5) == 0.0
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="prior_prob must be in"):
            prior_bias(bad)


# ----------------------------------------------------------------------------- CE loss


def test_sigmoid_ce_loss_hand_computed_with_masks():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0], [5.0, -5.0]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    terms = [[_bce(0.0, 1), _bce(2.0, 0)], [_bce(-1.0, 0), _bce(3.0, 1)], [_bce(5, 1), _bce(-5, 1)]]
    assert sigmoid_ce_loss(logits, targets).item() == pytest.approx(sum(map(sum, terms)), rel=1e-6)
    # per entry: drop (1, 1)
    entry_mask = torch.tensor([[True, True], [True, False], [True, True]])
    expected = sum(map(sum, terms)) - terms[1][1]
    assert sigmoid_ce_loss(logits, targets, entry_mask).item() == pytest.approx(expected, rel=1e-6)
    # per sample (label -1): drop row 2
    sample_mask = torch.tensor([True, True, False])
    expected = sum(terms[0]) + sum(terms[1])
    assert sigmoid_ce_loss(logits, targets, sample_mask).item() == pytest.approx(expected, rel=1e-6)
    # nothing valid
    assert sigmoid_ce_loss(logits, targets, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_sigmoid_ce_loss_masked_entries_get_no_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    sigmoid_ce_loss(logits, targets, torch.tensor([True, False])).backward()
    # d/dx = sigmoid(x) - y = 0.5 - y on valid entries
    assert torch.equal(logits.grad, torch.tensor([[-0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]))


def test_sigmoid_ce_loss_is_stable_at_large_logits():
    logits = torch.tensor([[-20.0, 20.0, 20.0, -20.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss = sigmoid_ce_loss(logits, targets)
    # two confident mistakes of 20 + log1p(e^-20), two confident hits of log1p(e^-20) ~ 2e-9
    assert loss.item() == pytest.approx(2 * (20 + math.log1p(math.exp(-20))), abs=1e-5)
    loss.backward()
    assert torch.allclose(logits.grad, torch.tensor([[-1.0, 1.0, 0.0, 0.0]]), atol=1e-7)


def test_sigmoid_ce_loss_is_accurate_for_confident_negatives():
    logits = torch.tensor([-9.21, -11.51, -15.0, -18.0, 15.0])
    targets = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    for x, y in zip(logits, targets):
        loss = sigmoid_ce_loss(x.reshape(1, 1), y.reshape(1, 1))
        assert loss.item() == pytest.approx(_bce(x.item(), int(y)), rel=1e-5)


def test_sigmoid_ce_loss_matches_torch_where_torch_is_accurate():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(50, 7, generator=gen) * 3).requires_grad_()
    targets = (torch.rand(50, 7, generator=gen) < 0.2).float()
    reference = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    loss = sigmoid_ce_loss(logits, targets)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(grad, reference_grad, atol=1e-7)


def test_sigmoid_ce_loss_soft_targets():
    loss = sigmoid_ce_loss(torch.tensor([[2.0]]), torch.tensor([[0.25]]))
    assert loss.item() == pytest.approx(0.25 * _softplus(-2.0) + 0.75 * _softplus(2.0), rel=1e-6)


def test_sigmoid_ce_loss_is_float32_for_low_precision_inputs():
    # 10^5 background outputs at the prior 1e-5: each term is ~1e-5, subnormal in float16
    logits = torch.full((1000, 100), prior_bias(1e-5))
    targets = torch.zeros(1000, 100)
    half = sigmoid_ce_loss(logits.half(), targets.half())
    assert half.dtype == torch.float32
    exact = 1000 * 100 * _softplus(float(logits.half()[0, 0]))
    assert half.item() == pytest.approx(exact, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = sigmoid_ce_loss(logits.bfloat16(), targets)
    assert bf16.dtype == torch.float32
    exact = 1000 * 100 * _softplus(float(logits.bfloat16()[0, 0]))
    assert bf16.item() == pytest.approx(exact, rel=1e-5)


def test_sigmoid_ce_loss_shape_errors():
    with pytest.raises(ValueError, match="targets"):
        sigmoid_ce_loss(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="valid_mask"):
        sigmoid_ce_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2, dtype=torch.bool))


# ----------------------------------------------------------------------------- guidance


def test_guided_loss_scaling_value_at_init():
    module = GuidedLossScaling(guidance="local")
    assert [name for name, _ in module.named_parameters()] == ["log_delta"]
    assert list(module.state_dict()) == ["log_delta"]  # the ratio is not checkpointed
    assert module.delta == 1.0 and module.last_ratio is None
    out = module(torch.tensor(7.0), torch.tensor(0.8))
    assert set(out) == {"loss_cls", "loss_delta"}
    assert out["loss_cls"].item() == pytest.approx(0.8)  # g * 1 * L_cls = L_loc
    assert out["loss_delta"].item() == 0.0
    assert module.last_ratio == pytest.approx(0.8 / 7.0)


def test_guided_loss_scaling_gradients_by_hand():
    module = GuidedLossScaling(guidance="global")  # single process: same as local
    with torch.no_grad():
        module.log_delta.fill_(0.3)
    delta = math.exp(0.3)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.tensor([1.5], requires_grad=True)
    cls_loss, loc_loss = (x**2).sum(), (y**2).sum()  # 5 and 2.25
    out = module(cls_loss, loc_loss)
    g = 2.25 / 5.0
    assert out["loss_cls"].item() == pytest.approx(delta * 2.25, rel=1e-6)
    assert out["loss_delta"].item() == pytest.approx(-0.3)
    (loc_loss + out["loss_cls"] + out["loss_delta"]).backward()
    # d/du (g e^u L_cls - u) = g delta L_cls - 1
    assert module.log_delta.grad.item() == pytest.approx(g * delta * 5.0 - 1.0, rel=1e-6)
    # the cls gradient is scaled by g delta; L_loc gets only its own gradient, none through g
    assert torch.allclose(x.grad, g * delta * 2 * x.detach())
    assert torch.allclose(y.grad, 2 * y.detach())


def test_guided_loss_scaling_sends_no_gradient_into_the_guide():
    loc_loss = torch.tensor(0.6, requires_grad=True)
    cls_loss = torch.tensor(3.0, requires_grad=True)
    out = GuidedLossScaling(guidance="local")(cls_loss, loc_loss)
    sum(out.values()).backward()
    assert loc_loss.grad is None
    assert cls_loss.grad.item() == pytest.approx(0.6 / 3.0)


def test_guided_loss_scaling_reuses_the_last_valid_ratio():
    module = GuidedLossScaling(guidance="local")
    # no valid ratio yet: 1.0
    out = module(torch.tensor(4.0), torch.tensor(0.0))
    assert module.last_ratio == 1.0 and out["loss_cls"].item() == 4.0
    module(torch.tensor(4.0), torch.tensor(2.0))
    assert module.last_ratio == 0.5
    # no positives, non-finite loc, zero or non-finite cls: keep 0.5
    for cls_value, loc_value in [(8.0, 0.0), (8.0, math.nan), (8.0, math.inf), (0.0, 1.0)]:
        out = module(torch.tensor(cls_value), torch.tensor(loc_value))
        assert module.last_ratio == 0.5
        assert out["loss_cls"].item() == 0.5 * cls_value
    out = module(torch.tensor(math.inf), torch.tensor(1.0))
    assert module.last_ratio == 0.5 and out["loss_cls"].item() == math.inf  # divergence shows
    module(torch.tensor(2.0), torch.tensor(3.0))
    assert module.last_ratio == 1.5


def test_guided_loss_scaling_keeps_delta_in_the_graph_without_positives():
    module = GuidedLossScaling(guidance="local")
    cls_loss = torch.tensor(2.0, requires_grad=True)
    out = module(cls_loss, torch.tensor(0.0))
    sum(out.values()).backward()
    # g = 1.0: d/du (e^u L_cls - u) = L_cls - 1
    assert module.log_delta.grad.item() == pytest.approx(1.0)
    assert cls_loss.grad.item() == 1.0


def test_guidance_ratio_function():
    assert guidance_ratio(torch.tensor(4.0), torch.tensor(1.0)).item() == 0.25
    assert guidance_ratio(torch.tensor(4.0), torch.tensor(0.0)).item() == 1.0
    fallback = torch.tensor(3.0)
    assert guidance_ratio(torch.tensor(4.0), torch.tensor(-1.0), fallback).item() == 3.0
    big = guidance_ratio(torch.tensor(1e-30), torch.tensor(1e30), fallback)
    assert big.item() == 3.0  # the ratio overflows float32
    half = guidance_ratio(torch.tensor(4.0, dtype=torch.half), torch.tensor(1.0))
    assert half.dtype == torch.float32 and not half.requires_grad
    with pytest.raises(ValueError, match="scalars"):
        guidance_ratio(torch.ones(2), torch.tensor(1.0))


def test_guided_loss_scaling_clamp():
    module = GuidedLossScaling(guidance="local", delta_clamp=(1e-2, 1e2))
    with torch.no_grad():
        module.log_delta.fill_(10.0)
    assert module.delta == pytest.approx(100.0)
    out = module(torch.tensor(2.0), torch.tensor(1.0))
    # the parameter itself is projected, so its gradient stays alive at the bound
    assert module.log_delta.item() == pytest.approx(math.log(100.0))
    assert out["loss_cls"].item() == pytest.approx(100.0)
    assert out["loss_delta"].item() == pytest.approx(-math.log(100.0))
    sum(out.values()).backward()
    assert module.log_delta.grad.item() == pytest.approx(100.0 - 1.0)
    with torch.no_grad():
        module.log_delta.fill_(-10.0)
    module(torch.tensor(2.0), torch.tensor(1.0))
    assert module.delta == pytest.approx(0.01)
    unclamped = GuidedLossScaling(guidance="local", delta_clamp=())
    with torch.no_grad():
        unclamped.log_delta.fill_(10.0)
    assert unclamped(torch.tensor(2.0), torch.tensor(1.0))["loss_cls"].item() == pytest.approx(
        math.exp(10.0), rel=1e-5
    )


def test_guided_loss_scaling_argument_errors():
    with pytest.raises(ValueError, match="GUIDANCE"):
        GuidedLossScaling(guidance="mean")
    for bad in [(0.5,), (0.0, 10.0), (2.0, 10.0), (0.1, 0.5)]:
        with pytest.raises(ValueError, match="DELTA_CLAMP"):
            GuidedLossScaling(delta_clamp=bad)


def test_guided_loss_scaling_under_autocast():
    module = GuidedLossScaling(guidance="local")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.tensor(3.0, dtype=torch.bfloat16), torch.tensor(1.5))
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["loss_cls"].item() == pytest.approx(1.5)


def test_sampling_free_config_and_from_config():
    cfg = get_cfg()
    sf = cfg.MODEL.SAMPLING_FREE
    assert sf.ENABLED is False and sf.PRIOR_PROB == -1.0 and sf.PRIOR_NUM_IMAGES == 200
    assert (sf.PRIOR_PROB_MIN, sf.PRIOR_PROB_MAX) == (1e-6, 0.5)
    assert sf.GUIDANCE == "global" and sf.DELTA_CLAMP == [1e-2, 1e2]
    assert sf.SCORE_THRESH_TEST == 1e-3
    module = GuidedLossScaling(cfg)
    assert module.guidance == "global" and "delta_clamp=(0.01, 100.0)" in repr(module)
    cfg.merge_from_list(
        ["MODEL.SAMPLING_FREE.GUIDANCE", "local", "MODEL.SAMPLING_FREE.DELTA_CLAMP", "[]"]
    )
    module = GuidedLossScaling(cfg)
    assert module.guidance == "local" and "delta_clamp=None" in repr(module)


# ----------------------------------------------------------------------------- two ranks

# per rank: (cls, loc) of two steps; step 1 has no positive on rank 0
_RANK_LOSSES = {0: [(2.0, 3.0), (2.0, 0.0)], 1: [(6.0, 1.0), (6.0, 1.0)]}


def _two_rank_worker(rank: int, tmp: str) -> None:
    init_file = os.path.join(tmp, "init")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for guidance in ("global", "local"):
            module = GuidedLossScaling(guidance=guidance)
            ratios, values = [], []
            for cls_value, loc_value in _RANK_LOSSES[rank]:
                out = module(torch.tensor(cls_value), torch.tensor(loc_value))
                ratios.append(module.last_ratio)
                values.append(out["loss_cls"].item())
            results[guidance] = (ratios, values)
        torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_guidance_uses_sums_over_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_two_rank_worker, args=(tmp,), nprocs=2)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for rank in range(2):
        ratios, values = results[rank]["global"]
        # step 0: (3 + 1) / (2 + 6); step 1: (0 + 1) / (2 + 6), valid although rank 0 has none
        assert ratios == pytest.approx([4 / 8, 1 / 8])
        cls_values = [c for c, _ in _RANK_LOSSES[rank]]
        assert values == pytest.approx([4 / 8 * cls_values[0], 1 / 8 * cls_values[1]])
    # local: each rank its own ratio; rank 0 reuses its last one when it has no positive
    assert results[0]["local"][0] == pytest.approx([3 / 2, 3 / 2])
    assert results[1]["local"][0] == pytest.approx([1 / 6, 1 / 6])
