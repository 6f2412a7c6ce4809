"""Path resolution for checkpoints: local paths, ``https://`` and ``detectron2://`` URLs.

``PathManager`` is an iopath ``PathManager`` with handlers for ``https://`` (downloaded once into
``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``) and ``detectron2://X``, which names
``https://dl.fbaipublicfiles.com/detectron2/X`` (the detectron2 model zoo).
"""

from __future__ import annotations

from typing import Any

from iopath.common.file_io import HTTPURLHandler, PathHandler
from iopath.common.file_io import PathManager as PathManagerBase

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def detectron2_url(path: str) -> str:
    """``detectron2://X`` -> ``https://dl.fbaipublicfiles.com/detectron2/X``."""
    if not path.startswith(DETECTRON2_PREFIX):
        raise ValueError(f"{path!r} does not start with {DETECTRON2_PREFIX!r}")
    return DETECTRON2_URL + path[len(DETECTRON2_PREFIX) :]


class Detectron2Handler(PathHandler):
    """Resolves ``detectron2://`` paths to the detectron2 model-zoo URL (then cached as https)."""

    def __init__(self, path_manager: PathManagerBase):
        super().__init__()
        self._path_manager = path_manager

    def _get_supported_prefixes(self) -> list[str]:
        return [DETECTRON2_PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        return self._path_manager.get_local_path(detectron2_url(path), **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return self._path_manager.open(detectron2_url(path), mode, **kwargs)


PathManager = PathManagerBase()
PathManager.register_handler(HTTPURLHandler())
PathManager.register_handler(Detectron2Handler(PathManager))
