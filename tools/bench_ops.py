"""Speed of assigndet.ops against the usual baselines, on detector-like inputs.

NMS: ours (assigndet.ops.nms / batched_nms) vs torchvision, for 1k/5k/20k boxes, class-agnostic and
80 classes, uniformly random boxes and clustered boxes (jittered copies of a few objects, as a
detector's raw output).
Matcher: ours (assigndet.ops.match_top_one on the candidate pairs) vs the dense PyTorch top-one
(N x M quality matrix, masked to the candidates, argmax per gt) and scipy's Hungarian (on the dense
matrix, and on the candidate-restricted one via assigndet.ops.match_hungarian), for the ~22k
locations of an 800 x 1333 image over P3-P7 and M in {10, 50, 100} gts with 9-50 candidates each.

Multi-scale deformable attention: ours (assigndet.ops.ms_deform_attn, grid_sample) vs the direct
per-point reference (ms_deform_attn_reference: explicit bilinear gathers), forward and
forward + backward, at DETA's sizes: 5 levels of an 800 x 1333 image (S = 22,300 tokens), 8 heads
of 32 channels, 4 points, for the encoder (S queries) and the decoder (900 queries).

Every figure is the median of several runs; ratios compare medians from the same run.

    python tools/bench_ops.py [--device cpu|cuda] [--threads 2] [--only nms|matcher|msda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torchvision
from scipy.optimize import linear_sum_assignment

from assigndet import ops

IMAGE = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)


def median_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 1.0) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()  # warm-up (and a time estimate)
    runs = int(min(15, max(3, budget_s / max(first, 1e-6))))
    return 1000 * statistics.median(once() for _ in range(runs))


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    h, w = IMAGE
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    wh = 16 * 32 ** torch.rand(n, 2, generator=g)  # 16 to 512 px, log-uniform
    return torch.cat([xy, xy + wh], 1)


def clustered_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    objects = random_boxes(max(n // 100, 5), g)
    which = torch.randint(0, len(objects), (n,), generator=g)
    base = objects[which]
    wh = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    return base + 0.1 * wh * torch.randn(n, 4, generator=g)


def bench_nms(device: torch.device) -> None:
    print("NMS (IoU 0.5); ratio = ours / torchvision (< 1 is faster)")
    print(
        f"{'boxes':>6} {'classes':>7} {'kind':>9} {'ours ms':>9} {'tv ms':>9} {'ratio':>6} "
        f"{'kept':>6}"
    )
    g = torch.Generator().manual_seed(0)
    for n in (1000, 5000, 20000):
        for classes in (1, 80):
            for kind, make in (("random", random_boxes), ("clustered", clustered_boxes)):
                boxes = make(n, g).to(device)
                scores = torch.rand(n, generator=g).to(device)
                if classes == 1:
                    ours = partial(ops.nms, boxes, scores, 0.5)
                    theirs = partial(torchvision.ops.nms, boxes, scores, 0.5)
                else:
                    idxs = torch.randint(0, classes, (n,), generator=g).to(device)
                    ours = partial(ops.batched_nms, boxes, scores, idxs, 0.5)
                    theirs = partial(torchvision.ops.batched_nms, boxes, scores, idxs, 0.5)
                kept = len(ours())
                t_ours, t_tv = median_ms(ours, device), median_ms(theirs, device)
                print(
                    f"{n:>6} {classes:>7} {kind:>9} {t_ours:>9.2f} {t_tv:>9.2f} "
                    f"{t_ours / t_tv:>6.3f} {kept:>6}"
                )


def locations() -> tuple[torch.Tensor, torch.Tensor]:
    """Centers [N, 2] and strides [N] of the P3-P7 locations of an IMAGE-sized input."""
    h, w = IMAGE
    centers, strides = [], []
    for s in STRIDES:
        ys, xs = torch.meshgrid(
            torch.arange(0, h, s) + s // 2, torch.arange(0, w, s) + s // 2, indexing="ij"
        )
        centers.append(torch.stack([xs.flatten(), ys.flatten()], 1).float())
        strides.append(torch.full((xs.numel(),), float(s)))
    return torch.cat(centers), torch.cat(strides)


def matcher_problem(m: int, g: torch.Generator):
    """Predictions around every location and, for each gt, its 9-50 locations inside the box
    nearest to the box center (in stride units): the size of FCOS/ATSS positive sets."""
    centers, strides = locations()
    n, num_classes = len(centers), 80
    half = strides[:, None] * (1 + 3 * torch.rand(n, 2, generator=g))
    pred = torch.cat([centers - half, centers + half], 1)
    probs = torch.rand(n, num_classes, generator=g) ** 3
    gt = random_boxes(m, g)
    gt_classes = torch.randint(0, num_classes, (m,), generator=g)
    pair_loc, pair_gt = [], []
    gt_center = (gt[:, :2] + gt[:, 2:]) / 2
    for j in range(m):
        inside = ((centers > gt[j, :2]) & (centers < gt[j, 2:])).all(1)
        idx = torch.nonzero(inside).flatten()
        dist = ((centers[idx] - gt_center[j]).abs().amax(1)) / strides[idx]
        k = int(torch.randint(9, 51, (1,), generator=g))
        chosen = idx[torch.argsort(dist)[:k]]
        pair_loc.append(chosen)
        pair_gt.append(torch.full_like(chosen, j))
    return pred, probs, gt, gt_classes, torch.cat(pair_loc), torch.cat(pair_gt)


def dense_top_one(pred, probs, gt, gt_classes, pair_loc, pair_gt, alpha=0.8):
    """The usual dense path: N x M quality, -1 outside the candidates, argmax over locations."""
    iou = torchvision.ops.box_iou(pred, gt)
    q = probs[:, gt_classes] ** (1 - alpha) * iou**alpha
    candidate = torch.zeros_like(q, dtype=torch.bool)
    candidate[pair_loc, pair_gt] = True
    q = torch.where(candidate, q, torch.full_like(q, -1.0))
    best_q, best_loc = q.max(0)
    return torch.where(best_q >= 0, best_loc, -1), best_q.clamp(min=0)


def dense_hungarian(pred, probs, gt, gt_classes, pair_loc, pair_gt, alpha=0.8):
    """scipy's Hungarian on the dense masked M x N quality matrix."""
    iou = torchvision.ops.box_iou(pred, gt)
    q = probs[:, gt_classes] ** (1 - alpha) * iou**alpha
    candidate = torch.zeros_like(q, dtype=torch.bool)
    candidate[pair_loc, pair_gt] = True
    q = torch.where(candidate, q, torch.full_like(q, -1e6))
    return linear_sum_assignment(q.T.cpu().numpy().astype(np.float64), maximize=True)


def bench_matcher(device: torch.device) -> None:
    centers, _ = locations()
    print(f"\nTop-one matcher, N = {len(centers)} locations (800 x 1333, P3-P7), 80 classes")
    print("ratio = ours / baseline (< 1 is faster)")
    print(
        f"{'M':>4} {'K':>5} {'ours ms':>8} {'dense ms':>9} {'ratio':>7} "
        f"{'hung. dense ms':>15} {'ratio':>7} {'hung. cand. ms':>15} {'ratio':>7}"
    )
    g = torch.Generator().manual_seed(0)
    for m in (10, 50, 100):
        problem = [t.to(device) for t in matcher_problem(m, g)]
        t_ours = median_ms(partial(ops.match_top_one, *problem), device)
        t_dense = median_ms(partial(dense_top_one, *problem), device)
        t_hd = median_ms(partial(dense_hungarian, *problem), device)
        t_hc = median_ms(partial(ops.match_hungarian, *problem), device)
        print(
            f"{m:>4} {len(problem[4]):>5} {t_ours:>8.3f} {t_dense:>9.2f} {t_ours / t_dense:>7.4f} "
            f"{t_hd:>15.2f} {t_ours / t_hd:>7.4f} {t_hc:>15.2f} {t_ours / t_hc:>7.4f}"
        )
        loc, _ = ops.match_top_one(*problem)
        dense_loc, _ = dense_top_one(*problem)
        agree = (loc == dense_loc).float().mean().item()
        print(f"     (same location as the dense argmax for {100 * agree:.0f}% of the gts)")


def msda_problem(num_queries: int, device: torch.device, g: torch.Generator):
    """Inputs of one deformable-attention call at DETA's sizes (batch 1, strides 8-128)."""
    shapes = [((IMAGE[0] + s - 1) // s, (IMAGE[1] + s - 1) // s) for s in STRIDES]
    sizes = [h * w for h, w in shapes]
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    start = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=device)
    heads, channels, points = 8, 32, 4
    value = torch.randn(1, sum(sizes), heads, channels, generator=g).to(device)
    locations = torch.rand(1, num_queries, heads, len(shapes), points, 2, generator=g).to(device)
    weights = torch.rand(1, num_queries, heads, len(shapes), points, generator=g).to(device)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value, spatial_shapes, start, locations, weights


def _msda_call(fn, leaves, shapes, start, backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        out = fn(leaves[0], shapes, start, leaves[1], leaves[2])
        if backward:
            out.sum().backward()


def bench_msda(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    print("\nmulti-scale deformable attention (ms): ours (grid_sample) vs direct reference")
    print(f"{'queries':>8} {'pass':>24} {'ours':>9} {'reference':>10} {'ref/ours':>9}")
    for name, num_queries in (("decoder", 900), ("encoder", 22300)):
        value, shapes, start, locations, weights = msda_problem(num_queries, device, g)
        for mode in ("forward", "forward+backward"):
            backward = mode != "forward"
            times = []
            for fn in (ops.ms_deform_attn, ops.ms_deform_attn_reference):
                leaves = [t.clone().requires_grad_(backward) for t in (value, locations, weights)]
                call = partial(_msda_call, fn, leaves, shapes, start, backward)
                times.append(median_ms(call, device, budget_s=3.0))
            print(f"{num_queries:>8} {name + ' ' + mode:>24} {times[0]:9.2f} {times[1]:10.2f} "
                  f"{times[1] / times[0]:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", choices=["nms", "matcher", "msda"], help="run one benchmark")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    benchmarks = {"nms": bench_nms, "matcher": bench_matcher, "msda": bench_msda}
    for name, bench in benchmarks.items():
        if args.only in (None, name):
            bench(device)


if __name__ == "__main__":
    main()
