#!/usr/bin/env python
"""Throughput of the training data loader (read, resize, flip, batch) in images per second.

Examples:
    python tools/benchmark_dataloader.py
    python tools/benchmark_dataloader.py --workers 0,2,4 --runs 5 --batches 50
    python tools/benchmark_dataloader.py --config-file configs/quickstart/fcos_shapes.yaml \\
        SOLVER.IMS_PER_BATCH 16

Without a config file it uses the shapes dataset at small sizes: DATASETS.TRAIN shapes_train,
INPUT.MIN_SIZE_TRAIN (224, 256, 288), MAX_SIZE_TRAIN 480, SOLVER.IMS_PER_BATCH 8. The shapes
dataset is generated under $ASSIGNDET_DATASETS on first use (not timed).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from tabulate import tabulate

from assigndet.config import get_cfg
from assigndet.data import DatasetCatalog, build_detection_train_loader


def setup_cfg(args: argparse.Namespace):
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    else:
        cfg.DATASETS.TRAIN = ("shapes_train",)
        cfg.INPUT.MIN_SIZE_TRAIN = (224, 256, 288)
        cfg.INPUT.MAX_SIZE_TRAIN = 480
        cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SEED = 0
    cfg.merge_from_list(args.opts)
    return cfg


def time_loader(cfg, num_workers: int, warmup: int, batches: int) -> float:
    """Images per second over ``batches`` batches, after ``warmup`` batches (worker start-up)."""
    cfg = cfg.clone()
    cfg.DATALOADER.NUM_WORKERS = num_workers
    it = iter(build_detection_train_loader(cfg))
    for _ in itertools.islice(it, warmup):
        pass
    start = time.perf_counter()
    images = sum(len(batch) for batch in itertools.islice(it, batches))
    elapsed = time.perf_counter() - start
    del it  # stops the workers
    return images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument(
        "--workers", default="0,2", help="comma-separated DATALOADER.NUM_WORKERS values"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per setting; the median is shown")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    cfg = setup_cfg(args)
    for name in cfg.DATASETS.TRAIN:  # generate / read once before timing
        DatasetCatalog.get(name)

    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        rates = [time_loader(cfg, workers, args.warmup, args.batches) for _ in range(args.runs)]
        rows.append((workers, f"{statistics.median(rates):.1f}", f"{min(rates):.1f}",
                     f"{max(rates):.1f}"))  # fmt: skip
    print(
        f"datasets {list(cfg.DATASETS.TRAIN)}, batch {cfg.SOLVER.IMS_PER_BATCH}, "
        f"MIN_SIZE_TRAIN {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, MAX_SIZE_TRAIN "
        f"{cfg.INPUT.MAX_SIZE_TRAIN}, flip {cfg.INPUT.RANDOM_FLIP}, "
        f"{args.runs} runs x {args.batches} batches"
    )
    headers = ["workers", "images/s (median)", "min", "max"]
    print(tabulate(rows, headers=headers, tablefmt="pipe"))


if __name__ == "__main__":
    main()
