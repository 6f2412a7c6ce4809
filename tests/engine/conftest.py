import logging

import pytest
from toy_detector import register_tiny_shapes


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(train, val) names of two tiny generated shapes splits with real image files."""
    root = tmp_path_factory.mktemp("shapes")
    return register_tiny_shapes(str(root))


@pytest.fixture(autouse=True)
def _restore_logging():
    """default_setup and the tools install handlers and stop propagation; undo it afterwards."""
    yield
    for name in ("assigndet", "fvcore"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
            handler.close()
        lg.propagate = True
        lg.setLevel(logging.NOTSET)
