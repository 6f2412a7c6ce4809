"""Checks of a dataset before training: the image files exist and decode, the annotations are valid.

``check_images_exist`` is cheap (one ``stat`` per image) and runs at every dataset load.
``check_dataset`` decodes every image and validates every annotation; ``tools/check_dataset.py``
prints its report, and ``DATALOADER.CHECK_IMAGES`` runs it before training.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from assigndet.structures import BoxMode

from .detection_utils import read_image

__all__ = ["DatasetReport", "check_dataset", "check_images_exist"]

_SHOWN = 5  # problems listed in an error message


def _is_local(file_name: str) -> bool:
    return "://" not in file_name


def check_images_exist(dataset_dicts: Sequence[dict], dataset_names: Sequence[str]) -> None:
    """Raise FileNotFoundError listing the first missing image files and how many are missing."""
    missing = [
        d["file_name"]
        for d in dataset_dicts
        if _is_local(d["file_name"]) and not os.path.isfile(d["file_name"])
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(dataset_dicts)} image files of dataset(s) "
            f"{list(dataset_names)} do not exist, e.g.:\n  " + "\n  ".join(missing[:_SHOWN])
            + "\nCheck the image folder given with the dataset (image_root)."
        )


@dataclass
class DatasetReport:
    """What ``check_dataset`` found: counts, sizes and every problem (one line each)."""

    num_images: int = 0
    instances_per_class: Counter = field(default_factory=Counter)
    num_crowd: int = 0
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self, class_names: Sequence[str] | None = None) -> str:
        """A readable summary: images, instances per class, image sizes, problems."""
        lines = [f"images: {self.num_images}"]
        total = sum(self.instances_per_class.values())
        lines.append(f"instances: {total} (+ {self.num_crowd} crowd)")
        seen = 1 + max(self.instances_per_class, default=-1)
        for c in range(len(class_names) if class_names else seen):
            name = class_names[c] if class_names else f"class {c}"
            lines.append(f"  {name}: {self.instances_per_class.get(c, 0)}")
        if self.heights:
            h, w = np.asarray(self.heights), np.asarray(self.widths)
            lines.append(
                f"image sizes (h x w): min {h.min()} x {w.min()}, median {int(np.median(h))} x "
                f"{int(np.median(w))}, max {h.max()} x {w.max()}"
            )
        lines.append(f"problems: {len(self.problems)}")
        lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


def _annotation_problems(record: dict, num_classes: int | None) -> list[str]:
    problems = []
    where = record["file_name"]
    height, width = record.get("height"), record.get("width")
    for i, ann in enumerate(record.get("annotations", [])):
        what = f"{where}: annotation {ann.get('id', i)}"
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4 or not all(math.isfinite(float(v)) for v in bbox):
            problems.append(f"{what}: bbox {bbox} is not 4 finite numbers")
            continue
        category = ann.get("category_id")
        if not isinstance(category, int) or category < 0 or (
            num_classes is not None and category >= num_classes
        ):
            problems.append(f"{what}: category_id {category} is not in [0, {num_classes})")
        x0, y0, x1, y1 = BoxMode.convert(list(bbox), ann["bbox_mode"], BoxMode.XYXY_ABS)
        if not (x1 > x0 and y1 > y0):
            problems.append(f"{what}: bbox {list(bbox)} has a width or height <= 0")
        elif height and width and (x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0):
            problems.append(f"{what}: bbox {list(bbox)} lies outside the {width}x{height} image")
    return problems


def check_dataset(
    dataset_dicts: Sequence[dict],
    num_classes: int | None = None,
    decode: bool = True,
    progress: bool = True,
) -> DatasetReport:
    """Validate every record of ``dataset_dicts`` (and decode its image, with ``decode``).

    Problems reported: a missing or undecodable image, a decoded size other than the record's
    ``height`` x ``width``, a bbox that is not 4 finite numbers, empty or outside its image, and a
    ``category_id`` outside ``[0, num_classes)``.
    """
    report = DatasetReport(num_images=len(dataset_dicts))
    records = tqdm(dataset_dicts, desc="checking images", unit="img", disable=not progress)
    for record in records:
        file_name = record["file_name"]
        height, width = record.get("height"), record.get("width")
        if decode:
            try:
                image = read_image(file_name)
            except (FileNotFoundError, ValueError) as e:
                report.problems.append(str(e))
                image = None
            if image is not None:
                height = height or image.shape[0]
                width = width or image.shape[1]
                if (image.shape[0], image.shape[1]) != (height, width):
                    report.problems.append(
                        f"{file_name}: decoded size {image.shape[0]}x{image.shape[1]} (h x w) "
                        f"differs from the annotated {height}x{width}"
                    )
        elif _is_local(file_name) and not os.path.isfile(file_name):
            report.problems.append(f"Image file not found: {file_name}")
        if height and width:
            report.heights.append(int(height))
            report.widths.append(int(width))
        report.problems.extend(_annotation_problems(record, num_classes))
        for ann in record.get("annotations", []):
            if ann.get("iscrowd", 0):
                report.num_crowd += 1
            elif isinstance(ann.get("category_id"), int):
                report.instances_per_class[ann["category_id"]] += 1
    return report
