"""Reading checkpoint files without running code from them.

``.pth`` files go through ``torch.load(weights_only=True)``; ``.pkl`` files (detectron2 model zoo,
Caffe2/Detectron ImageNet models: pickled dicts of numpy arrays, latin1 strings) go through
``RestrictedUnpickler``, which rebuilds only numpy arrays, dtypes, numpy scalars and plain
containers. A file needing anything else is refused with an ``UnsafeCheckpointError`` naming
what it asked for.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import IO, Any

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects whose unpickling could run arbitrary code."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python-3 pickles of bytes at protocol <= 2 call _codecs.encode(text, "latin1").
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED_GLOBALS[(_module, "scalar")] = _multiarray.scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_module, "_frombuffer")] = _numeric._frombuffer
_ALLOWED_GLOBALS.update(
    {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        # Pickles of protocol <= 2 rebuild (empty) bytes objects by calling bytes().
        ("__builtin__", "bytes"): bytes,
        ("builtins", "bytes"): bytes,
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and refuses anything else.

    Dicts, lists, tuples, strings and numbers need no global lookup; the only globals admitted
    are numpy's array/scalar reconstruction functions, ``numpy.ndarray``, ``numpy.dtype``,
    ``collections.OrderedDict``, ``bytes`` and a latin1-only ``_codecs.encode``.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to unpickle '{module}.{name}': a weights file may hold only numpy "
                "arrays and plain containers, and this class could run code when loaded"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"refusing persistent id {pid!r} in a .pkl weights file")


def load_pkl(f: IO[bytes] | bytes) -> Any:
    """Unpickle a .pkl weights file (latin1 strings, as written by Python 2) safely."""
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    return RestrictedUnpickler(f, encoding="latin1").load()


def load_pth(path: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers, mapped to the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's message names the refused global on a line mentioning "unsupported".
        refused = [line for line in lines if "unsupported" in line.lower()]
        reason = (refused or lines or ["unknown reason"])[0]
        raise UnsafeCheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain "
            f"containers, whose unpickling could run code ({reason}). Only load it "
            "unrestricted if you trust its source, then save its state dicts alone."
        ) from None
