"""The number of classes of a config's heads, taken from (or checked against) its datasets.

Every architecture has its own ``NUM_CLASSES`` key. ``load_config`` marks those the config file
and the overrides leave unset (``UNSET``); ``resolve_num_classes`` then sets them to the number of
``thing_classes`` of DATASETS.TRAIN (or of DATASETS.TEST when nothing is trained). Each head
reads its key through ``checked_num_classes``, which compares it with the same number: only the
keys a model uses are checked, so a config that also holds other architectures' keys is fine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .catalog import MetadataCatalog

__all__ = [
    "NUM_CLASSES_KEYS",
    "UNSET",
    "checked_num_classes",
    "mark_num_classes_unset",
    "resolve_num_classes",
]

logger = logging.getLogger(__name__)

NUM_CLASSES_KEYS = (
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "MODEL.RETINANET.NUM_CLASSES",
    "MODEL.FCOS.NUM_CLASSES",
    "MODEL.CENTERNET.NUM_CLASSES",
    "MODEL.DETA.NUM_CLASSES",
)
UNSET = -1


def _present_keys(cfg) -> list[tuple[str, object, str]]:
    """``(full key, parent node, leaf name)`` of the NUM_CLASSES keys this config has."""
    found = []
    for key in NUM_CLASSES_KEYS:
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.get(part) if hasattr(node, "get") else None
        if node is not None and leaf in node:
            found.append((key, node, leaf))
    return found


def mark_num_classes_unset(cfg) -> dict[str, int]:
    """Set every NUM_CLASSES key of a fresh, unfrozen config to ``UNSET``; returns the defaults."""
    defaults = {}
    for key, node, leaf in _present_keys(cfg):
        defaults[key] = node[leaf]
        node[leaf] = UNSET
    return defaults


def _thing_classes(name: str) -> list[str] | None:
    return MetadataCatalog.get(name).get("thing_classes")


def _dataset_num_classes(
    cfg, class_names: Callable[[str], list[str] | None] = _thing_classes
) -> tuple[int, list[str]] | None:
    """``(K, dataset names)`` from the ``thing_classes`` of the datasets the config names."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    counts = {}
    for name in names:
        classes = class_names(name)
        if classes is not None:
            counts[name] = len(classes)
    if not counts:
        return None
    if len(set(counts.values())) > 1:
        raise ValueError(
            "The datasets of the config have different numbers of classes: "
            + ", ".join(f"'{n}': {k}" for n, k in counts.items())
        )
    return next(iter(counts.values())), list(counts)


def resolve_num_classes(
    cfg,
    defaults: dict[str, int],
    class_names: Callable[[str], list[str] | None] = _thing_classes,
) -> None:
    """Set the ``UNSET`` NUM_CLASSES keys of the (unfrozen) ``cfg`` to the datasets' number of
    classes, or to ``defaults[key]`` (logged) when the datasets give no ``thing_classes``.

    Args:
        class_names: a dataset's ``thing_classes`` (default: from assigndet's MetadataCatalog).
    """
    found = _dataset_num_classes(cfg, class_names)
    for key, node, leaf in _present_keys(cfg):
        if node[leaf] != UNSET:
            continue
        if found is not None:
            node[leaf] = found[0]
        else:
            node[leaf] = defaults[key]
            logger.info(
                "%s = %d (the default): DATASETS name no dataset with thing_classes",
                key, node[leaf],
            )
    if found is not None:
        logger.info("Number of classes from dataset '%s': %d", found[1][0], found[0])


def checked_num_classes(cfg, key: str) -> int:
    """The value of the NUM_CLASSES ``key`` (e.g. "MODEL.FCOS.NUM_CLASSES"), for a head's
    ``from_config``.

    Raises:
        ValueError: it is not positive, or differs from the number of ``thing_classes`` of the
            datasets the config names; the message names the key, both numbers and the dataset.
    """
    node = cfg
    for part in key.split("."):
        node = node[part]
    value = int(node)
    if value <= 0:
        raise ValueError(
            f"{key} must be > 0, got {value}; load the config with assigndet.config.load_config "
            "to take it from the datasets"
        )
    found = _dataset_num_classes(cfg)
    if found is not None and value != found[0]:
        raise ValueError(
            f"{key} is {value}, but dataset '{found[1][0]}' has {found[0]} classes (its "
            f"thing_classes); set {key} {found[0]}, or leave it out of the config file and the "
            "overrides that load_config reads to take it from the data"
        )
    return value
