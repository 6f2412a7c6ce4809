"""assigndet.ops NMS: compiled kernels vs the references vs torchvision."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from assigndet import ops
from assigndet.ops import _extension
from assigndet.utils.testing import num_threads

HAS_CPU_KERNEL = hasattr(_extension._C, "nms_cpu")
needs_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="assigndet._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def random_boxes(n: int, size: float = 100.0, extent: float = 1000.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * extent
    return torch.cat([xy, xy + torch.rand(n, 2) * size], dim=1)


def clustered_boxes(n: int, clusters: int = 50) -> torch.Tensor:
    """Boxes jittered around a few objects, as a detector's raw outputs."""
    centers = random_boxes(clusters, size=200.0)
    which = torch.randint(0, clusters, (n,))
    wh = (centers[which, 2:] - centers[which, :2]).repeat(1, 2)
    return centers[which] + torch.randn(n, 4) * 0.08 * wh


def degenerate_boxes(n: int) -> torch.Tensor:
    """Integer corners: zero-area, inverted and identical boxes, exact IoU ties."""
    xy = torch.randint(0, 20, (n, 2)).float()
    wh = torch.randint(-2, 6, (n, 2)).float()
    return torch.cat([xy, xy + wh], dim=1)


MAKERS = {"random": random_boxes, "clustered": clustered_boxes, "degenerate": degenerate_boxes}


def per_class_torchvision(boxes, scores, idxs, thr):
    """torchvision's exact per-class semantics (its vanilla batched path), for any size."""
    keep = torch.cat(
        [
            members[torchvision.ops.nms(boxes[members], scores[members], thr)]
            for members in (torch.nonzero(idxs == g).flatten() for g in torch.unique(idxs))
        ]
        or [torch.empty(0, dtype=torch.int64)]
    )
    keep = torch.sort(keep).values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


@needs_kernel
@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("n", [0, 1, 2, 300, 3000])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_torchvision(kind, n, thr):
    boxes = MAKERS[kind](n)
    scores = torch.rand(n) if kind != "degenerate" else torch.randint(0, 4, (n,)).float()
    expected = torchvision.ops.nms(boxes, scores, thr)
    assert torch.equal(ops.nms(boxes, scores, thr), expected)
    if n <= 300:
        assert torch.equal(ops.nms_reference(boxes, scores, thr), expected)


@needs_kernel
@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("n", [0, 1, 500, 4000])
def test_batched_nms_80_classes_matches_torchvision(kind, n):
    boxes = MAKERS[kind](n)
    scores = torch.rand(n)
    idxs = torch.randint(0, 80, (n,))
    # n <= 4000 keeps torchvision on its exact per-class path.
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), expected)
    if n <= 500:
        assert torch.equal(ops.batched_nms_reference(boxes, scores, idxs, 0.5), expected)


@needs_kernel
def test_batched_nms_large_matches_per_class_torchvision():
    boxes = clustered_boxes(20000, clusters=400)
    scores = torch.rand(20000)
    idxs = torch.randint(0, 80, (20000,))
    expected = per_class_torchvision(boxes, scores, idxs, 0.6)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.6), expected)


@needs_kernel
def test_nms_50k_boxes():
    boxes = clustered_boxes(50000, clusters=300)
    scores = torch.rand(50000)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(ops.nms(boxes, scores, 0.5), expected)
    many = random_boxes(50000, size=30.0)
    top = ops.nms(many, scores, 0.7, max_output=200)
    # The first 200 kept boxes only depend on boxes scored at least as high as the 200th.
    cutoff = scores[top[-1]]
    head = torch.nonzero(scores >= cutoff).flatten()
    assert torch.equal(top, head[torchvision.ops.nms(many[head], scores[head], 0.7)][:200])


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_nms_same_result_with_helper_threads(threads):
    boxes, scores = random_boxes(6000), torch.rand(6000)
    with num_threads(threads):
        keep = ops.nms(boxes, scores, 0.5)
        batched = ops.batched_nms(boxes, scores, torch.randint(0, 3, (6000,)), 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    assert batched.numel() >= keep.numel()


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_score_ties_keep_lower_index_first(impl):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    fn = ops.nms if impl == "compiled" else ops.nms_reference
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.9])
    assert fn(boxes, scores, 0.5).tolist() == [2, 0]
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [2, 0]


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_iou_exactly_at_threshold_does_not_suppress(impl):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    fn = ops.nms if impl == "compiled" else ops.nms_reference
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert fn(boxes, scores, 0.5).tolist() == [0, 1]
    assert fn(boxes, scores, 0.49).tolist() == [0]
    # The fp32 IoU 1/3 rounds up, so it exceeds the double threshold 1/3 (torchvision compares
    # the float IoU with a double).
    boxes = torch.tensor([[0.0, 0, 3, 1], [0, 0, 1, 1]])
    assert fn(boxes, scores, 1 / 3).tolist() == torchvision.ops.nms(boxes, scores, 1 / 3).tolist()
    assert fn(boxes, scores, 1 / 3).tolist() == [0]


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_zero_area_boxes_never_suppress(impl):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    fn = ops.nms if impl == "compiled" else ops.nms_reference
    boxes = torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [2, 2, 2, 8]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert fn(boxes, scores, 0.0).tolist() == [0, 1, 2, 3]
    assert torchvision.ops.nms(boxes, scores, 0.0).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(impl, bad):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    nms = ops.nms if impl == "compiled" else ops.nms_reference
    batched = ops.batched_nms if impl == "compiled" else ops.batched_nms_reference
    boxes, scores = random_boxes(10), torch.rand(10)
    bad_boxes = boxes.clone()
    bad_boxes[3, 2] = bad
    bad_scores = scores.clone()
    bad_scores[7] = bad
    for b, s in ((bad_boxes, scores), (boxes, bad_scores)):
        with pytest.raises(ValueError, match="must be finite, got a NaN or inf"):
            nms(b, s, 0.5)
        with pytest.raises(ValueError, match="must be finite, got a NaN or inf"):
            batched(b, s, torch.zeros(10, dtype=torch.int64), 0.5)


@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_max_output_is_a_prefix(impl):
    if impl == "compiled" and not HAS_CPU_KERNEL:
        pytest.skip("assigndet._C is not built")
    nms = ops.nms if impl == "compiled" else ops.nms_reference
    batched = ops.batched_nms if impl == "compiled" else ops.batched_nms_reference
    boxes, scores = clustered_boxes(400, clusters=30), torch.rand(400)
    idxs = torch.randint(0, 5, (400,))
    full, full_batched = nms(boxes, scores, 0.5), batched(boxes, scores, idxs, 0.5)
    for k in (0, 1, 7, 10_000):
        assert torch.equal(nms(boxes, scores, 0.5, max_output=k), full[:k])
        assert torch.equal(batched(boxes, scores, idxs, 0.5, max_output=k), full_batched[:k])


@needs_kernel
def test_dtypes():
    boxes, scores = random_boxes(500), torch.rand(500)
    expected = torchvision.ops.nms(boxes.double(), scores.double(), 0.5)
    assert torch.equal(ops.nms(boxes.double(), scores.double(), 0.5), expected)
    half_boxes, half_scores = boxes.half(), scores.half()
    expected = ops.nms_reference(half_boxes, half_scores, 0.5)
    assert torch.equal(ops.nms(half_boxes, half_scores, 0.5), expected)
    assert torch.equal(expected, ops.nms(half_boxes.float(), half_scores.float(), 0.5))


@needs_kernel
def test_not_differentiable_inputs_accepted():
    boxes = random_boxes(50).requires_grad_()
    scores = torch.rand(50, requires_grad=True)
    keep = ops.nms(boxes, scores, 0.5)
    assert keep.grad_fn is None and keep.dtype == torch.int64


@pytest.mark.parametrize("fn", [ops.nms, ops.nms_reference])
def test_bad_arguments_raise_value_error(fn):
    boxes, scores = random_boxes(4), torch.rand(4)
    with pytest.raises(ValueError, match=r"boxes must be a \[N, 4\] tensor, got \(4, 3\)"):
        fn(boxes[:, :3], scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must be a \[N\] tensor with N = 4, got \(3,\)"):
        fn(boxes, scores[:3], 0.5)
    with pytest.raises(ValueError, match="floating dtype, got torch.float32 and torch.float64"):
        fn(boxes, scores.double(), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be a finite number, got nan"):
        fn(boxes, scores, float("nan"))
    with pytest.raises(ValueError, match="max_output must be None or an int >= 0, got -1"):
        fn(boxes, scores, 0.5, max_output=-1)


@pytest.mark.parametrize("fn", [ops.batched_nms, ops.batched_nms_reference])
def test_bad_idxs_raise_value_error(fn):
    boxes, scores = random_boxes(4), torch.rand(4)
    with pytest.raises(ValueError, match=r"idxs must be a \[N\] tensor with N = 4, got \(5,\)"):
        fn(boxes, scores, torch.zeros(5, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="idxs must be an integer tensor, got torch.float32"):
        fn(boxes, scores, torch.zeros(4), 0.5)


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(_extension, "_C", object())  # an extension without the kernels
    monkeypatch.setattr(_extension, "_WARNED", set())
    boxes, scores = clustered_boxes(200, clusters=10), torch.rand(200)
    idxs = torch.randint(0, 3, (200,))
    with pytest.warns(RuntimeWarning, match="nms: assigndet._C was built without a cpu kernel"):
        keep = ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep = ops.batched_nms(boxes, scores, idxs, 0.5)  # same op and device: no second warning
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("n", [0, 1, 1000, 20000])
def test_cuda_nms_matches_cpu(kind, n):
    boxes = MAKERS[kind](n)
    scores = torch.rand(n)
    idxs = torch.randint(0, 80, (n,))
    cpu = ops.nms(boxes, scores, 0.5)
    assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), cpu)
    assert torch.equal(torchvision.ops.nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), cpu)
    cpu = ops.batched_nms(boxes, scores, idxs, 0.5)
    got = ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu()
    assert torch.equal(got, cpu)
    got = ops.nms(boxes.cuda(), scores.cuda(), 0.5, max_output=10).cpu()
    assert torch.equal(got, ops.nms(boxes, scores, 0.5)[:10])


@pytest.mark.cuda
@needs_cuda
def test_cuda_nms_half_and_errors():
    boxes, scores = clustered_boxes(3000), torch.rand(3000)
    half = ops.nms(boxes.half().cuda(), scores.half().cuda(), 0.5).cpu()
    assert torch.equal(half, ops.nms(boxes.half(), scores.half(), 0.5))
    bf16 = ops.nms(boxes.bfloat16().cuda(), scores.bfloat16().cuda(), 0.5).cpu()
    assert torch.equal(bf16, ops.nms(boxes.bfloat16(), scores.bfloat16(), 0.5))
    boxes[5, 0] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        ops.nms(boxes.cuda(), scores.cuda(), 0.5)
    big = clustered_boxes(50000, clusters=300)
    big_scores = torch.rand(50000)
    assert torch.equal(
        ops.nms(big.cuda(), big_scores.cuda(), 0.5).cpu(), ops.nms(big, big_scores, 0.5)
    )
