#!/usr/bin/env python
"""Speed and memory of a config's model: training s/iter or inference s/image.

    python tools/benchmark.py --config-file configs/fcos_r50_1x.yaml --task train \
        MODEL.DEVICE cpu SOLVER.IMS_PER_BATCH 2
    python tools/benchmark.py --config-file CFG --task eval MODEL.DEVICE cuda \
        SOLVER.AMP.ENABLED True

A few batches are loaded once and reused, so the numbers are the model's (forward, backward and
optimizer step for training; forward for inference), not the data loader's. Every run times
``--num-iter`` iterations (or images) after ``--warmup`` untimed ones; the table gives the median
and the spread (min-max) over ``--runs`` runs. Peak memory is ``torch.cuda.max_memory_allocated``
on CUDA, and the peak resident set size of the process on CPU.

Inference is also split into the model's stages, each timed on its own
(``assigndet.evaluation.timing``): network and post-processing for the dense detectors; backbone,
first stage, second stage and post-processing for two-stage models (CenterNet2); backbone,
encoder, query selection, decoder and post-processing for DETA. ``--input-size 800 1333`` times
random images of exactly that size instead of dataset images:

    python tools/benchmark.py --task eval --config-file configs/centernet2_r50_1x.yaml \
        --input-size 800 1333 --runs 3 --num-iter 1 MODEL.DEVICE cpu

Weights stay at their initialization (MODEL.WEIGHTS is not loaded). The network's speed does not
depend on them, but the post-processing's does: an untrained FCOS passes almost no candidate
through its 0.05 score threshold. ``MODEL.FCOS.INFERENCE_TH_TEST 0.0`` gives NMS its worst case
instead (the top 1000 candidates of every level).

``--baseline-config-file`` benchmarks a second config first, with the same options, and prints
the ratio of every median, e.g. the PSS branch's cost and the post-processing it saves:

    python tools/benchmark.py --task eval --config-file configs/fcos_pss_r50_3x.yaml \
        --baseline-config-file configs/fcos_r50_1x.yaml MODEL.DEVICE cpu \
        DATASETS.TEST "('shapes_val',)" MODEL.FCOS.INFERENCE_TH_TEST 0.0
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import time

import torch
from tabulate import tabulate

import assigndet.projects  # noqa: F401  (methods register their meta-architectures)
from assigndet.config import load_config
from assigndet.data import build_detection_test_loader, build_detection_train_loader
from assigndet.engine import AMPTrainer, SimpleTrainer
from assigndet.engine.defaults import amp_dtype
from assigndet.evaluation.timing import synchronize_device, time_inference
from assigndet.modeling import build_model
from assigndet.solver import build_optimizer
from assigndet.utils.events import peak_memory_mb
from assigndet.utils.logger import setup_logger

logger = logging.getLogger("assigndet.benchmark")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="training / inference speed and peak memory")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--task", choices=["train", "eval"], default="train")
    parser.add_argument("--runs", type=int, default=5, help="timed runs")
    parser.add_argument("--num-iter", type=int, default=10,
                        help="iterations (train) or images (eval) per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--num-batches", type=int, default=8,
                        help="batches loaded once and cycled through")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="eval: time seeded random images of exactly this size (e.g. 800 "
                             "1333) instead of DATASETS.TEST images")
    parser.add_argument("--baseline-config-file", default="", metavar="FILE",
                        help="also benchmark this config first (same options and overrides) "
                             "and print the model / baseline ratio of every median")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def benchmark_train(cfg, args) -> tuple[list[float], float]:
    """Seconds per training iteration of each run, and peak memory in MiB."""
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    loader = iter(build_detection_train_loader(cfg))
    batches = [next(loader) for _ in range(args.num_batches)]
    data = itertools.cycle(batches)
    if cfg.SOLVER.AMP.ENABLED:
        trainer = AMPTrainer(model, data, optimizer, amp_dtype(cfg.SOLVER.AMP.PRECISION))
    else:
        trainer = SimpleTrainer(model, data, optimizer)
    device = next(model.parameters()).device
    trainer.train(0, args.warmup)
    synchronize_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_iter = []
    start_iter = args.warmup
    for _ in range(args.runs):
        start = time.perf_counter()
        trainer.train(start_iter, start_iter + args.num_iter)
        synchronize_device(device)
        per_iter.append((time.perf_counter() - start) / args.num_iter)
        start_iter += args.num_iter
    return per_iter, peak_memory_mb()


def benchmark_eval(cfg, args) -> tuple[dict[str, list[float]], float]:
    """Seconds per image of each run (batch of one image) in total and, for dense detectors,
    split into network and post-processing; and peak memory in MiB."""
    model = build_model(cfg)
    model.eval()
    if args.input_size:
        height, width = args.input_size
        generator = torch.Generator().manual_seed(0)
        batches = [
            [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                                     generator=generator), "height": height, "width": width}]
            for _ in range(args.num_batches)
        ]
    else:
        if not cfg.DATASETS.TEST:
            raise ValueError("--task eval needs a dataset in DATASETS.TEST (or --input-size)")
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
        batches = list(itertools.islice(iter(loader), args.num_batches))
    device = next(model.parameters()).device
    amp = cfg.SOLVER.AMP.ENABLED
    dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION) if amp else torch.float32
    if amp and device.type == "cpu":
        dtype = torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
        times = time_inference(model, batches, args.runs, args.num_iter, args.warmup)
    return times, peak_memory_mb()


def _summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
        for name, v in times.items()
    }


def benchmark_config(config_file: str, args) -> dict:
    """Timings of one config as ``{metric: {median, min, max, runs}, "peak_memory_mb": ...}``,
    printed as a table. The overrides ``args.opts`` apply."""
    cfg = load_config(config_file, args.opts)
    if args.task == "train":
        per_iter, peak = benchmark_train(cfg, args)
        times = {"train": per_iter}
    else:
        times, peak = benchmark_eval(cfg, args)
    device = cfg.MODEL.DEVICE
    amp = f"{cfg.SOLVER.AMP.PRECISION}" if cfg.SOLVER.AMP.ENABLED else "off"
    batch = cfg.SOLVER.IMS_PER_BATCH if args.task == "train" else 1
    memory = "peak RSS" if device == "cpu" else "max allocated"
    unit = "s / iter" if args.task == "train" else "s / image"
    table = [
        [f"{unit} ({name})", f"{statistics.median(v):.4f}", f"{min(v):.4f} - {max(v):.4f}", len(v)]
        for name, v in times.items()
    ]
    table[0].append(f"{peak:.0f} MiB ({memory})")
    print(tabulate(table, headers=["metric", "median", "spread (min - max)", "runs",
                                   "peak memory"], tablefmt="pipe"))
    print(f"config: {config_file}  model: "
          f"{cfg.MODEL.META_ARCHITECTURE}  device: {device}  AMP: {amp}  images per iteration: "
          f"{batch}  iterations per run: {args.num_iter}  threads: {torch.get_num_threads()}")
    result = _summary(times)
    result["peak_memory_mb"] = peak
    return result


def main(argv: list[str] | None = None) -> dict:
    args = get_parser().parse_args(argv)
    for name in ("runs", "num_iter", "num_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    setup_logger(name="assigndet")
    logging.getLogger("assigndet").setLevel(logging.WARNING)  # keep the table readable
    baseline = None
    if args.baseline_config_file:
        print(f"baseline: {args.baseline_config_file}")
        baseline = benchmark_config(args.baseline_config_file, args)
        print(f"\nmodel: {args.config_file}")
    result = benchmark_config(args.config_file, args)
    result["task"] = args.task
    if baseline is not None:
        shared = [k for k in result if k in baseline and isinstance(result[k], dict)]
        result["baseline"] = baseline
        result["ratio"] = {k: result[k]["median"] / baseline[k]["median"] for k in shared}
        table = [[k, f"{baseline[k]['median']:.4f}", f"{result[k]['median']:.4f}",
                  f"{result['ratio'][k]:.3f}"] for k in shared]
        print("\n" + tabulate(table, headers=["median", "baseline", "model", "model / baseline"],
                               tablefmt="pipe"))
        print("(on CPU the peak memory is the process's peak RSS, so the model's covers both)")
    return result


if __name__ == "__main__":
    main()
