#!/usr/bin/env python
"""Convert an official DETA checkpoint (two-stage, ResNet-50) into weights for our ``DETA``.

    python tools/convert_deta_checkpoint.py adet_checkpoint0011.pth output/deta_r50_coco.pth
    python tools/convert_deta_checkpoint.py IN.pth OUT.pth --check-config CFG.yaml

Reads ``{"model": state dict, "args": ...}`` or a bare state dict without running code from the
file, renames the keys (see ``assigndet.projects.deta.checkpoint_conversion``), cuts the 91-way
class heads to COCO's 80 classes (``--keep-91-classes`` keeps them), prints a report and writes
``{"model": ..., "__author__": ..., "matching_heuristics": False}`` atomically, loadable with
``MODEL.WEIGHTS``. With ``--check-config`` the model of that config is built and every key's
shape compared first; the file is written only if they all agree.
"""

from __future__ import annotations

import argparse
import sys

import torch

from assigndet.checkpoint.detection_checkpoint import atomic_write
from assigndet.checkpoint.serialization import UnsafeCheckpointError
from assigndet.projects.deta.checkpoint_conversion import (
    compare_with_model_shapes,
    convert_official_deta_state_dict,
    load_official_checkpoint,
    unwrap_official_checkpoint,
)


def model_shapes_from_config(config_file: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``state_dict()`` of the model built (on the CPU) from a config."""
    from assigndet.config import load_config
    from assigndet.modeling import build_model

    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu"])
    return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="official DETA checkpoint -> assigndet DETA")
    parser.add_argument("official", metavar="OFFICIAL.pth", help="an official DETA checkpoint")
    parser.add_argument("output", metavar="OUT.pth", help="the converted file to write")
    parser.add_argument(
        "--keep-91-classes",
        action="store_true",
        help="keep the 91-way class heads indexed by COCO id instead of 80 contiguous classes",
    )
    parser.add_argument(
        "--allow-unmapped",
        action="store_true",
        help="leave out keys with no counterpart in DETA instead of failing",
    )
    parser.add_argument(
        "--check-config",
        metavar="CFG",
        help="build the model of this config and require every key and shape to match",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; 0 on success, 1 (with the reason on stderr) on failure."""
    args = get_parser().parse_args(argv)
    try:
        state_dict = unwrap_official_checkpoint(load_official_checkpoint(args.official))
        converted, report = convert_official_deta_state_dict(
            state_dict,
            coco_91_to_80=not args.keep_91_classes,
            allow_unmapped=args.allow_unmapped,
        )
    except (OSError, ValueError, UnsafeCheckpointError) as e:
        print(f"error: {args.official}: {e}", file=sys.stderr)
        return 1
    print(report.format())
    if "class_embed.0.weight" in converted:
        print(f"class heads: {converted['class_embed.0.weight'].shape[0]} outputs")
    if args.check_config:
        problems = compare_with_model_shapes(converted, model_shapes_from_config(args.check_config))
        if problems:
            print(
                f"error: the converted weights do not fit the model of {args.check_config} "
                f"({len(problems)} problems); {args.output} not written:\n  "
                + "\n  ".join(problems),
                file=sys.stderr,
            )
            return 1
        print(f"every key and shape matches the model of {args.check_config}")
    checkpoint = {
        "model": converted,
        "__author__": "DETA official (converted)",
        "matching_heuristics": False,
    }
    atomic_write(args.output, lambda f: torch.save(checkpoint, f))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
