"""Suite-wide set-up: seeded randomness and a private dataset root."""

import os
import random
import shutil
import tempfile

import numpy as np
import pytest
import torch

# Generated datasets go to a private folder, never into the working tree. Set before any test
# imports assigndet.data, whose builtin datasets read this variable.
_PRIVATE_DATASETS = None
if "ASSIGNDET_DATASETS" not in os.environ:
    _PRIVATE_DATASETS = tempfile.mkdtemp(prefix="assigndet-datasets-")
    os.environ["ASSIGNDET_DATASETS"] = _PRIVATE_DATASETS


def pytest_sessionfinish(session, exitstatus):
    if _PRIVATE_DATASETS is not None:
        shutil.rmtree(_PRIVATE_DATASETS, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
