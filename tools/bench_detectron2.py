#!/usr/bin/env python
"""Inference time of a config standalone and inside detectron2, with the same weights and image.

    python tools/bench_detectron2.py [--config-file configs/centernet2_r50_1x.yaml]
        [--size 800 1216] [--runs 5] [--threads 2]

Builds the model twice: with assigndet's ``build_model`` from assigndet's config, and with
detectron2's ``build_model`` from detectron2's ``get_cfg()`` + ``add_assigndet_config`` + the same
YAML; copies the first's weights into the second; then times one image of ``--size`` through
each, interleaved A B A B, and prints min / median / max in s / image and the ratio of medians.
It also times the structure conversions alone (every call of ``assigndet.detectron2``'s
converters during one inference) and prints their share of detectron2's time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import assigndet.detectron2.registration as registration
from assigndet.config import load_config
from assigndet.detectron2 import add_assigndet_config
from assigndet.detectron2 import build_model as d2_build_model
from assigndet.modeling import build_model

CONVERTERS = ("image_list_from_d2", "inputs_from_d2", "outputs_to_d2", "_instances_list_from_d2",
              "_instances_list_to_d2")


def _detectron2_cfg(config_file: str):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_assigndet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


class _ConversionTimer:
    """Accumulates the time of every converter call made through ``registration``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._originals = {name: getattr(registration, name) for name in CONVERTERS}

    def __enter__(self):
        for name, fn in self._originals.items():
            setattr(registration, name, self._timed(fn))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._originals.items():
            setattr(registration, name, fn)

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _time(model, inputs) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(inputs)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/centernet2_r50_1x.yaml")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = build_model(load_config(args.config_file, ["MODEL.DEVICE", "cpu"])).eval()
    theirs = d2_build_model(_detectron2_cfg(args.config_file)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    height, width = args.size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": height, "width": width}]

    _time(ours, inputs), _time(theirs, inputs)  # warm-up
    times: dict[str, list[float]] = {"standalone": [], "detectron2": []}
    conversion = []
    for _ in range(args.runs):
        times["standalone"].append(_time(ours, inputs))
        with _ConversionTimer() as timer:
            times["detectron2"].append(_time(theirs, inputs))
        conversion.append(timer.seconds)

    print(f"{args.config_file}, one {height}x{width} image, {args.threads} threads, "
          f"{args.runs} runs (s / image)")
    for name, values in times.items():
        print(f"  {name:<11} min {min(values):.3f}  median {statistics.median(values):.3f}  "
              f"max {max(values):.3f}")
    ratio = statistics.median(times["detectron2"]) / statistics.median(times["standalone"])
    share = statistics.median(conversion) / statistics.median(times["detectron2"])
    print(f"  detectron2 / standalone: {ratio:.3f}")
    print(f"  structure conversions: median {statistics.median(conversion) * 1e3:.3f} ms "
          f"= {100 * share:.3f} % of detectron2's time")
    return {"times": times, "ratio": ratio, "conversion_share": share}


if __name__ == "__main__":
    main()
