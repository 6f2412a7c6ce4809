"""assigndet.ops top-one matcher: compiled kernel vs reference, conflicts, Hungarian, memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from assigndet import ops
from assigndet.ops import _extension

HAS_CPU_KERNEL = hasattr(_extension._C, "match_top_one_cpu")
needs_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="assigndet._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
IMPLS = ["compiled", "reference"]


def impl_fn(impl: str):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    return ops.match_top_one if impl == "compiled" else ops.match_top_one_reference


def boxes(n: int, extent: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * extent
    return torch.cat([xy, xy + 5 + torch.rand(n, 2) * 60], dim=1)


def random_problem(n: int, m: int, c: int, k: int, disjoint: bool = False):
    pred, gt = boxes(n), boxes(m)
    probs = torch.rand(n, c)
    gt_classes = torch.randint(0, c, (m,))
    if disjoint:
        pair_loc = torch.randperm(n)[:k]
    else:
        pair_loc = torch.randint(0, n, (k,))
    pair_gt = torch.randint(0, m, (k,))
    return pred, probs, gt, gt_classes, pair_loc, pair_gt


def one_box_problem(quality: dict[tuple[int, int], float], n: int, m: int):
    """Pairs (loc, gt) with prescribed Q: every box is the same (IoU 1), gt j has class j and
    probs[loc, j] = Q ** (1 / 0.2)."""
    gt = torch.tensor([[0.0, 0, 10, 10]]).repeat(m, 1)
    pred = gt[:1].repeat(n, 1)
    probs = torch.zeros(n, m)
    pairs = sorted(quality)
    for (loc, j), q in quality.items():
        probs[loc, j] = q**5
    pair_loc = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    pair_gt = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return pred, probs, gt, torch.arange(m), pair_loc, pair_gt


@needs_kernel
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sizes", [(50, 5, 3, 40), (2000, 30, 10, 600), (500, 100, 4, 3000)])
def test_compiled_matches_reference(seed, sizes):
    torch.manual_seed(seed)
    problem = random_problem(*sizes)
    loc, q = ops.match_top_one(*problem)
    ref_loc, ref_q = ops.match_top_one_reference(*problem)
    assert torch.equal(loc, ref_loc)
    torch.testing.assert_close(q, ref_q)
    matched = loc[loc >= 0]
    assert matched.unique().numel() == matched.numel()  # one-to-one


@pytest.mark.parametrize("impl", IMPLS)
def test_disjoint_candidates_give_per_gt_argmax(impl):
    problem = random_problem(3000, 40, 8, 800, disjoint=True)
    loc, q = impl_fn(impl)(*problem)
    pair_q = ops.pair_quality(*problem)
    pair_loc, pair_gt = problem[4], problem[5]
    for j in range(40):
        mine = pair_gt == j
        if not mine.any():
            assert loc[j] == -1 and q[j] == 0
            continue
        best = pair_q[mine].max()
        torch.testing.assert_close(q[j], best)  # the kernel's powf may differ in the last bit
        assert loc[j] == pair_loc[mine][pair_q[mine] == best].min()


@pytest.mark.parametrize("impl", IMPLS)
def test_contested_location_goes_to_larger_q_and_loser_falls_back(impl):
    # gt 0 and gt 1 both want location 2; gt 1 has the larger Q there.
    quality = {(2, 0): 0.8, (2, 1): 0.9, (0, 0): 0.5, (1, 0): 0.6, (3, 1): 0.4}
    loc, q = impl_fn(impl)(*one_box_problem(quality, n=5, m=2))
    assert loc.tolist() == [1, 2]
    torch.testing.assert_close(q, torch.tensor([0.6, 0.9]))


@pytest.mark.parametrize("impl", IMPLS)
def test_loser_without_other_candidates_gets_none(impl):
    quality = {(4, 0): 0.7, (4, 1): 0.3, (1, 2): 0.2}
    loc, q = impl_fn(impl)(*one_box_problem(quality, n=6, m=4))
    assert loc.tolist() == [4, -1, 1, -1]
    torch.testing.assert_close(q, torch.tensor([0.7, 0.0, 0.2, 0.0]))


@pytest.mark.parametrize("impl", IMPLS)
def test_chain_of_conflicts_is_greedy_by_decreasing_q(impl):
    # Greedy: (0,0)=0.9 first, then gt 1 loses loc 0 and takes loc 1 (0.75), then gt 2 loses loc 1
    # and takes loc 2 (0.1).
    quality = {(0, 0): 0.9, (0, 1): 0.8, (1, 1): 0.75, (1, 2): 0.7, (2, 2): 0.1}
    loc, _ = impl_fn(impl)(*one_box_problem(quality, n=3, m=3))
    assert loc.tolist() == [0, 1, 2]


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_go_to_lower_gt_then_lower_location_whatever_the_pair_order(impl):
    fn = impl_fn(impl)
    quality = {(3, 1): 0.5, (3, 0): 0.5, (1, 2): 0.5, (0, 2): 0.5, (2, 1): 0.5}
    pred, probs, gt, gt_classes, pair_loc, pair_gt = one_box_problem(quality, n=4, m=3)
    for perm in (torch.arange(5), torch.tensor([4, 2, 0, 3, 1]), torch.tensor([1, 3, 0, 4, 2])):
        loc, _ = fn(pred, probs, gt, gt_classes, pair_loc[perm], pair_gt[perm])
        # gt 0 wins location 3 over gt 1; gt 1 then takes 2; gt 2 takes its lower location 0.
        assert loc.tolist() == [3, 2, 0]


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    fn = impl_fn(impl)
    pred, probs, gt, gt_classes, _, _ = random_problem(10, 3, 2, 0)
    empty = torch.empty(0, dtype=torch.int64)
    loc, q = fn(pred, probs, gt, gt_classes, empty, empty)
    assert loc.tolist() == [-1, -1, -1] and q.tolist() == [0.0, 0.0, 0.0]
    assert q.dtype == torch.float32 and loc.dtype == torch.int64
    loc, q = fn(pred, probs, gt[:0], gt_classes[:0], empty, empty)
    assert loc.shape == (0,) and q.shape == (0,)
    loc, q = fn(pred[:0], probs[:0], gt, gt_classes, empty, empty)
    assert loc.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_iou_candidate_is_still_a_candidate(impl):
    pred = torch.tensor([[100.0, 100, 110, 110], [0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 5]])  # the second gt has zero area
    probs = torch.full((2, 1), 0.5)
    pair_loc, pair_gt = torch.tensor([0, 1]), torch.tensor([0, 1])
    loc, q = impl_fn(impl)(pred, probs, gt, torch.zeros(2, dtype=torch.int64), pair_loc, pair_gt)
    assert loc.tolist() == [0, 1] and q.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_extremes(impl):
    problem = random_problem(200, 10, 3, 100)
    q = ops.pair_quality(*problem, alpha=1.0)
    loc, got = impl_fn(impl)(*problem, alpha=1.0)
    assert set(got[loc >= 0].tolist()) <= set(q.tolist())
    loc, got = impl_fn(impl)(*problem, alpha=0.0)
    probs, gt_classes = problem[1], problem[3]
    hit = loc >= 0
    torch.testing.assert_close(got[hit], probs[loc[hit], gt_classes[hit]])


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_and_bad_indices_raise(impl):
    fn = impl_fn(impl)
    pred, probs, gt, gt_classes, pair_loc, pair_gt = random_problem(20, 4, 3, 10, disjoint=True)
    bad = probs.clone()
    bad[pair_loc[0], gt_classes[pair_gt[0]]] = float("nan")
    with pytest.raises(ValueError, match="pred_boxes and probs must be finite"):
        fn(pred, bad, gt, gt_classes, pair_loc, pair_gt)
    bad = pred.clone()
    bad[pair_loc[3], 1] = float("inf")
    with pytest.raises(ValueError, match="pred_boxes and probs must be finite"):
        fn(bad, probs, gt, gt_classes, pair_loc, pair_gt)
    bad = gt.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="gt_boxes must be finite"):
        fn(pred, probs, bad, gt_classes, pair_loc, pair_gt)
    with pytest.raises(IndexError):
        fn(pred, probs, gt, gt_classes, pair_loc + 20, pair_gt)


@needs_kernel
def test_compiled_index_errors_name_the_pair():
    pred, probs, gt, gt_classes, pair_loc, pair_gt = random_problem(20, 4, 3, 10)
    pair_loc[4] = 25
    with pytest.raises(IndexError, match=r"pair_loc\[4\] = 25 is out of range for 20 locations"):
        ops.match_top_one(pred, probs, gt, gt_classes, pair_loc, pair_gt)
    pair_loc[4] = 0
    gt_classes[1] = 3
    with pytest.raises(IndexError, match=r"gt_classes\[1\] = 3 is out of range for probs with 3"):
        ops.match_top_one(pred, probs, gt, gt_classes, pair_loc, pair_gt)


@pytest.mark.parametrize("fn", [ops.match_top_one, ops.match_top_one_reference])
def test_bad_arguments_raise_value_error(fn):
    pred, probs, gt, gt_classes, pair_loc, pair_gt = random_problem(20, 4, 3, 10)
    with pytest.raises(ValueError, match=r"pred_boxes must be a \[N, 4\] tensor, got \(20, 3\)"):
        fn(pred[:, :3], probs, gt, gt_classes, pair_loc, pair_gt)
    with pytest.raises(
        ValueError, match=r"probs must be a \[N, C\] tensor with N = 20, got \(19, 3\)"
    ):
        fn(pred, probs[:19], gt, gt_classes, pair_loc, pair_gt)
    with pytest.raises(
        ValueError, match=r"gt_classes must be a \[M\] tensor with M = 4, got \(3,\)"
    ):
        fn(pred, probs, gt, gt_classes[:3], pair_loc, pair_gt)
    with pytest.raises(ValueError, match=r"must both be \[K\] tensors, got \(10,\) and \(9,\)"):
        fn(pred, probs, gt, gt_classes, pair_loc, pair_gt[:9])
    with pytest.raises(ValueError, match="pair_loc must be an integer tensor, got torch.float32"):
        fn(pred, probs, gt, gt_classes, pair_loc.float(), pair_gt)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got 1.5"):
        fn(pred, probs, gt, gt_classes, pair_loc, pair_gt, alpha=1.5)


def test_hungarian_maximizes_total_quality_and_drops_invalid():
    # Greedy gives loc 0 to gt 0 and leaves gt 1 without; the optimum shares.
    quality = {(0, 0): 0.9, (1, 0): 0.8, (0, 1): 0.85}
    problem = one_box_problem(quality, n=3, m=3)
    loc, q = ops.match_hungarian(*problem)
    assert loc.tolist() == [1, 0, -1]  # gt 2 has no candidate: dropped, not matched anywhere
    torch.testing.assert_close(q, torch.tensor([0.8, 0.85, 0.0]))
    assert ops.match_top_one_reference(*problem)[0].tolist() == [0, -1, -1]


def test_hungarian_equals_top_one_on_disjoint_candidates():
    problem = random_problem(2000, 50, 5, 700, disjoint=True)
    loc, q = ops.match_hungarian(*problem)
    ref_loc, ref_q = ops.match_top_one_reference(*problem)
    assert torch.equal(loc, ref_loc)
    torch.testing.assert_close(q, ref_q)


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_equals_per_image_calls(impl, monkeypatch):
    if impl == "reference":
        monkeypatch.setattr(_extension, "_C", None)
        monkeypatch.setattr(_extension, "_WARNED", {("match_top_one", "cpu")})
    elif not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    b, n, c = 3, 400, 6
    num_gts = [5, 0, 7]
    pred = torch.stack([boxes(n) for _ in range(b)])
    probs = torch.rand(b, n, c)
    gt = boxes(sum(num_gts))
    gt_classes = torch.randint(0, c, (sum(num_gts),))
    pair_img = torch.cat([torch.full((60,), i) for i in (0, 2)])
    pair_loc = torch.randint(0, n, (120,))
    pair_gt = torch.cat([torch.randint(0, 5, (60,)), torch.randint(0, 7, (60,))])
    loc, q = ops.match_top_one_batched(
        pred, probs, gt, gt_classes, num_gts, pair_img, pair_loc, pair_gt
    )
    starts = [0, 5, 5, 12]
    for i in range(b):
        mine = pair_img == i
        ref_loc, ref_q = ops.match_top_one_reference(
            pred[i], probs[i], gt[starts[i] : starts[i + 1]],
            gt_classes[starts[i] : starts[i + 1]], pair_loc[mine], pair_gt[mine],
        )  # fmt: skip
        assert torch.equal(loc[starts[i] : starts[i + 1]], ref_loc)
        torch.testing.assert_close(q[starts[i] : starts[i + 1]], ref_q)


def test_batched_errors():
    pred, probs = torch.stack([boxes(10)] * 2), torch.rand(2, 10, 3)
    gt, gt_classes = boxes(3), torch.zeros(3, dtype=torch.int64)
    pair = torch.tensor([0, 1])
    fn = ops.match_top_one_batched
    with pytest.raises(
        ValueError, match=r"num_gts must be 2 counts >= 0 summing to M = 3, got \[1, 1\]"
    ):
        fn(pred, probs, gt, gt_classes, [1, 1], pair, pair, pair)
    with pytest.raises(
        IndexError, match=r"pair_gt\[1\] = 1 is out of range for image 1 with 1 gts"
    ):
        fn(pred, probs, gt, gt_classes, [2, 1], pair, pair, pair)
    with pytest.raises(IndexError, match=r"pair_img holds 2, outside \[0, 2\)"):
        fn(pred, probs, gt, gt_classes, [2, 1], pair + 1, pair, pair * 0)
    with pytest.raises(ValueError, match=r"pred_boxes must be a \[B, N, 4\] tensor"):
        fn(pred[0], probs, gt, gt_classes, [2, 1], pair, pair, pair)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "_IMPORT_ERROR", "no module named assigndet._C")
    monkeypatch.setattr(_extension, "_WARNED", set())
    problem = random_problem(100, 5, 3, 50)
    with pytest.warns(RuntimeWarning, match="could not be imported"):
        loc, _ = ops.match_top_one(*problem)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = ops.match_top_one(*problem)
    assert torch.equal(loc, again)
    assert torch.equal(loc, ops.match_top_one_reference(*problem)[0])


@needs_kernel
def test_outputs_are_detached():
    pred, probs, gt, gt_classes, pair_loc, pair_gt = random_problem(50, 4, 3, 20)
    pred.requires_grad_()
    probs.requires_grad_()
    loc, q = ops.match_top_one(pred, probs, gt, gt_classes, pair_loc, pair_gt)
    assert not q.requires_grad and loc.dtype == torch.int64


@needs_kernel
def test_compiled_matcher_never_allocates_n_by_m():
    # 200,000 locations x 500 gts: an N x M fp32 buffer alone would take 400 MB.
    script = textwrap.dedent(
        """
        import resource, torch
        from assigndet import ops
        torch.manual_seed(0)
        n, m, c, k = 200_000, 500, 4, 20_000
        xy = torch.rand(n, 2) * 1000
        pred = torch.cat([xy, xy + 50], 1)
        gxy = torch.rand(m, 2) * 1000
        gt = torch.cat([gxy, gxy + 60], 1)
        probs = torch.rand(n, c)
        cls = torch.randint(0, c, (m,))
        loc, gti = torch.randint(0, n, (k,)), torch.randint(0, m, (k,))
        ops.match_top_one(pred[:100], probs[:100], gt, cls, loc % 100, gti)  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, q = ops.match_top_one(pred, probs, gt, cls, loc, gti)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert int((out >= 0).sum()) > 400
        print((after - before) * 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    assert grown < 40e6, f"peak RSS grew by {grown / 1e6:.1f} MB"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("seed", range(4))
def test_cuda_matches_cpu(seed):
    torch.manual_seed(seed)
    problem = random_problem(5000, 60, 10, 4000)
    cpu_loc, cpu_q = ops.match_top_one(*problem)
    gpu_loc, gpu_q = ops.match_top_one(*[t.cuda() for t in problem])
    assert torch.equal(gpu_loc.cpu(), cpu_loc)
    torch.testing.assert_close(gpu_q.cpu(), cpu_q)
    half = [t.cuda().half() if t.is_floating_point() else t.cuda() for t in problem]
    loc, _ = ops.match_top_one(*half)
    assert loc.shape == cpu_loc.shape


@pytest.mark.cuda
@needs_cuda
def test_cuda_conflicts_and_errors():
    quality = {(0, 0): 0.9, (0, 1): 0.8, (1, 1): 0.75, (1, 2): 0.7, (2, 2): 0.1}
    problem = [t.cuda() for t in one_box_problem(quality, n=3, m=3)]
    assert ops.match_top_one(*problem)[0].tolist() == [0, 1, 2]
    pred, probs, gt, gt_classes, pair_loc, pair_gt = problem
    with pytest.raises(IndexError):
        ops.match_top_one(pred, probs, gt, gt_classes, pair_loc + 5, pair_gt)
    probs[0, 0] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        ops.match_top_one(pred, probs, gt, gt_classes, pair_loc, pair_gt)
