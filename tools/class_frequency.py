#!/usr/bin/env python
"""Per-class image counts of a registered dataset, the input of CenterNet2's federated loss.

    python tools/class_frequency.py --dataset lvis_v1_train --output datasets/lvis_cat_info.json

Writes a JSON list ``[{"id": class index, "image_count": images with that class}, ...]`` over
all classes of the dataset's metadata (``thing_classes``), in LVIS's ``*_cat_info.json`` format,
for ``MODEL.ROI_BOX_HEAD.CAT_FREQ_PATH``. Ids are the contiguous class indices of the dataset
dicts, so the file lines up with ``MODEL.ROI_HEADS.NUM_CLASSES``.
"""

from __future__ import annotations

import argparse
import json
import os

import assigndet.data  # noqa: F401  (registers the builtin datasets)
from assigndet.data import DatasetCatalog, MetadataCatalog


def class_image_counts(dataset_dicts: list[dict], num_classes: int) -> list[int]:
    """Number of images in which each of the ``num_classes`` classes is annotated."""
    counts = [0] * num_classes
    for record in dataset_dicts:
        classes = {ann["category_id"] for ann in record.get("annotations", [])}
        for c in classes:
            if not 0 <= c < num_classes:
                raise ValueError(
                    f"{record.get('file_name', '?')}: category_id {c} is outside the "
                    f"{num_classes} classes of the dataset's metadata"
                )
            counts[c] += 1
    return counts


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="per-class image counts (LVIS cat_info format)")
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output", required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    classes = MetadataCatalog.get(args.dataset).get("thing_classes")
    if not classes:
        raise ValueError(f"dataset {args.dataset!r} has no thing_classes in its metadata")
    counts = class_image_counts(DatasetCatalog.get(args.dataset), len(classes))
    entries = [
        {"id": i, "name": name, "image_count": n}
        for i, (name, n) in enumerate(zip(classes, counts))
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(entries, f)
    os.replace(tmp, args.output)
    print(f"{args.output}: {len(entries)} classes, image counts {counts}")
    return args.output


if __name__ == "__main__":
    main()
