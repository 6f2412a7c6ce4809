"""Access to the compiled kernels in `assigndet._C`, with a one-time warning on fallback."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

try:
    from assigndet import _C
except ImportError as e:  # built without the extension, or built against another torch
    _C = None
    _IMPORT_ERROR: str | None = str(e)
else:
    _IMPORT_ERROR = None

_WARNED: set[tuple[str, str]] = set()


def compiled_op(name: str, device: torch.device) -> Callable | None:
    """The compiled kernel `name` for `device`, or None (warning once per op and device type).

    Kernels are bound in `assigndet._C` as `<name>_<device type>`, e.g. `nms_cpu`, `nms_cuda`.
    """
    fn = getattr(_C, f"{name}_{device.type}", None)
    if fn is None and (name, device.type) not in _WARNED:
        _WARNED.add((name, device.type))
        if _C is None:
            reason = f"assigndet._C could not be imported ({_IMPORT_ERROR})"
        else:
            reason = f"assigndet._C was built without a {device.type} kernel for it"
        warnings.warn(
            f"assigndet.ops.{name}: {reason}; using the pure-PyTorch reference, which gives the "
            "same results more slowly",
            RuntimeWarning,
            stacklevel=3,
        )
    return fn
