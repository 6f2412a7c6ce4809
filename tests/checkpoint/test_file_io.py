"""Path resolution: detectron2:// names the detectron2 model zoo; local paths stay local."""

import pytest

from assigndet.checkpoint import PathManager
from assigndet.checkpoint.file_io import Detectron2Handler, detectron2_url


def test_detectron2_url():
    name = "ImageNetPretrained/MSRA/R-50.pkl"
    assert detectron2_url("detectron2://" + name) == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )
    with pytest.raises(ValueError, match="does not start with 'detectron2://'"):
        detectron2_url("https://example.com/x.pkl")


def test_handlers_registered_and_local_paths(tmp_path):
    handlers = PathManager._path_handlers  # iopath's prefix -> handler table
    assert isinstance(handlers["detectron2://"], Detectron2Handler)
    assert type(handlers["https://"]).__name__ == "HTTPURLHandler"
    local = tmp_path / "w.pth"
    local.write_bytes(b"x")
    assert PathManager.get_local_path(str(local)) == str(local)
