"""assigndet's config keys in a detectron2 ``CfgNode``."""

from __future__ import annotations

from assigndet.config import get_cfg

__all__ = ["add_assigndet_config"]


def add_assigndet_config(cfg) -> None:
    """Add to detectron2's ``cfg`` (unfrozen) every key of assigndet's ``get_cfg()`` that it
    lacks, with assigndet's default. Keys detectron2 has keep detectron2's value; at commit
    02b5c4e every such key has the same default in both libraries."""
    _add_missing(cfg, get_cfg(), type(cfg))


def _add_missing(dst, src, node_type) -> None:
    for key, value in src.items():
        if key not in dst:
            dst[key] = node_type(value) if isinstance(value, dict) else value
        elif isinstance(value, dict) and isinstance(dst[key], dict):
            _add_missing(dst[key], value, node_type)
