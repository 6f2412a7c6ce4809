"""The number of classes of a config's heads, taken from (or checked against) its datasets.

Every architecture has its own ``NUM_CLASSES`` key. ``load_config`` marks those the config file
and the overrides leave unset (``UNSET``); ``resolve_num_classes`` then sets them to the number of
``thing_classes`` of DATASETS.TRAIN (or of DATASETS.TEST when nothing is trained), and checks the
keys that were set against it.
"""

from __future__ import annotations

import logging

from .catalog import MetadataCatalog

__all__ = ["NUM_CLASSES_KEYS", "UNSET", "mark_num_classes_unset", "resolve_num_classes"]

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


def _dataset_num_classes(cfg) -> tuple[int, list[str]] | None:
    """``(K, dataset names)`` from the ``thing_classes`` of the datasets the config names."""
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    counts = {}
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
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


def resolve_num_classes(cfg, defaults: dict[str, int] | None = None) -> None:
    """Fill in the unset NUM_CLASSES keys of the (unfrozen) ``cfg`` from its datasets and check
    the others against them.

    Args:
        defaults: value for each key left ``UNSET`` when the datasets give no ``thing_classes``
            (``mark_num_classes_unset`` returns them).

    Raises:
        ValueError: a set key disagrees with the data, naming the key, both numbers and the
            dataset; or a key is unset and there is nothing to take it from and no default.
    """
    found = _dataset_num_classes(cfg)
    for key, node, leaf in _present_keys(cfg):
        value = node[leaf]
        if found is None:
            if value == UNSET:
                if defaults is None or key not in defaults:
                    raise ValueError(
                        f"{key} is unset and DATASETS name no dataset with thing_classes "
                        "to take it from; set it"
                    )
                node[leaf] = defaults[key]
            continue
        num_classes, names = found
        if value == UNSET:
            node[leaf] = num_classes
        elif value != num_classes:
            raise ValueError(
                f"{key} is {value}, but dataset '{names[0]}' has {num_classes} classes "
                f"(its thing_classes); set {key} {num_classes}, or leave it unset to take it "
                "from the data"
            )
    if found is not None:
        logger.info("Number of classes from dataset '%s': %d", found[1][0], found[0])
