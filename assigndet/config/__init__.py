"""Configs: ``get_cfg()`` returns every default key, including those of each built-in method.

A method adds its keys with an ``add_<method>_config(cfg)`` function registered through
``register_config_adder``; ``get_cfg()`` imports ``assigndet.projects`` (where every built-in method
registers its adder) and applies all of them, so any config file of any built-in method merges
into ``get_cfg()`` with no extra step. The core itself never imports a method's model code.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import CfgNode, ConfigKeyError, ConfigTypeError
from .configurable import configurable

_CONFIG_ADDERS: list[Callable[[CfgNode], None]] = []


def register_config_adder(add_config: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Register ``add_<method>_config(cfg)`` for ``get_cfg()`` to apply. Usable as a decorator."""
    if add_config not in _CONFIG_ADDERS:
        _CONFIG_ADDERS.append(add_config)
    return add_config


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults: the core keys plus every registered method's keys."""
    import assigndet.projects  # noqa: F401  (built-in methods register their config adders)

    from .defaults import _C

    cfg = _C.clone()
    for add_config in _CONFIG_ADDERS:
        add_config(cfg)
    return cfg


def load_config(config_file: str = "", opts: list[str] | None = None) -> CfgNode:
    """The build order of every entry point: ``get_cfg()``, the file (if any), the ``KEY VALUE``
    overrides; frozen.

    The ``NUM_CLASSES`` keys that neither the file nor the overrides set are taken from the
    datasets' ``thing_classes``, and those that are set are checked against them
    (``assigndet.data.num_classes``).
    """
    from assigndet.data.num_classes import mark_num_classes_unset, resolve_num_classes

    cfg = get_cfg()
    defaults = mark_num_classes_unset(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    resolve_num_classes(cfg, defaults)
    cfg.freeze()
    return cfg


__all__ = [
    "CfgNode",
    "ConfigKeyError",
    "ConfigTypeError",
    "configurable",
    "get_cfg",
    "load_config",
    "register_config_adder",
]
