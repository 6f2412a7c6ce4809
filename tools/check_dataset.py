#!/usr/bin/env python
"""Check a dataset before training on it: every image decodes, every annotation is valid.

    python tools/check_dataset.py --dataset coco:path/to/instances.json:path/to/images
    python tools/check_dataset.py --config-file CFG            # its DATASETS.TRAIN and TEST

Prints a summary per dataset (images, instances per class, image sizes) and every problem found
(missing or undecodable image, size other than the annotated one, invalid box or class), with a
progress bar while decoding. Exits with status 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import sys

from assigndet.config import load_config
from assigndet.data import DatasetCatalog, MetadataCatalog
from assigndet.data.check import check_dataset


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", action="append", default=[],
        help="a registered dataset or coco:JSON:IMAGES (repeatable)",
    )
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="check the DATASETS.TRAIN and DATASETS.TEST of this config")
    parser.add_argument("--no-decode", action="store_true",
                        help="only check that the image files exist, without decoding them")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Check each dataset, print its report; returns the number of problems."""
    args = get_parser().parse_args(argv)
    names = list(args.dataset)
    if args.config_file or args.opts:
        cfg = load_config(args.config_file, args.opts)
        names += [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n not in names]
    if not names:
        raise SystemExit("Nothing to check: pass --dataset NAME or --config-file CFG")
    num_problems = 0
    for name in names:
        # the dicts as the json gives them: no check of image files at load, the report does it
        dataset_dicts = DatasetCatalog.get(name)
        if not dataset_dicts:
            print(f"== {name}\nproblems: 1\n  the dataset has no images")
            num_problems += 1
            continue
        classes = MetadataCatalog.get(name).get("thing_classes")
        report = check_dataset(
            dataset_dicts, len(classes) if classes is not None else None,
            decode=not args.no_decode,
        )
        print(f"== {name}\n{report.summary(classes)}")
        num_problems += len(report.problems)
    return num_problems


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
