"""``@configurable``: constructors that take either explicit arguments or a config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode


def configurable(init: Callable[..., None]) -> Callable[..., None]:
    """Let ``__init__`` take either its explicit arguments or a config.

    ``Cls(cfg, ...)`` calls ``Cls.from_config(cfg, ...)`` and passes the returned dict to the
    decorated ``__init__``; any other call goes to ``__init__`` unchanged, so modules can be built
    in tests and by users without a config.
    """

    @functools.wraps(init)
    def wrapped(self, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], _FvCfgNode):
            init(self, **type(self).from_config(*args, **kwargs))
        else:
            init(self, *args, **kwargs)

    return wrapped
