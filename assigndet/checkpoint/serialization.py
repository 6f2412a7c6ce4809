"""Reading checkpoint files without running code from them.

``.pth`` files go through ``torch.load(weights_only=True)``; ``.pkl`` files (detectron2 model zoo,
Caffe2/Detectron ImageNet models: pickled dicts of numpy arrays, latin1 strings) go through
``RestrictedUnpickler``, which rebuilds only numpy arrays, dtypes, numpy scalars and plain
containers. A file needing anything else is refused with an ``UnsafeCheckpointError`` naming
what it asked for; a file that is no checkpoint at all (text, truncated, another format) gives an
``UnreadableCheckpointError`` naming the file and what it looks like.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
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


class UnreadableCheckpointError(ValueError):
    """A weights file is not a checkpoint: text, truncated, empty or of another format."""


def describe_file(path: str) -> str:
    """What a file looks like from its first bytes, for error messages, e.g. "a text file of 19
    bytes starting with 'hello'" or "a zip archive (torch.save's format) that is incomplete"."""
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return (
            f"a zip archive (torch.save's format) of {size} bytes that is incomplete or damaged, "
            "e.g. cut short by an interrupted copy or download"
        )
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return f"pickle data (protocol {head[1]}) of {size} bytes that is truncated or damaged"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (e.g. Keras weights), not a PyTorch or detectron2 checkpoint"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive: decompress it first"
    if len(head) > 9 and head[8:10] == b'{"' and struct.unpack("<Q", head[:8])[0] < size:
        return "a safetensors file, not a PyTorch or detectron2 checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        if first.startswith("version https://git-lfs"):
            return "a Git LFS pointer, not the weights themselves (fetch them with `git lfs pull`)"
        if first.lower().startswith(("<!doctype html", "<html")):
            return "an HTML page (a download that returned a web page instead of the file?)"
        return f"a text file of {size} bytes starting with {first!r}"
    return f"{size} bytes of unknown binary data starting with {head[:8].hex(' ')}"


def unreadable_checkpoint(path: str, error: BaseException) -> UnreadableCheckpointError:
    """The error for a weights file that could not be read: names it and what it looks like."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UnreadableCheckpointError(
        f"Cannot read weights file '{path}': it is {describe_file(path)}. Expected a .pth file "
        f"written by torch.save or a detectron2 / Caffe2 .pkl file ({type(error).__name__}: "
        f"{reason[:200]})"
    )


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
    """Unpickle a .pkl weights file (latin1 strings, as written by Python 2) safely.

    Raises:
        UnsafeCheckpointError: the file asks for anything but numpy arrays and plain containers.
        UnreadableCheckpointError: (given an open file with a name) it is not a pickle.
    """
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    try:
        return RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:
        name = getattr(f, "name", None)
        if not isinstance(name, str) or not os.path.isfile(name):
            raise
        raise unreadable_checkpoint(name, e) from None


def load_pth(path: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers, mapped to the CPU.

    Raises:
        UnsafeCheckpointError: the file holds other objects, whose unpickling could run code.
        UnreadableCheckpointError: it is no ``torch.save`` file (text, truncated, empty, ...).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle); anything else is no
    # checkpoint, and torch's restricted unpickler would call its bytes unsafe operands.
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise unreadable_checkpoint(path, ValueError("not a torch.save file"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e).lower()
        if "weights only load failed" not in message or "unsupported operand" in message:
            raise unreadable_checkpoint(path, e) from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's message names the refused global on a line mentioning "unsupported".
        refused = [line for line in lines if "unsupported" in line.lower()]
        reason = (refused or lines or ["unknown reason"])[0]
        raise UnsafeCheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain "
            f"containers, whose unpickling could run code ({reason}). Only load it "
            "unrestricted if you trust its source, then save its state dicts alone."
        ) from None
    except (RuntimeError, KeyError, IndexError, EOFError, ValueError, struct.error) as e:
        raise unreadable_checkpoint(path, e) from None
