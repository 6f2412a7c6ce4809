"""``DetectionCheckpointer``: atomic saves and loading of every detectron2-style weights file.

Accepted by ``load`` (a local path, ``https://`` URL or ``detectron2://`` model-zoo name):

- ``.pth`` written by this library or by detectron2 (``{"model": state dict, ...}`` including
  the v0.5+ ``{"model", "trainer", "iteration"}`` layout) or a bare state dict; a torchvision
  ResNet state dict is recognised and renamed (see ``torchvision_loading``). Appending
  ``?matching_heuristics=True`` to a path matches names by suffix.
- detectron2 model-zoo ``.pkl`` (``{"model": {name: ndarray}, "__author__": ...}``), loaded as is.
- Caffe2/Detectron ``.pkl`` (ImageNet backbones such as MSRA R-50/R-101: a flat dict of blobs or
  ``{"blobs": ...}``): ``*_momentum`` blobs are dropped and names converted and matched by suffix.

Nothing from a file is executed: ``.pth`` is read with ``torch.load(weights_only=True)`` and
``.pkl`` with a restricted unpickler (see ``serialization``). Missing keys, unused keys and shape
mismatches are logged as a table and kept in ``incompatible_keys`` after each load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer, _filter_reused_missing_keys
from tabulate import tabulate
from torch import nn

from .c2_model_loading import ShapeMismatch, align_and_update_state_dicts, group_keys
from .file_io import PathManager
from .serialization import UnreadableCheckpointError, load_pkl, load_pth
from .torchvision_loading import convert_torchvision_resnet, is_torchvision_resnet

LAST_CHECKPOINT = "last_checkpoint"

# Permissions a plainly created file would get (mkstemp would otherwise leave 0600).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@dataclass
class IncompatibleKeys:
    """What did not load: model keys absent from the checkpoint, checkpoint keys the model does
    not have, and ``(model key, shape in checkpoint, shape in model)`` for skipped tensors."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    incorrect_shapes: list[ShapeMismatch] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing_keys or self.unexpected_keys or self.incorrect_shapes)


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write ``path`` through ``write(f)`` so that it is either fully replaced or untouched.

    The data goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
    over ``path`` (``os.replace`` is atomic on POSIX and Windows); on any error the temporary
    file is removed and ``path`` keeps its previous content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    # Persist the rename itself; not possible on every platform / file system.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# atomic_write's temporary files: "." + target name + "." + mkstemp's 8 characters + ".tmp"
_TEMPORARY_FILE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporary_files(directory: str) -> list[str]:
    """Remove what interrupted checkpoint saves left in ``directory`` (temporary files of
    ``*.pth`` and ``last_checkpoint``); returns their paths."""
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _TEMPORARY_FILE.match(name)
        if match and (match["target"].endswith(".pth") or match["target"] == LAST_CHECKPOINT):
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def format_incompatible_keys(incompatible: IncompatibleKeys) -> str:
    """A table of missing keys, unused checkpoint keys and shape mismatches."""
    rows = []
    for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
        rows.append(
            ["shape mismatch (not loaded)", key, str(tuple(shape_ckpt)), str(tuple(shape_model))]
        )
    for line in group_keys(incompatible.missing_keys):
        rows.append(["missing in checkpoint", line, "", ""])
    for line in group_keys(incompatible.unexpected_keys):
        rows.append(["unused from checkpoint", line, "", ""])
    return tabulate(
        rows, headers=["Problem", "Keys", "Checkpoint shape", "Model shape"], tablefmt="pipe"
    )


class DetectionCheckpointer(Checkpointer):
    """fvcore's Checkpointer with detectron2's file formats, safe loading and atomic saves.

    Args:
        model: the model (a DistributedDataParallel wrapper is unwrapped).
        save_dir: folder of the checkpoints and of the ``last_checkpoint`` pointer.
        save_to_disk: defaults to "this is the main process".
        checkpointables: objects with ``state_dict`` / ``load_state_dict`` (optimizer,
            scheduler, ...), saved under their keyword.

    After each ``load``, ``incompatible_keys`` holds what did not load (an ``IncompatibleKeys``).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ):
        if save_to_disk is None:
            from assigndet.utils import comm

            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = PathManager
        self.logger = logging.getLogger(__name__)
        self.incompatible_keys: IncompatibleKeys | None = None
        self._matching_heuristics_query = False

    # ---- saving ------------------------------------------------------------------------------

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` holding ``model``, every checkpointable and ``kwargs``
        (e.g. ``iteration``) atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"checkpoint name {name!r} must be a file name, not a path")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        os.makedirs(self.save_dir, exist_ok=True)
        removed = remove_stale_temporary_files(self.save_dir)
        if removed:
            self.logger.info("Removed files of interrupted saves: %s", ", ".join(removed))
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically point ``{save_dir}/last_checkpoint`` at ``last_filename_basename``."""
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(
            os.path.join(self.save_dir, LAST_CHECKPOINT),
            lambda f: f.write(last_filename_basename),
            binary=False,
        )

    # ---- loading -----------------------------------------------------------------------------

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Load weights (and the named checkpointables; all when None) from ``path``.

        Returns the entries of the file not consumed (e.g. ``iteration``).

        Raises:
            FileNotFoundError: ``path`` does not exist (named in the message).
            UnreadableCheckpointError: it is not a checkpoint (text, truncated, other format);
                the model is left untouched.
        """
        self.incompatible_keys = None
        if not path:
            self.logger.info("No checkpoint given; the model keeps its initialisation.")
            return {}
        return self._apply(self._read(path), path, checkpointables)

    def _read(self, path: str) -> dict[str, Any]:
        parsed = urlparse(path)
        queries = parse_qs(parsed.query)
        self._matching_heuristics_query = queries.get("matching_heuristics", ["False"]) == ["True"]
        if parsed.query:
            path = parsed._replace(query="").geturl()
        self.logger.info("Loading checkpoint from %s", path)
        return self._load_file(self._local_path(path))

    def _apply(
        self, checkpoint: dict[str, Any], path: str, checkpointables: list[str] | None
    ) -> dict[str, Any]:
        incompatible = self._load_model(checkpoint)
        self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from ``last_checkpoint`` in ``save_dir`` if ``resume`` and it exists (model and
        checkpointables); otherwise load only the model weights from ``path`` (MODEL.WEIGHTS).

        A last checkpoint that cannot be read (missing, truncated...) is skipped with a warning
        for the newest readable ``*.pth`` of ``save_dir``. Asked to resume with no
        ``last_checkpoint``, it warns that it starts from ``path``."""
        if resume and self.has_checkpoint():
            return self._resume_from_newest_readable()
        if resume:
            self.logger.warning(
                "Asked to resume, but %s has no %s: starting from MODEL.WEIGHTS (%s) at "
                "iteration 0", os.path.abspath(self.save_dir or "."), LAST_CHECKPOINT,
                repr(path) if path else "empty: the model's own initialisation",
            )
        try:
            return self.load(path, checkpointables=[])
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e} (set as the weights to load, MODEL.WEIGHTS; use a local file, an https:// "
                "or detectron2:// URL, or '' to start from scratch)"
            ) from None

    def _resume_from_newest_readable(self) -> dict[str, Any]:
        last = self.get_checkpoint_file()
        others = [
            os.path.join(self.save_dir, name)
            for name in os.listdir(self.save_dir)
            if name.endswith(".pth") and os.path.join(self.save_dir, name) != last
        ]
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        failures = []
        for candidate in [last, *others]:
            self.incompatible_keys = None
            try:
                checkpoint = self._read(candidate)
            except (FileNotFoundError, UnreadableCheckpointError) as e:
                self.logger.warning("Cannot resume from %s: %s", candidate, e)
                failures.append(f"{candidate}: {e}")
                continue
            if failures:
                self.logger.warning(
                    "Resuming from %s, the newest readable checkpoint, instead of %s (named by "
                    "%s)", candidate, last, os.path.join(self.save_dir, LAST_CHECKPOINT),
                )
            return self._apply(checkpoint, candidate, None)
        raise UnreadableCheckpointError(
            f"No checkpoint in {self.save_dir} can be resumed from:\n" + "\n".join(failures)
        )

    def _local_path(self, path: str) -> str:
        if os.path.isfile(path):
            return path
        local = self.path_manager.get_local_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"checkpoint file not found: '{path}'")
        return local

    def _load_file(self, filename: str) -> dict[str, Any]:
        """Read a checkpoint into ``{"model": state dict, ...}`` (see the module docstring)."""
        if filename.endswith(".pkl"):
            with open(filename, "rb") as f:
                data = load_pkl(f)
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: expected a pickled dict, got {type(data).__name__}")
            if "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '%s'", data["__author__"])
                return data
            # Caffe2 / Detectron: detection models keep blobs under "blobs", ImageNet ones do not.
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            self.logger.info("Renaming Caffe2 weights of %s", filename)
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}

        loaded = load_pth(filename)
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{filename}: expected a state dict or {{'model': state dict, ...}}, "
                f"got {type(loaded).__name__}"
            )
        if "model" not in loaded:
            loaded = {"model": loaded}
        if is_torchvision_resnet(loaded["model"]):
            self.logger.info("Renaming torchvision ResNet weights of %s", filename)
            loaded["model"] = convert_torchvision_resnet(loaded["model"])
            loaded["__author__"] = "torchvision"
            loaded["matching_heuristics"] = True
        if self._matching_heuristics_query:
            loaded["matching_heuristics"] = True
        return loaded

    def _load_model(self, checkpoint: dict[str, Any]) -> IncompatibleKeys:
        state_dict = checkpoint.pop("model")
        if not isinstance(state_dict, dict):
            raise ValueError(
                f"checkpoint entry 'model' must be a state dict, got {type(state_dict).__name__}"
            )
        state_dict = _to_tensors(state_dict)
        model_state_dict = self.model.state_dict()
        incorrect_shapes: list[ShapeMismatch] = []
        if checkpoint.get("matching_heuristics", False):
            state_dict, incorrect_shapes = align_and_update_state_dicts(
                model_state_dict, state_dict, c2_conversion=checkpoint.get("__author__") == "Caffe2"
            )
        state_dict = _strip_prefix(state_dict, "module.")

        for key in list(state_dict):
            if key in model_state_dict:
                shape_model = tuple(model_state_dict[key].shape)
                shape_ckpt = tuple(state_dict[key].shape)
                if shape_model != shape_ckpt:
                    incorrect_shapes.append((key, shape_ckpt, shape_model))
                    del state_dict[key]
        result = self.model.load_state_dict(state_dict, strict=False)
        mismatched = {key for key, _, _ in incorrect_shapes}
        missing = [
            k
            for k in _filter_reused_missing_keys(self.model, result.missing_keys)
            if k not in mismatched
        ]
        # Old detectron2 checkpoints store these; here they are non-persistent buffers.
        unexpected = [
            k
            for k in result.unexpected_keys
            if k not in ("pixel_mean", "pixel_std") and "anchor_generator.cell_anchors" not in k
        ]
        return IncompatibleKeys(sorted(missing), sorted(unexpected), incorrect_shapes)

    def _log_incompatible_keys(self, incompatible: IncompatibleKeys) -> None:
        self.incompatible_keys = incompatible
        if incompatible:
            self.logger.warning(
                "Some weights were not loaded:\n%s", format_incompatible_keys(incompatible)
            )
        else:
            self.logger.info("All model weights were loaded from the checkpoint.")


def _to_tensors(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Turn numpy arrays into tensors in place (keeping a torch state dict's ``_metadata``)."""
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray):
            state_dict[key] = torch.from_numpy(value)
        elif not isinstance(value, torch.Tensor):
            raise ValueError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, expected a tensor or "
                "numpy array"
            )
    return state_dict


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key, in place, if all keys have it (DataParallel files)."""
    if not state_dict or not all(k.startswith(prefix) for k in state_dict):
        return state_dict
    for key in list(state_dict):
        state_dict[key[len(prefix) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in list(metadata):
            if key.startswith(prefix):
                metadata[key[len(prefix) :]] = metadata.pop(key)
    return state_dict
