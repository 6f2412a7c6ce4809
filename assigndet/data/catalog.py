"""Global catalogs: dataset name -> function returning dataset dicts, and name -> metadata.

A name of the form ``coco:JSON:IMAGES`` (a COCO instances json and its image folder) needs no
registration: both catalogs register it on first use, in whichever process asks.
"""

from __future__ import annotations

import multiprocessing
from collections import UserDict
from collections.abc import Callable
from typing import Any

COCO_SPEC_PREFIX = "coco:"


def _register_if_spec(name: str) -> None:
    if name.startswith(COCO_SPEC_PREFIX) and name not in DatasetCatalog:
        from .datasets.coco import register_coco_spec

        register_coco_spec(name)


def _not_registered_hint() -> str:
    hint = (
        "Register a dataset at import time or in the function that launch() runs (main() of "
        "train_net.py), or name a COCO-format dataset directly as "
        "'coco:path/to/instances.json:path/to/images'."
    )
    if multiprocessing.parent_process() is not None:
        hint = (
            "This process was started by another (launch() with --num-gpus > 1, or a data "
            "loader worker): datasets registered under `if __name__ == \"__main__\":` of the "
            "starting script do not exist here. " + hint
        )
    return hint


class _DatasetCatalog(UserDict):
    """Maps a dataset name to a no-argument function returning its list of dataset dicts.

    The function is called on every ``get``, so a dataset is only read (or generated) when used.
    """

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError(
                f"DatasetCatalog.register('{name}', ...) needs a callable, got {func!r}"
            )
        if name in self:
            raise ValueError(f"Dataset '{name}' is already registered")
        self[name] = func

    def get(self, name: str) -> list[dict]:  # type: ignore[override]
        _register_if_spec(name)
        try:
            func = self[name]
        except KeyError as e:
            raise KeyError(
                f"Dataset '{name}' is not registered. Registered datasets: "
                f"{', '.join(self.list())}. {_not_registered_hint()}"
            ) from e
        return func()

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __repr__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"


DatasetCatalog = _DatasetCatalog()


class Metadata:
    """Attributes of one dataset (``thing_classes``, ``json_file``, ``evaluator_type``...).

    A key can be set once; setting it again to the same value is a no-op, to a different value an
    error. Some keys may be computed when read (see ``set_lazy``), e.g. paths under
    ``$ASSIGNDET_DATASETS``, so they follow the environment at the time of use.
    """

    def __init__(self, name: str = "") -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_lazy", {})

    def __getattr__(self, key: str) -> Any:
        lazy = self.__dict__.get("_lazy", {})
        if key in lazy:
            return lazy[key]()
        raise AttributeError(
            f"Metadata of dataset '{self.__dict__.get('name', '')}' has no field '{key}'. "
            f"Available fields: {sorted(self.as_dict())}"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ or key in self._lazy:
            old = getattr(self, key)
            if not _same_value(old, value):
                raise ValueError(
                    f"Metadata '{key}' of dataset '{self.name}' is already {old!r}; "
                    f"cannot set it to {value!r}"
                )
            return
        object.__setattr__(self, key, value)

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"Metadata fields cannot be deleted (dataset '{self.name}', '{key}')")

    def set(self, **kwargs: Any) -> Metadata:
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def set_lazy(self, **funcs: Callable[[], Any]) -> Metadata:
        """Make each key computed by its no-argument function whenever it is read."""
        for k, fn in funcs.items():
            if k in self.__dict__ or k in self._lazy:
                raise ValueError(f"Metadata '{k}' of dataset '{self.name}' is already set")
            self._lazy[k] = fn
        return self

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "_lazy"}
        out.update({k: fn() for k, fn in self.__dict__.get("_lazy", {}).items()})
        return out

    def __repr__(self) -> str:
        return f"Metadata({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. arrays, whose == is elementwise
        return a is b


class _MetadataCatalog(UserDict):
    """Maps a dataset name to its ``Metadata``; ``get`` creates an empty one on first use."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        _register_if_spec(name)
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> list[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __repr__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"


MetadataCatalog = _MetadataCatalog()
