"""Suite-wide set-up: seeded randomness and a private dataset root."""

import os
import random
import tempfile

import numpy as np
import pytest
import torch

# Generated datasets go to a private folder, never into the working tree. Set before any test
# imports assigndet.data, whose builtin datasets read this variable.
os.environ.setdefault("ASSIGNDET_DATASETS", tempfile.mkdtemp(prefix="assigndet-datasets-"))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
