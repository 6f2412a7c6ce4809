"""``CfgNode``: fvcore's config node with ``_BASE_`` chains and errors that name key, file and type.

Merge rules are yacs's (and so detectron2's): every key must already exist in the defaults, and a
value must have the type of its default, except that lists and tuples interchange and ``None`` is
accepted on either side. ``int`` for a ``float`` key is an error (``SOLVER.BASE_LR 1``), as in
detectron2. Each file of a ``_BASE_`` chain is checked on its own, so an error names the file that
holds the bad key.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
from typing import Any

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode
from iopath.common.file_io import g_pathmgr

BASE_KEY = "_BASE_"
_VALID_TYPES = (tuple, list, str, int, float, bool, type(None))

logger = logging.getLogger(__name__)


class ConfigKeyError(KeyError):
    """An unknown config key. ``str()`` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigTypeError(ValueError):
    """A config value whose type does not match the key's default."""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_value(key: str, default: Any, value: Any, source: str) -> Any:
    """Return ``value`` coerced to the type of ``default``, or raise ``ConfigTypeError``."""
    if isinstance(default, _FvCfgNode):
        if not isinstance(value, dict):
            raise ConfigTypeError(
                f"Config key '{key}' in {source}: expected a mapping of sub-keys, got "
                f"{_type_name(value)} {value!r}"
            )
        return value
    if type(value) is type(default) or value is None or default is None:
        return value
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        # Nested sequences (e.g. per-stage box weights) follow the default's inner type too.
        inner = type(default[0]) if default and isinstance(default[0], (list, tuple)) else None
        if inner is not None:
            value = [inner(v) if isinstance(v, (list, tuple)) else v for v in value]
        return type(default)(value)
    raise ConfigTypeError(
        f"Config key '{key}' in {source}: expected {_type_name(default)} (like the default "
        f"{default!r}), got {_type_name(value)} {value!r}"
    )


def _unknown_key_error(key: str, node: _FvCfgNode, prefix: str, source: str) -> ConfigKeyError:
    full = prefix + key
    known = [prefix + k for k in node.keys()]
    close = difflib.get_close_matches(full, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigKeyError(
        f"Unknown config key '{full}' in {source}.{hint} Keys must exist in the defaults of "
        f"get_cfg(); a method's keys are added by its add_<method>_config(cfg)."
    )


def _read_yaml(filename: str, allow_unsafe: bool) -> dict:
    with g_pathmgr.open(filename, "r") as f:
        text = f.read()
    try:
        loaded = yaml.safe_load(text)
    except yaml.constructor.ConstructorError:
        if not allow_unsafe:
            raise
        logger.warning(
            "Config file %s has Python tags (e.g. detectron2's !!python/object/apply:eval); "
            "loading it with yaml.unsafe_load",
            filename,
        )
        loaded = yaml.unsafe_load(text)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigTypeError(
            f"Config file {filename} must hold a mapping, got {_type_name(loaded)}"
        )
    return loaded


def _resolve_base(base: str, including_file: str) -> str:
    base = os.path.expanduser(base)
    if base.startswith(("http://", "https://", "/")) or "://" in base:
        return base
    return os.path.join(os.path.dirname(including_file), base)


def _deep_merge(src: dict, dst: dict) -> dict:
    """Merge ``src`` into ``dst`` in place: mappings per key; scalars and lists replaced."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(value, dst[key])
        elif isinstance(dst.get(key), dict) and not isinstance(value, dict):
            raise ConfigTypeError(f"Config key '{key}': a mapping cannot be replaced by {value!r}")
        else:
            dst[key] = value
    return dst


class CfgNode(_FvCfgNode):
    """A config node: dict with attribute access, freezing, ``_BASE_`` files and checked merges."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config.

        Raises:
            FileNotFoundError: the file or one of its bases does not exist.
            ConfigKeyError: a key is not in the defaults (the message names the file).
            ConfigTypeError: a value has the wrong type (the message names key, file and type).
        """
        loaded = self._load_with_bases(cfg_filename, allow_unsafe, chain=())
        self.merge_from_other_cfg(type(self)(loaded))

    def _load_with_bases(self, filename: str, allow_unsafe: bool, chain: tuple[str, ...]) -> dict:
        if "://" not in filename and not os.path.isfile(filename):
            included = f" (named as _BASE_ by {chain[-1]})" if chain else ""
            raise FileNotFoundError(f"Config file {filename} does not exist{included}")
        if filename in chain:
            raise ValueError(f"Config file {filename} includes itself through _BASE_: {chain}")
        cfg = _read_yaml(filename, allow_unsafe)
        bases = cfg.pop(BASE_KEY, None)
        self._validate(cfg, self, "", filename)
        if bases is None:
            return cfg
        merged: dict = {}
        for base in [bases] if isinstance(bases, str) else list(bases):
            resolved = _resolve_base(base, filename)
            _deep_merge(self._load_with_bases(resolved, allow_unsafe, chain + (filename,)), merged)
        return _deep_merge(cfg, merged)

    @staticmethod
    def _validate(values: dict, node: _FvCfgNode, prefix: str, source: str) -> None:
        """Check every key of ``values`` exists in ``node`` with a compatible type (in place)."""
        for key in list(values):
            full = prefix + key
            if key not in node:
                if node.is_new_allowed():
                    continue
                raise _unknown_key_error(key, node, prefix, source)
            # Like yacs, strings that read as Python literals are parsed: detectron2 configs write
            # tuples as strings, e.g. TRAIN: ("coco_2017_train",).
            values[key] = _check_value(full, node[key], CfgNode._decode_value(values[key]), source)
            if isinstance(node[key], _FvCfgNode):
                CfgNode._validate(values[key], node[key], full + ".", source)

    def merge_from_list(self, cfg_list: list) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` (command-line overrides).

        Values are parsed with ``ast.literal_eval`` and fall back to the raw string, so
        ``MODEL.WEIGHTS /a/b.pth`` and ``SOLVER.STEPS "(10, 20)"`` both work.
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"Config overrides must be KEY VALUE pairs; got an odd number of items: {cfg_list}"
            )
        source = "the command-line overrides"
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise ValueError(f"{BASE_KEY} cannot be set from {source}; use merge_from_file")
            node: _FvCfgNode = self
            parts = full_key.split(".")
            for depth, part in enumerate(parts):
                prefix = ".".join(parts[:depth]) + "." if depth else ""
                if part not in node:
                    raise _unknown_key_error(part, node, prefix, source)
                if depth < len(parts) - 1:
                    node = node[part]
                    if not isinstance(node, _FvCfgNode):
                        raise ConfigKeyError(
                            f"Config key '{prefix + part}' has no sub-key '{parts[depth + 1]}'"
                        )
            value = self._decode_value(raw)
            setattr(node, parts[-1], _check_value(full_key, node[parts[-1]], value, source))

    @staticmethod
    def _decode_value(raw: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
